"""In-graph norms inside the train step, along a short real training run of a vmapped ensemble:

* the values read at logged epochs (what curves.npz stores) equal the exact per-seed values at every
  step (re-converged by Lanczos from the carried vectors);
* the in-step values (block power iteration, 1–2 iterations per step, carried vectors) equal them
  to 1e-3 once training settles. During the first tens of Adam steps the nearly degenerate top
  singular values of freshly initialised layers reorder and the in-step estimate lags by up to a
  few percent: asserted too, so a regression of either shows. Only the per-step ``log_*`` metrics of
  ``train_step`` see that lag; a run logs read values only.
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
# The in-step values lag during the early transient; they are asserted to settle by `settled` (a
# measured limitation, kept so that a regression shows).
@pytest.mark.parametrize("family,convention,iters,settled,steps", [
    ("cnn", "paper", 1, 40, 52),
    # Lanczos through convs: minutes. Measured: 1.2e-3 still at step 40, so it settles by 48
    pytest.param("cnn", "bartlett", 2, 48, 60, marks=pytest.mark.slow),
    pytest.param("vit", "paper", 1, 40, 52, marks=pytest.mark.slow),
])
def test_in_step_and_logged_norms_equal_exact_along_training(digits, family, convention, iters, settled, steps):
    raw = {"name": "t", "model": {"family": family, "preset": "digits"}, "data": {"dataset": "digits"},
           "train": {"P": [256], "seeds": 2, "epochs": 1, "batch_size": 32, "lr": 1e-3},
           "norms": {"convention": convention, "power_iterations": iters, "every": 1}}
    exp = build_experiment(config_from_dict(raw), digits)
    norms = exp.fns.norms
    assert (norms.convention, norms.power_iterations, norms.family) == (convention, iters, family)
    keys = stacked_seed_keys([0, 1])
    states = jax.vmap(functools.partial(init_state, exp.fns))(keys["init"], keys["train"], keys["norms"])
    # the flag is shared by the seeds (unbatched), exactly as train_epoch passes it
    step = jax.jit(jax.vmap(functools.partial(train_step, exp.fns), in_axes=(0, 0, 0, None)))
    read = jax.jit(jax.vmap(norms.read))
    exact = jax.jit(jax.vmap(lambda p: exact_norms(norms, p)))
    rng = np.random.default_rng(0)
    transient = 0.0
    for i in range(steps):
        idx = rng.integers(0, digits.n_train, (2, 32))
        states, m = step(states, jnp.asarray(digits.x_train[idx]), jnp.asarray(digits.y_train[idx]),
                         jnp.bool_(True))
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


def test_readme_user_model_trains_with_in_graph_norms():
    """The README's "Your own model" example, run as written: a user-defined Flax model (not one of
    the three families) learns, with finite in-graph norms every step, and the read values equal the
    exact (SVD / explicit conv operator) bartlett norms."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = re.search(r"<!-- your-own-model .*?-->\n```python\n(.*?)```", readme, re.S).group(1)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    norms, params, losses = ns["norms"], ns["params"], ns["losses"]
    assert norms.convention == "bartlett" and [l.kind for l in norms.layers] == ["conv", "dense", "dense"]
    assert norms.layers[0].stride == (2, 2) and norms.layers[0].input_hw == (8, 8)
    assert losses[-1] < 0.25 * losses[0], (losses[0], losses[-1])
    want = exact_norms(norms, params)
    for name in NORM_NAMES:
        assert np.isfinite(float(ns["log_norms"][name])), name
        np.testing.assert_allclose(float(ns["logged"][name]), float(want[name]), rtol=0, atol=1e-4, err_msg=name)
        # the last in-step value tracks the exact one after 100 steps
        np.testing.assert_allclose(float(ns["log_norms"][name]), float(want[name]), rtol=0, atol=1e-2, err_msg=name)


def test_norm_steps_and_skipped_updates():
    """``norms.every`` picks the updating steps; a skipped step reports NaN and keeps the vectors."""
    from jaxscale.train.step import _norms_in_step, norm_steps

    assert norm_steps(2, jnp.arange(5)).tolist() == [True, False, True, False, True]
    assert not norm_steps(0, jnp.arange(3)).any()
    raw = {"name": "t", "model": {"family": "cnn", "preset": "tiny"}, "data": {"dataset": "digits"},
           "train": {"P": [64], "seeds": 1, "epochs": 1, "batch_size": 32}, "norms": {"every": 2}}
    exp = build_experiment(config_from_dict(raw), load_dataset("digits"))
    keys = stacked_seed_keys([0])
    state = init_state(exp.fns, keys["init"][0], keys["train"][0], keys["norms"][0])
    f = jax.jit(lambda flag: _norms_in_step(exp.fns.norms, state.params, state.norm_state, flag))
    skipped, kept = f(jnp.bool_(False))
    updated, moved = f(jnp.bool_(True))
    assert all(np.isnan(float(v)) for v in skipped.values())
    assert all(np.isfinite(float(v)) for v in updated.values())
    for name, v in state.norm_state.vectors.items():
        np.testing.assert_array_equal(kept.vectors[name], v)
    assert any(not np.array_equal(moved.vectors[n], v) for n, v in state.norm_state.vectors.items())
