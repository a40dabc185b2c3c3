"""The one train step, the epoch built from it, and the evaluation pass — all for ONE seed.

Ensembles, devices and hosts are transformations of these functions (:mod:`jaxscale.train.ensemble`,
:mod:`jaxscale.train.loop`), never copies of them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxscale.data.sampling import epoch_batches
from jaxscale.models.spec import ModelSpec
from jaxscale.norms import NORM_NAMES, Norms
from jaxscale.train.state import TrainState

# fold_in tags: independent streams derived from a seed's train key
_SHUFFLE, _STEP, _EVAL = 1, 2, 3

Preprocess = Callable[[jax.Array, jax.Array], jax.Array]  # (key, uint8 [B,H,W,C]) -> float [B,H,W,C]


@dataclasses.dataclass(frozen=True, eq=False)
class StepFns:
    """Static ingredients of the step (closed over, not traced): the model, the optimiser, the
    preprocessing of a training batch (to [0,1], augmentation, normalisation) and at evaluation
    (augmenting too where the official code does, §9.11), and the in-graph norms (their vectors live
    in ``TrainState.norm_state``; ``norms.every`` says which steps update them)."""

    spec: ModelSpec
    tx: optax.GradientTransformation
    prep_train: Preprocess
    prep_eval: Preprocess
    norms: Norms


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example cross-entropy [B] in float32 (nats), whatever the compute dtype."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def init_state(fns: StepFns, init_key: jax.Array, train_key: jax.Array, norm_key: jax.Array) -> TrainState:
    """A fresh state for one seed."""
    variables = fns.spec.init(init_key)
    params = variables["params"]
    return TrainState(params=params, batch_stats=variables.get("batch_stats", {}), opt_state=fns.tx.init(params),
                      norm_state=fns.norms.init(params, norm_key), key=train_key, step=jnp.zeros((), jnp.int32),
                      nonfinite=jnp.zeros((), bool))


def norm_steps(every: int, steps: jax.Array) -> jax.Array:
    """bool ``[n]``: which of these 0-based global step numbers update the norms (every ``every``-th;
    none when ``every`` is 0). A function of the step number only, so shared by all seeds."""
    return steps % every == 0 if every > 0 else jnp.zeros(jnp.shape(steps), bool)


def _norms_in_step(norms: Norms, params: Any, norm_state: Any, update: Any) -> tuple[dict, Any]:
    """``norms.update`` on the steps ``update`` selects; NaN values and the state kept on the others."""
    nan = {k: jnp.full((), jnp.nan, jnp.float32) for k in NORM_NAMES}
    if update is True or (update is not False and norms.every == 1):  # static: every step
        return norms.update(params, norm_state)
    if update is False or norms.every == 0:
        return nan, norm_state
    return jax.lax.cond(update, lambda s: norms.update(params, s), lambda s: (nan, s), norm_state)


def train_step(fns: StepFns, state: TrainState, x: jax.Array, y: jax.Array,
               update_norms: Any = True) -> tuple[TrainState, dict]:
    """One optimiser step of one seed on one batch.

    Args:
      state: this seed's state.
      x: uint8 ``[B, H, W, C]`` raw images (preprocessed here, on device).
      y: int32 ``[B]`` labels.
      update_norms: whether this step updates the norms (a Python bool, or a traced bool from
        :func:`norm_steps`, which must be *unbatched* under ``vmap`` so that it stays a real branch,
        not a select that computes both sides).

    Returns ``(new_state, metrics)`` with metrics ``loss`` (mean cross-entropy of the batch),
    ``error`` (misclassified fraction) and ``log_<norm>`` (natural-log norms of the updated params by
    warm-started power iteration; NaN on steps that do not update the norms), float32 scalars. A seed
    whose loss is not finite is flagged in ``state.nonfinite`` (sticky).
    """
    k_aug, k_drop = jax.random.split(jax.random.fold_in(jax.random.fold_in(state.key, _STEP), state.step))
    xf = fns.prep_train(k_aug, x)

    def loss_fn(params):
        variables = {"params": params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
        logits, new_model_state = fns.spec.apply(variables, xf, train=True, rng=k_drop)
        loss = cross_entropy(logits, y).mean()
        return loss, (logits, new_model_state)

    (loss, (logits, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = fns.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    batch_stats = new_model_state.get("batch_stats", state.batch_stats)

    # In-graph norms of the *updated* params, from the carried power-iteration vectors.
    log_norms, norm_state = _norms_in_step(fns.norms, params, state.norm_state, update_norms)

    # A diverged seed is only flagged: NaN then propagates through its own params and the loop
    # reports NaN for it from that point; seeds are independent, so the others are unaffected.
    # (Freezing it with a select would cost a full read+write of every parameter each step.)
    new = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state, norm_state=norm_state,
                        step=state.step + 1, nonfinite=state.nonfinite | ~jnp.isfinite(loss))
    error = (jnp.argmax(logits, -1) != y).mean(dtype=jnp.float32)
    metrics = {"loss": loss, "error": error, **{f"log_{k}": v.astype(jnp.float32) for k, v in log_norms.items()}}
    return new, metrics


def train_epoch(fns: StepFns, batch_size: int, state: TrainState, subset: jax.Array, x_all: jax.Array,
                y_all: jax.Array, epoch: jax.Array) -> tuple[TrainState, dict]:
    """One pass over this seed's P samples in a fresh random order, minibatches of ``batch_size``,
    the last partial batch kept (PROTOCOL §3.3).

    Args:
      subset: int32 ``[P]`` indices of this seed's training samples into ``x_all``/``y_all``.
      x_all, y_all: the whole training set on device (uint8 ``[N,H,W,C]``, int32 ``[N]``), shared.
      epoch: int32 scalar, 1-based epoch number, *shared* by all seeds (unbatched).

    Returns the new state and ``{"loss": mean train loss over the epoch's samples}``.
    """
    P = subset.shape[0]
    n_full, rem = divmod(P, batch_size)
    steps_per_epoch = n_full + (1 if rem else 0)
    key = jax.random.fold_in(jax.random.fold_in(state.key, _SHUFFLE), epoch)
    idx_full, idx_rem = epoch_batches(key, P, batch_size)
    # Global step numbers are the same for every seed: computed from the unbatched epoch.
    first_step = (epoch - 1) * steps_per_epoch
    flags = norm_steps(fns.norms.every, first_step + jnp.arange(steps_per_epoch))

    def body(st, inp):
        bidx, flag = inp
        g = subset[bidx]
        st, m = train_step(fns, st, x_all[g], y_all[g], flag)
        return st, m["loss"]

    loss_sum = jnp.zeros((), jnp.float32)
    if n_full:
        state, losses = jax.lax.scan(body, state, (idx_full, flags[:n_full]))
        loss_sum = losses.sum() * batch_size
    if rem:
        g = subset[idx_rem]
        state, m = train_step(fns, state, x_all[g], y_all[g], flags[n_full])
        loss_sum = loss_sum + m["loss"] * rem
    return state, {"loss": loss_sum / P}


def evaluate(fns: StepFns, state: TrainState, idx: jax.Array, mask: jax.Array, x_all: jax.Array,
             y_all: jax.Array, key: jax.Array) -> dict:
    """Eval-mode pass (running BN statistics, no dropout) over the images ``idx`` of ``x_all``.

    Args:
      idx: int32 ``[n_chunks, chunk]`` image indices, padded; ``mask`` float32 of the same shape marks
        real entries (1) vs padding (0).
      key: randomness for evaluation-time augmentation (used only where the protocol augments at
        evaluation).

    Returns ``{"loss": mean cross-entropy, "error": misclassified fraction}`` over the real entries.
    """
    variables = state.variables()

    def body(carry, inp):
        i, c_idx, c_mask = inp
        xf = fns.prep_eval(jax.random.fold_in(key, i), x_all[c_idx])
        logits, _ = fns.spec.apply(variables, xf, train=False)
        ce = cross_entropy(logits, y_all[c_idx])
        wrong = (jnp.argmax(logits, -1) != y_all[c_idx]).astype(jnp.float32)
        return (carry[0] + (ce * c_mask).sum(), carry[1] + (wrong * c_mask).sum()), None

    zero = jnp.zeros((), jnp.float32)
    n_chunks = idx.shape[0]
    (loss_sum, err_sum), _ = jax.lax.scan(body, (zero, zero), (jnp.arange(n_chunks), idx, mask))
    n = mask.sum()
    return {"loss": loss_sum / n, "error": err_sum / n}


def eval_key(state: TrainState, epoch: jax.Array) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(state.key, _EVAL), epoch)
