"""Precision: fp32 = true fp32 matmuls (HIGHEST), tf32 = TF32, bf16 = bf16 compute with fp32 master
weights; bf16 training of a small model tracks the fp32 learning curves within stated tolerances."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscale.config import config_from_dict
from jaxscale.data import load_dataset
from jaxscale.train import build_experiment, run_experiment
from jaxscale.train.loop import build_programs

# Tolerances of bf16 vs fp32 curves (same seeds, same data order), at every logged epoch:
# (measured here: errors 4.3 points at the first logged epoch, on the steep part of the curve;
# losses 2.3 %; log-norms 0.006)
ERROR_ABS = 0.06  # train and test error within 6 points (P = 256: one image is 0.4 point)
LOSS_REL, LOSS_ABS = 0.10, 0.01  # train/test loss within 10 % (or 0.01 nats once losses are ~0)
LOG_NORM_ABS = 0.05  # every norm within ~5 % (natural-log difference)


def test_the_model_carries_its_matmul_precision():
    """The model's own forward pass, traced by any caller in any ambient context, asks for the
    configured precision: HIGHEST (true fp32) under fp32, HIGH (TF32) and never HIGHEST under tf32,
    neither under bf16 (bf16 operands); and its activations are in the configured dtype."""
    from jaxscale.models import build_model
    from jaxscale.models.registry import PRECISION_SETTINGS

    x = jnp.zeros((2, 8, 8, 1))
    found = {}
    for p in ("fp32", "tf32", "bf16"):
        dtype, matmul = PRECISION_SETTINGS[p]
        spec = build_model("cnn", "digits", input_shape=(8, 8, 1), num_classes=10, dtype=dtype,
                           precision=matmul)
        params = jax.eval_shape(spec.init, jax.random.PRNGKey(0))
        with jax.default_matmul_precision("bfloat16"):
            txt = str(jax.make_jaxpr(lambda v, x: spec.apply(v, x, train=False)[0])(params, x))
        found[p] = (txt.count("dot_general"), len(re.findall(r"HIGH(?!EST)", txt)), txt.count("HIGHEST"),
                    "bf16[2," in txt)
    assert found["fp32"][0] >= 2 and found["fp32"][2] >= found["fp32"][0] and found["fp32"][1] == 0, found
    assert found["tf32"][1] >= found["tf32"][0] and found["tf32"][2] == 0, found
    assert found["bf16"][1] == found["bf16"][2] == 0 and found["bf16"][3] and not found["fp32"][3], found


def _raw(precision):
    return {
        "name": "t", "model": {"family": "cnn", "preset": "digits"}, "data": {"dataset": "digits"},
        "train": {"P": [256], "seeds": 2, "epochs": 6, "batch_size": 32, "lr": 2e-3, "precision": precision,
                  "log_points": 3},
        "parallel": {"ensemble": "vmap"},
    }


@pytest.fixture(scope="module")
def curves():
    ds = load_dataset("digits")
    out = {}
    for p in ("fp32", "bf16"):
        exp = build_experiment(config_from_dict(_raw(p)), ds)
        out[p], _ = run_experiment(exp)
        out[p + "_exp"] = exp
    return out


def test_bf16_keeps_fp32_master_weights_and_losses(curves):
    from jaxscale.train import step as step_lib
    from jaxscale.train.state import seed_keys

    exp = curves["bf16_exp"]
    k = seed_keys(0)
    st = jax.jit(lambda a, b, c: step_lib.init_state(exp.fns, a, b, c))(k["init"], k["train"], k["norms"])
    x, y = jnp.asarray(exp.dataset.x_train[:16]), jnp.asarray(exp.dataset.y_train[:16].astype(np.int32))
    step = jax.jit(lambda s, xb, yb: step_lib.train_step(exp.fns, s, xb, yb))
    st, m = step(st, x, y)
    floats = lambda t: {a.dtype for a in jax.tree.leaves(t) if jnp.issubdtype(a.dtype, jnp.floating)}  # noqa: E731
    assert floats(st.params) == floats(st.opt_state) == {jnp.dtype(jnp.float32)}
    assert m["loss"].dtype == jnp.float32 and np.isfinite(float(m["loss"]))
    # ...while the model really computes in bf16 (activations), returning fp32 logits
    _, inter = jax.eval_shape(
        lambda p, xb: exp.spec.module.apply({"params": p}, xb, train=False, capture_intermediates=True,
                                            mutable=["intermediates"]),
        st.params, jnp.zeros((2, *exp.spec.input_shape)))
    dtypes = {a.dtype for a in jax.tree.leaves(inter)}
    assert jnp.dtype(jnp.bfloat16) in dtypes
    assert exp.spec.apply({"params": st.params}, jnp.zeros((2, *exp.spec.input_shape)), train=False)[0].dtype == jnp.float32


def test_bf16_tracks_fp32_curves(curves):
    a, b = curves["fp32"], curves["bf16"]
    assert a.values["test_error"].shape == (1, 2, 3)
    for k in ("train_error", "test_error"):
        np.testing.assert_allclose(b.values[k], a.values[k], atol=ERROR_ABS, rtol=0, err_msg=k)
    for k in ("train_loss", "test_loss"):
        np.testing.assert_allclose(b.values[k], a.values[k], rtol=LOSS_REL, atol=LOSS_ABS, err_msg=k)
    for n in a.norm_names:
        np.testing.assert_allclose(b.values[f"log_{n}"], a.values[f"log_{n}"], atol=LOG_NORM_ABS, err_msg=n)
    # and both learned: the comparison is not between two untrained models
    assert a.values["test_error"][0, :, -1].max() < 0.2
    # bf16 really changed the numbers (the test would pass vacuously if the dtype were ignored)
    assert not np.array_equal(a.values["train_loss"], b.values["train_loss"])


def test_run_programs_carry_the_configured_precision(curves):
    """A run's epoch program (build_programs) has the model's matmul precision in it: HIGHEST under
    fp32, TF32 (HIGH) for a model asking for tf32's precision, neither for bf16's products; the norms
    always ask for HIGHEST themselves. Traced only, from abstract arrays."""
    import dataclasses

    def traced(exp):
        progs = build_programs(exp, exp.layout, exp.batching.group)
        k = jax.ShapeDtypeStruct((2, 2), jnp.uint32)
        st = jax.eval_shape(progs["init"], k, k, k)
        sub = jax.ShapeDtypeStruct((2, 256), jnp.int32)
        x, y = jnp.asarray(exp.dataset.x_train), jnp.asarray(exp.dataset.y_train, jnp.int32)
        txt = str(jax.make_jaxpr(progs["epoch"])(st, sub, x, y, jnp.int32(1)))
        return len(re.findall(r"HIGH(?!EST)", txt)), txt.count("HIGHEST")

    fp32 = curves["fp32_exp"]
    spec = dataclasses.replace(fp32.spec, module=fp32.spec.module.clone(precision=jax.lax.Precision.HIGH))
    tf32 = dataclasses.replace(fp32, fns=dataclasses.replace(fp32.fns, spec=spec))
    found = {"fp32": traced(fp32), "tf32": traced(tf32), "bf16": traced(curves["bf16_exp"])}
    assert found["tf32"][0] > 0 and found["fp32"][0] == 0 and found["bf16"][0] == 0, found
    assert found["fp32"][1] > found["bf16"][1] and found["fp32"][1] > found["tf32"][1], found
