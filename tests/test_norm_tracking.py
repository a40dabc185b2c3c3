"""In-graph norms inside the train step, along a short real training run of a vmapped ensemble:

* the values read at logged epochs (what curves.npz stores) equal the exact per-seed values at every
  step;
* the in-step values (block power iteration, 1–2 iterations per step, carried vectors) equal them to
  1e-3 once the early transient is over. During the first tens of Adam steps the nearly degenerate
  top singular values of freshly initialised layers reorder and the cheap in-step estimate lags by up
  to a few percent (a measured limitation, asserted below so a regression shows).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscale.config import config_from_dict
from jaxscale.data import load_dataset
from jaxscale.norms import NORM_NAMES, exact_norms
from jaxscale.train import build_experiment, init_state, train_step
from jaxscale.train.loop import stacked_seed_keys

STEPS = 60


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# bartlett's conv operators act on whole feature maps (larger, flatter spectra): 2 iterations per step
@pytest.mark.parametrize("family,convention,iters,settled", [
    ("cnn", "paper", 1, 40),
    pytest.param("cnn", "bartlett", 2, 50, marks=pytest.mark.slow),  # Lanczos through convs: ~2 min here
    ("vit", "paper", 1, 40),
])
def test_in_step_and_logged_norms_equal_exact_along_training(digits, family, convention, iters, settled):
    raw = {"name": "t", "model": {"family": family, "preset": "digits"}, "data": {"dataset": "digits"},
           "train": {"P": [256], "seeds": 2, "epochs": 1, "batch_size": 32, "lr": 1e-3},
           "norms": {"convention": convention, "power_iterations": iters, "every": 1}}
    exp = build_experiment(config_from_dict(raw), digits)
    keys = stacked_seed_keys([0, 1])
    states = jax.vmap(functools.partial(init_state, exp.fns))(keys["init"], keys["train"], keys["norms"])
    step = jax.jit(jax.vmap(functools.partial(train_step, exp.fns)))
    read = jax.jit(jax.vmap(exp.fns.norms.read))
    exact = jax.jit(jax.vmap(lambda p: exact_norms(exp.spec.family, exp.spec.layers, p, convention=convention)))
    rng = np.random.default_rng(0)
    transient = 0.0
    for i in range(STEPS):
        idx = rng.integers(0, digits.n_train, (2, 32))
        states, m = step(states, jnp.asarray(digits.x_train[idx]), jnp.asarray(digits.y_train[idx]))
        ref = exact(states.params)
        if i % 10 == 0 or i == STEPS - 1:
            logged, _ = read(states.params, states.norm_state)
            for name in NORM_NAMES:
                np.testing.assert_allclose(np.asarray(logged[name]), np.asarray(ref[name]), rtol=0, atol=1e-4,
                                           err_msg=f"logged value, step {i} {name}")
        for name in NORM_NAMES:
            got, want = np.asarray(m[f"log_{name}"], np.float64), np.asarray(ref[name], np.float64)
            assert got.shape == (2,) and np.isfinite(got).all(), name
            err = float(np.abs(got - want).max())  # relative error of the norm itself = |Δ ln|
            if i >= settled:
                assert err < 1e-3, (i, name, err)
            else:
                transient = max(transient, err)
    assert transient < 0.1, transient
