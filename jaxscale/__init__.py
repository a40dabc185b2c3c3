"""jaxscale: dynamical neural scaling laws, measured fast with JAX/Flax.

Sub-packages, one concern each:
  jaxscale.data        datasets (tfds MNIST/CIFAR, offline 8x8 digits), on-device sampling, augmentation
  jaxscale.models      CNN / ResNet / ViT (Flax linen) and their declared weight layers
  jaxscale.norms       norm-based complexities (exact and in-graph power iteration)
  jaxscale.train       train state, the one train step, vmapped ensembles, the epoch loop
  jaxscale.perceptron  teacher-student perceptron simulations and fixed-norm theory
  jaxscale.analysis    fits of the two dynamical scaling laws, bootstrap, figures
"""

__version__ = "0.1.0"
