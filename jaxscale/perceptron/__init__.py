"""Teacher–student perceptron: vmapped GD simulations (JAX) and the fixed-norm replica theory.

* :mod:`jaxscale.perceptron.simulate` — data on the device from the seed, full-batch GD ("gd") or
  its gradient-flow discretisation ("flow"), vmapped over seeds and α, written as ``curves.npz``.
* :mod:`jaxscale.perceptron.theory` — ε_Hebb(α), ε_max-margin(α), ε(λ, α) of the minimiser at fixed
  norm λ, and λ*(α), ε*(α) (NumPy/SciPy).
* :mod:`jaxscale.perceptron.sphere` — the sphere-constrained minimiser found numerically (JAX), to
  validate the theory.
* :mod:`jaxscale.perceptron.plots`, :mod:`jaxscale.perceptron.config`, :mod:`jaxscale.perceptron.cli`.
"""

from jaxscale.perceptron.config import PerceptronConfig, load_perceptron_config, perceptron_config_from_dict

__all__ = ["PerceptronConfig", "load_perceptron_config", "perceptron_config_from_dict"]
