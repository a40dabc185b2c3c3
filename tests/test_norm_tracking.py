"""In-graph norms inside the train step, along a short real training run of a vmapped ensemble:

* the values read at logged epochs (what curves.npz stores) equal the exact per-seed values at every
  step;
* the in-step values equal them to 1e-3 at every step: Lanczos-exact for the first
  ``norms.exact_steps`` steps, then block power iteration (1–2 iterations per step, carried
  vectors). Without the exact start (``exact_steps = 0``), during the first tens of Adam steps the
  nearly degenerate top singular values of freshly initialised layers reorder and the cheap in-step
  estimate lags by up to a few percent: asserted too, so a regression of either shows.
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


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# bartlett's conv operators act on whole feature maps (larger, flatter spectra): 2 iterations per step.
# `exact_steps = 64`: the first steps are Lanczos-exact, the cheap tracker takes over after.
# With exact_steps = 0 the cheap tracker runs from step 0 and lags during the early transient; it is
# asserted to settle by `settled` (a measured limitation, kept so that a regression shows).
@pytest.mark.parametrize("family,convention,iters,exact_steps,settled,steps", [
    ("cnn", "paper", 1, 64, 0, 76),
    ("cnn", "paper", 1, 0, 40, 52),
    pytest.param("cnn", "bartlett", 2, 64, 0, 70, marks=pytest.mark.slow),  # Lanczos through convs: minutes
    ("vit", "paper", 1, 64, 0, 76),
])
def test_in_step_and_logged_norms_equal_exact_along_training(digits, family, convention, iters, exact_steps,
                                                             settled, steps):
    raw = {"name": "t", "model": {"family": family, "preset": "digits"}, "data": {"dataset": "digits"},
           "train": {"P": [256], "seeds": 2, "epochs": 1, "batch_size": 32, "lr": 1e-3},
           "norms": {"convention": convention, "power_iterations": iters, "every": 1, "exact_steps": exact_steps}}
    exp = build_experiment(config_from_dict(raw), digits)
    tracker = exp.fns.norms
    assert tracker.exact_steps == exact_steps
    keys = stacked_seed_keys([0, 1])
    states = jax.vmap(functools.partial(init_state, exp.fns))(keys["init"], keys["train"], keys["norms"])
    # the mode is shared by the seeds (unbatched), exactly as train_epoch passes it
    step = jax.jit(jax.vmap(functools.partial(train_step, exp.fns), in_axes=(0, 0, 0, None)))
    read = jax.jit(jax.vmap(exp.fns.norms.read))
    exact = jax.jit(jax.vmap(lambda p: exact_norms(exp.spec.family, exp.spec.layers, p, convention=convention)))
    rng = np.random.default_rng(0)
    transient = 0.0
    modes = np.asarray(tracker.step_flags(jnp.arange(steps)))
    assert modes.tolist() == [2] * min(exact_steps, steps) + [1] * max(0, steps - exact_steps)
    for i in range(steps):
        idx = rng.integers(0, digits.n_train, (2, 32))
        states, m = step(states, jnp.asarray(digits.x_train[idx]), jnp.asarray(digits.y_train[idx]), modes[i])
        ref = exact(states.params)
        if i % 10 == 0 or i == steps - 1:
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
