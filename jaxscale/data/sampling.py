"""Index arithmetic for training subsets, per-epoch shuffles and batching.

Pure jnp and jittable; every key-taking function can be ``jax.vmap``-ped over a leading seed-key
axis, so an ensemble draws all its seeds' subsets and batch orders in one program. Sizes
(``n_train``, ``P``, ``batch_size``) are static Python ints: they fix array shapes.

PROTOCOL §3.2: a seed's P training samples are the **first P entries of one uniform random
permutation** of the training set, so for a fixed seed the subsets of different P are nested.
PROTOCOL §3.3: each epoch visits the P samples once in a fresh random order, in minibatches, and
the last partial batch is kept.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np


def subset_indices(key: jax.Array, n_train: int, P: int) -> jax.Array:
    """A seed's training subset: the first ``P`` entries of one uniform permutation of
    ``range(n_train)``.

    The permutation depends on ``key`` and ``n_train`` only, so for the same key the subset for a
    smaller P is a prefix of the subset for a larger P.

    Args:
      key: PRNG key of the seed's data stream.
      n_train: size N of the full training set (static).
      P: subset size, ``0 < P <= n_train`` (static).
    Returns:
      int32 ``[P]`` distinct indices into the training set.
    """
    n_train, P = operator.index(n_train), operator.index(P)
    if not 0 < P <= n_train:
        raise ValueError(f"P = {P} must be in [1, n_train = {n_train}]")
    return jax.random.permutation(key, n_train)[:P].astype(jnp.int32)


def epoch_batches(key: jax.Array, P: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """One epoch's batches: a fresh permutation of ``range(P)`` cut into full batches plus the
    kept last partial batch.

    The indices are positions **within the seed's subset** (map them through
    :func:`subset_indices`' output to get training-set indices).

    Args:
      key: PRNG key for this seed and epoch (e.g. ``fold_in(seed_key, epoch)``).
      P: subset size (static).
      batch_size: minibatch size (static).
    Returns:
      ``(idx, rem)``: int32 ``[P // batch_size, batch_size]`` full batches and int32
      ``[P % batch_size]`` remainder batch (empty when P divides evenly). Together they hold each
      of ``0 … P−1`` exactly once.
    """
    P, batch_size = operator.index(P), operator.index(batch_size)
    if P < 1 or batch_size < 1:
        raise ValueError(f"P = {P} and batch_size = {batch_size} must be positive")
    n_full = P // batch_size
    perm = jax.random.permutation(key, P).astype(jnp.int32)
    return perm[: n_full * batch_size].reshape(n_full, batch_size), perm[n_full * batch_size:]


def eval_batches(n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-size chunks covering ``range(n)`` for evaluation (host helper, numpy).

    Every chunk has the same shape so one compiled eval step serves them all; the last chunk is
    padded with index 0 and masked out.

    Args:
      n: number of items (e.g. test-set size or P).
      batch_size: chunk size.
    Returns:
      ``(idx, mask)``: int32 ``[ceil(n / batch_size), batch_size]`` item indices (padding = 0) and
      bool of the same shape, true on real items. ``idx[mask]`` is ``0 … n−1`` in order.
    """
    n, batch_size = operator.index(n), operator.index(batch_size)
    if n < 0 or batch_size < 1:
        raise ValueError(f"n = {n} must be >= 0 and batch_size = {batch_size} positive")
    n_chunks = -(-n // batch_size)
    flat = np.arange(n_chunks * batch_size, dtype=np.int32)
    mask = flat < n
    idx = np.where(mask, flat, 0).astype(np.int32)
    return idx.reshape(n_chunks, batch_size), mask.reshape(n_chunks, batch_size)
