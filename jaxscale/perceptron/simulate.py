r"""Teacher–student perceptron trained by full-batch gradient descent, vmapped over seeds and α.

Data (per seed, generated on the device from the seed by counter-based ``jax.random``):
teacher w* ~ uniform on |w*|² = N; inputs x_μ ~ N(0, I_N) with row μ drawn from
``fold_in(key_x, μ)``, so row μ depends only on (seed, μ) and the training sets of one seed are
*nested* (the P₁ samples of a small α are the first P₁ of a larger one); labels
y_μ = sign(w*·x_μ). All α of a seed share the teacher and the initial weights.

Parametrisation and loss. We train v = w/√N, so λ = |v| = |w|/√N and the stability of a sample
is z_μ = y_μ v·x_μ = y_μ w·x_μ/√N. The training loss is the **mean** over the P samples,

    L̄(v) = (1/P) Σ_μ log(1 + exp(−z_μ)),

and the learning rate multiplies the gradient with respect to v: v ← v − η ∇_v L̄. In terms of w
this is w ← w − ηN ∇_w L̄, i.e. the lr of the summed loss is η/α. Why this scaling: |∇_v L̄| ≈
√(c² + 1/α) is O(1) in N, so λ moves by O(η) per step at every N (the dynamics of (λ, ε) has an
N → ∞ limit at fixed η), and the speed differs only mildly between α.

Dynamics (``dynamics``):

* ``"gd"`` — the paper's constant-lr gradient descent above. On separable data λ(t) grows like
  ln t / κ, so reaching λ ≈ 10 takes thousands of steps and λ ≈ 100 would take ~e^{100κ}.
* ``"flow"`` — v ← v − η ∇_v ln L̄ = v − (η/L̄) ∇_v L̄: gradient descent with the step η/L̄(v),
  which grows as the loss falls, i.e. as |w| grows (L̄ ~ e^{−λκ}). Its η → 0 limit is the gradient
  flow dv/dτ = −∇L̄/L̄, a time change (dτ = L̄ dt) of the gradient flow dv/dt = −∇L̄ whose
  discretisation is plain GD, so both trace the same curve v(·), hence the same (λ, ε) trajectory;
  only the clock differs (λ grows linearly in steps instead of logarithmically). Its step length
  η|∇ ln L̄| = η|Σ_μ p_μ (ℓ'/ℓ)(z_μ) y_μ x_μ| (p = softmax of log ℓ, |ℓ'/ℓ| ≤ 1) stays O(η) while
  many samples share the weight p, i.e. for λ well below N. ln L̄ and its gradient are computed
  with log-sum-exp, so nothing underflows in float32 even when L̄ ~ e^{−100}.

Vectorisation (``layout``): every array has a leading seed axis [S, ...] and the jitted program is
``lax.scan`` over GD steps (in chunks of steps, between which progress is reported); each step is
``vmap`` of a one-instance step.

* ``"bucket"`` (default): one program holds one vmapped-over-seeds step per α, each reading only
  the first P_α rows of the shared nested data (no copies) — no wasted work.
* ``"pad"``: one step ``vmap``ped over α *and* seeds on the largest P, with a per-α row mask
  (the data are nested, so α enters only through the mask and no data are copied); costs
  n_α·P_max instead of Σ P_α row-products. Same numbers as "bucket" up to float32 summation order.

Memory traffic: a step streams each instance's X once, in blocks of rows (:func:`block_rows`): the
stabilities X_b v and the gradient term X_bᵀ c of a block are computed while it is in cache (two
separate matvecs would read X twice; benchmarks/perceptron_throughput.py measures the rate against
the machine's streaming bandwidth).

Recorded at log-spaced steps t (``epochs``): λ = |v|, R = v·w*/(|v||w*|) (so ε = arccos(R)/π, the
exact generalisation error — no test set), training error (fraction of z_μ ≤ 0) and mean training
loss. ``test_loss`` is the exact population logistic loss E_x[ℓ(λ y ŵ·x)] computed from (λ, R) by
1-D quadrature (:func:`jaxscale.perceptron.theory.population_logistic_loss`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxscale.perceptron.config import PerceptronConfig

# ------------------------------------------------------------------------------------------------
# data


class Instances(NamedTuple):
    """Teacher–student instances for a batch of seeds (leading axis S).

    X: [S, P, N] float32 inputs; y: [S, P] float32 labels ±1; w_star: [S, N] float32 teacher with
    |w*|² = N; v0: [S, N] float32 initial student v = w/√N with |v0| = init_norm.
    """

    X: jax.Array
    y: jax.Array
    w_star: jax.Array
    v0: jax.Array


def _instance(seed: jax.Array, init_norm: jax.Array, *, N: int, P: int) -> Instances:
    """One seed's instance (unbatched shapes of :class:`Instances`)."""
    k_teacher, k_x, k_init = jax.random.split(jax.random.key(seed), 3)
    w = jax.random.normal(k_teacher, (N,), jnp.float32)
    w = w * (math.sqrt(N) / jnp.linalg.norm(w))
    # row μ from fold_in(k_x, μ): counter-based, so every P uses the same first rows
    X = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(k_x, i), (N,), jnp.float32))(
        jnp.arange(P, dtype=jnp.uint32)
    )
    y = jnp.where(X @ w >= 0, 1.0, -1.0).astype(jnp.float32)
    v0 = jax.random.normal(k_init, (N,), jnp.float32)
    v0 = v0 * (init_norm / jnp.linalg.norm(v0))
    return Instances(X=X, y=y, w_star=w, v0=v0)


@functools.lru_cache(maxsize=None)
def _instances_fn(N: int, P: int):
    # one compiled generator per (N, P), reused across calls (a compile cache, not state)
    return jax.jit(jax.vmap(functools.partial(_instance, N=N, P=P), in_axes=(0, None)))


def make_instances(seeds, N: int, P: int, init_norm: float = 1e-3) -> Instances:
    """Instances for the given seed values (int array [S]) with P samples each, on the device."""
    seeds = jnp.asarray(np.asarray(seeds, dtype=np.uint32))
    return _instances_fn(int(N), int(P))(seeds, jnp.float32(init_norm))


# ------------------------------------------------------------------------------------------------
# one instance: stabilities, metrics, update


def _log_loss(z: jax.Array) -> jax.Array:
    """log ℓ(z) = log log(1 + e^{−z}), finite for every finite z (≈ −z for z > 15)."""
    big = z > 15.0
    zs = jnp.where(big, 0.0, z)
    return jnp.where(big, -z, jnp.log(jax.nn.softplus(-zs)))


def _loss_ratio(z: jax.Array) -> jax.Array:
    """ℓ'(z)/ℓ(z) = −σ(−z)/log(1+e^{−z}) ∈ [−1, 0), → −1 as z → ∞ (computed in log space)."""
    return -jnp.exp(jax.nn.log_sigmoid(-z) - _log_loss(z))


#: running-max start of the online softmax: finite, so exp(start − m) = 0 without NaNs
_NEG_START = -1e30


def _one_step(v, X, y, w_star, n_valid, *, rows: int, block: int, dynamics: str, lr: float):
    """One instance, one step, in a single streaming pass over the rows of X.

    v [N] student (v = w/√N); X [≥rows, N] inputs; y [≥rows] labels; w_star [N]; n_valid: number
    of real samples (rows ≥ n_valid are masked; the "pad" layout). Only the first ``rows`` rows are
    read, in blocks of ``block`` rows: each block's stabilities z = y ⊙ (X_b v) and its gradient
    contribution X_bᵀ(c ⊙ y) are computed while the block is still in cache, so one GD step reads
    X from memory once (two separate matvecs would read it twice).

    "flow" needs softmax weights over all rows before the gradient; they are accumulated with an
    online softmax (running max m, the sum and the gradient rescaled by e^{m_old − m_new}).

    Returns (metrics [4] = (λ, R, train error, train loss) of v, updated v [N]).
    """
    N = v.shape[0]
    n_valid = jnp.asarray(n_valid, jnp.int32)

    def block_terms(carry, Xb, yb, row0):
        acc, m, s, err, loss = carry
        valid = (row0 + jnp.arange(Xb.shape[0])) < n_valid
        z = yb * (Xb @ v)
        err = err + jnp.sum(valid & (z <= 0))
        loss = loss + jnp.sum(jnp.where(valid, jax.nn.softplus(-z), 0.0))
        if dynamics == "gd":
            c = jnp.where(valid, -jax.nn.sigmoid(-z), 0.0)  # ℓ'(z); the 1/n is applied at the end
            acc = acc + (c * yb) @ Xb
        else:
            ll = jnp.where(valid, _log_loss(z), -jnp.inf)
            m_new = jnp.maximum(m, jnp.max(ll))
            scale = jnp.exp(m - m_new)
            w = jnp.exp(ll - m_new)
            acc = acc * scale + (w * _loss_ratio(z) * yb) @ Xb
            s = s * scale + jnp.sum(w)
            m = m_new
        return acc, m, s, err, loss

    carry = (jnp.zeros((N,), v.dtype), jnp.asarray(_NEG_START, v.dtype), jnp.zeros((), v.dtype),
             jnp.zeros((), jnp.int32), jnp.zeros((), v.dtype))
    n_blocks, rem = divmod(rows, block)

    def body(k, c):
        r0 = k * block
        Xb = lax.dynamic_slice_in_dim(X, r0, block, axis=0)
        yb = lax.dynamic_slice_in_dim(y, r0, block, axis=0)
        return block_terms(c, Xb, yb, r0)

    carry = lax.fori_loop(0, n_blocks, body, carry)
    if rem:
        r0 = n_blocks * block
        carry = block_terms(carry, X[r0:rows], y[r0:rows], r0)
    acc, _, s, err, loss = carry

    inv_n = 1.0 / n_valid.astype(v.dtype)
    grad = acc * inv_n if dynamics == "gd" else acc / s
    lam = jnp.linalg.norm(v)
    R = jnp.dot(v, w_star) / (lam * jnp.linalg.norm(w_star))
    metrics = jnp.stack([lam, R, err.astype(v.dtype) * inv_n, loss * inv_n])
    return metrics, v - lr * grad


def block_rows(N: int, rows: int, target_bytes: int = 128 << 10) -> int:
    """Rows per block: ≈ 128 KB of one instance's X (32 rows at N = 1000), a multiple of 8.

    Measured on this 2-core CPU (N = 1000, 8–64 vmapped seeds): 32-row blocks streamed X at
    9–11 GB/s, 8-row blocks at 2.4–3.4 GB/s (loop overhead), and two separate matvecs (no
    blocking) read X twice. The size depends on N only, so vmapped and single runs of the same
    config sum in the same order.
    """
    b = max(8, (target_bytes // (4 * N)) // 8 * 8)
    return int(min(b, 1024, rows))


# ------------------------------------------------------------------------------------------------
# the batched program


def log_schedule(steps: int, points: int) -> np.ndarray:
    """Logged steps: unique round(geomspace(1, steps, points)) as int64 (first 1, last ``steps``)."""
    return np.unique(np.round(np.geomspace(1, steps, points)).astype(np.int64))


@functools.lru_cache(maxsize=64)
def _make_chunk_fn(P_list: tuple[int, ...], layout: str, dynamics: str, lr: float):
    """Jitted ``(v, buf, data, rec, active) -> (v, buf)`` running len(rec) steps by ``lax.scan``.

    bucket: v = tuple of [S, N] (one per α), buf = tuple of [nT, S, 4]
    pad:    v = [nα, S, N],                   buf = [nT, nα, S, 4]
    ``rec[i]`` ≥ 0: record the metrics of the current v into row rec[i] before stepping;
    ``active[i]`` false: do not step (the padding at the end of the last chunk).
    """
    P_max = max(P_list)

    def batched(v, data: Instances):
        N = data.X.shape[2]
        if layout == "bucket":
            metrics, v_new = [], []
            for k, P in enumerate(P_list):
                step = functools.partial(_one_step, rows=P, block=block_rows(N, P), dynamics=dynamics, lr=lr)
                m, vn = jax.vmap(step, in_axes=(0, 0, 0, 0, None))(v[k], data.X, data.y, data.w_star, P)
                metrics.append(m)
                v_new.append(vn)
            return tuple(metrics), tuple(v_new)
        step = functools.partial(_one_step, rows=P_max, block=block_rows(N, P_max), dynamics=dynamics, lr=lr)
        over_seeds = jax.vmap(step, in_axes=(0, 0, 0, 0, None))
        over_alpha = jax.vmap(over_seeds, in_axes=(0, None, None, None, 0))
        return over_alpha(v, data.X, data.y, data.w_star, jnp.asarray(P_list, jnp.int32))

    def chunk(v, buf, data: Instances, rec, active):
        def body(carry, xs):
            v, buf = carry
            rec_i, active_i = xs
            m, v_new = batched(v, data)
            buf = lax.cond(
                rec_i >= 0,
                lambda b: jax.tree_util.tree_map(lambda bb, mm: bb.at[rec_i].set(mm), b, m),
                lambda b: b,
                buf,
            )
            v = lax.cond(active_i, lambda: v_new, lambda: v)
            return (v, buf), None

        (v, buf), _ = lax.scan(body, (v, buf), (rec, active))
        return v, buf

    return jax.jit(chunk, donate_argnums=(0, 1))


@dataclasses.dataclass
class SimResult:
    """Raw simulation output; arrays [nP, nS, nT] float64 (NaN: not recorded)."""

    config: PerceptronConfig
    epochs: np.ndarray
    lam: np.ndarray
    R: np.ndarray
    train_error: np.ndarray
    train_loss: np.ndarray
    timings: dict

    @property
    def eps(self) -> np.ndarray:
        """Generalisation error ε = arccos(R)/π [nP, nS, nT]."""
        return np.arccos(np.clip(self.R, -1.0, 1.0)) / np.pi

    def curves_arrays(self, *, test_loss: bool = True) -> dict[str, np.ndarray]:
        """The shared ``curves.npz`` arrays (plus ``alpha`` [nP] and ``N``)."""
        from jaxscale.perceptron.theory import population_logistic_loss

        cfg = self.config
        with np.errstate(divide="ignore", invalid="ignore"):
            log_norm = np.log(self.lam)
        tl = population_logistic_loss(self.lam, self.R) if test_loss else np.full_like(self.lam, np.nan)
        return {
            "P": np.asarray(cfg.P, np.int64),
            "seeds": np.asarray(cfg.seed_values(), np.int64),
            "epochs": np.asarray(self.epochs, np.int64),
            "train_error": self.train_error,
            "test_error": self.eps,
            "train_loss": self.train_loss,
            "test_loss": tl,
            "log_norm": log_norm,
            "alpha": np.asarray(cfg.alpha_effective, np.float64),
            "N": np.asarray(cfg.N, np.int64),
        }


def simulate(
    cfg: PerceptronConfig,
    *,
    progress: Optional[Callable[[int, int, float], None]] = None,
    chunk_steps: Optional[int] = None,
) -> SimResult:
    """Run the experiment of ``cfg`` for all seeds and α in one jitted program.

    ``progress(done_steps, total_steps, elapsed_s)`` is called after each chunk of steps (default
    ~20 chunks). Returns a :class:`SimResult` whose arrays are [nP, nS, nT] in float64.
    """
    P_list = cfg.P
    S, N, T = cfg.seeds, cfg.N, cfg.steps
    epochs = log_schedule(T, cfg.log_points)
    nT, nA = len(epochs), len(P_list)

    t0 = time.perf_counter()
    data = make_instances(cfg.seed_values(), N, max(P_list), cfg.init_norm)
    jax.block_until_ready(data)
    t_data = time.perf_counter() - t0

    if cfg.layout == "bucket":
        v = tuple(jnp.array(data.v0) for _ in P_list)
        buf = tuple(jnp.full((nT, S, 4), jnp.nan, jnp.float32) for _ in P_list)
    else:
        v = jnp.broadcast_to(data.v0, (nA, S, N)).copy()
        buf = jnp.full((nT, nA, S, 4), jnp.nan, jnp.float32)

    # step t = 0..T: record at t ∈ epochs, update for t < T; padded to a whole number of chunks
    C = chunk_steps or max(1, -(-(T + 1) // 20))
    total = -(-(T + 1) // C) * C
    rec = np.full(total, -1, np.int32)
    rec[epochs] = np.arange(nT, dtype=np.int32)
    active = np.arange(total) < T
    fn = _make_chunk_fn(P_list, cfg.layout, cfg.dynamics, cfg.lr)

    t1 = time.perf_counter()
    t_first = None
    for start in range(0, total, C):
        v, buf = fn(v, buf, data, jnp.asarray(rec[start:start + C]), jnp.asarray(active[start:start + C]))
        jax.block_until_ready(buf)
        if t_first is None:
            t_first = time.perf_counter() - t1  # includes compilation
        if progress is not None:
            progress(min(start + C, T), T, time.perf_counter() - t1)
    t_run = time.perf_counter() - t1

    if cfg.layout == "bucket":
        arr = np.stack([np.asarray(b, np.float64) for b in buf], axis=0)  # [nA, nT, S, 4]
    else:
        arr = np.moveaxis(np.asarray(buf, np.float64), 1, 0)  # [nA, nT, S, 4]
    arr = np.transpose(arr, (0, 2, 1, 3))  # [nA, S, nT, 4]
    # steady-state rate: the chunks after the first (which includes compilation)
    later_steps = max(min(total, T + 1) - C, 0)
    rate = later_steps * S * nA / (t_run - t_first) if later_steps and t_run > t_first else float("nan")
    timings = {
        "data_s": t_data,
        "first_chunk_s_incl_compile": t_first,
        "run_s": t_run,
        "steps_x_instances_per_s": rate,
        "chunk_steps": C,
    }
    return SimResult(
        config=cfg, epochs=epochs, lam=arr[..., 0], R=arr[..., 1],
        train_error=arr[..., 2], train_loss=arr[..., 3], timings=timings,
    )


# ------------------------------------------------------------------------------------------------
# one experiment end to end: simulate, write results, draw the figure


@dataclasses.dataclass
class RunOutput:
    """Where :func:`run_experiment` wrote its results, and what it measured."""

    out_dir: "Path"
    curves_path: "Path"
    manifest_path: "Path"
    figure_paths: list
    result: SimResult
    curves: dict
    theory: list


def run_experiment(
    cfg: PerceptronConfig,
    out_dir,
    *,
    progress: Optional[Callable[[int, int, float], None]] = None,
    figure: bool = True,
) -> RunOutput:
    """Simulate ``cfg``, write ``curves.npz`` + ``manifest.json`` (atomically) and the figure
    ``perceptron.png``/``.pdf`` (ε vs λ(t) over the theory curves) into ``out_dir``."""
    import datetime
    from pathlib import Path

    from jaxscale.io import save_json_atomic, save_npz_atomic
    from jaxscale.perceptron.plots import theory_curves, plot_trajectories

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    result = simulate(cfg, progress=progress)
    t1 = time.perf_counter()
    curves = result.curves_arrays()
    t_test_loss = time.perf_counter() - t1
    curves_path = save_npz_atomic(out_dir / "curves.npz", curves)

    t2 = time.perf_counter()
    lam = result.lam[np.isfinite(result.lam) & (result.lam > 0)]
    lam_lo = float(min(1e-2, lam.min() / 2)) if lam.size else 1e-2
    lam_hi = float(max(1e3, lam.max() * 2)) if lam.size else 1e3
    theory = theory_curves(cfg.alpha_effective, lam_lo, lam_hi, cfg.theory_points)
    figure_paths = []
    if figure:
        title = (f"teacher–student perceptron, N = {cfg.N}, {cfg.seeds} seeds, "
                 f"{cfg.dynamics} (η = {cfg.lr:g}), {cfg.steps} steps")
        figure_paths = plot_trajectories(curves, theory, out_dir / "perceptron", title=title)
    t_theory = time.perf_counter() - t2

    from jaxscale.results import environment_info

    manifest = {
        "kind": "perceptron",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.to_dict(),
        "resolved": {
            "P": list(cfg.P),
            "alpha_effective": list(cfg.alpha_effective),
            "seeds": list(cfg.seed_values()),
            "logged_steps": len(result.epochs),
            "chunk_steps": result.timings["chunk_steps"],
        },
        "conventions": {
            "loss": "mean over the P samples of log(1+exp(-y w.x/sqrt(N))); train_loss is this mean (nats)",
            "lr": "v <- v - lr * grad_v (v = w/sqrt(N)); equals lr/alpha on the summed loss",
            "dynamics": {
                "gd": "constant-lr gradient descent on the mean loss",
                "flow": "gradient descent on ln(mean loss): step lr/L grows as the loss falls; same (lambda, eps) path",
            }[cfg.dynamics],
            "epochs": "logged GD steps (step 0 = the random init is not logged)",
            "test_error": "exact generalisation error arccos(R)/pi, R = w.w*/(|w||w*|)",
            "test_loss": "exact population logistic loss from (lambda, R) by 1-D quadrature",
            "log_norm": "natural log of lambda = |w|/sqrt(N)",
            "data": "per seed: teacher, then row mu of X from fold_in(key_x, mu): training sets are nested across alpha",
            "layout": cfg.layout,
        },
        "theory": [
            {"alpha": th.alpha, "eps_hebb": th.eps_hebb, "eps_max_margin": th.eps_max_margin,
             "lam_star": th.lam_star, "eps_star": th.eps_star}
            for th in theory
        ],
        "environment": environment_info(),
        "wall_s": {
            "total": time.perf_counter() - t0,
            "data": result.timings["data_s"],
            "first_chunk_incl_compile": result.timings["first_chunk_s_incl_compile"],
            "simulate": result.timings["run_s"],
            "test_loss_quadrature": t_test_loss,
            "theory_and_figure": t_theory,
        },
        "throughput": {"gd_steps_x_instances_per_s": result.timings["steps_x_instances_per_s"]},
    }
    manifest_path = save_json_atomic(out_dir / "manifest.json", manifest)
    return RunOutput(out_dir=out_dir, curves_path=curves_path, manifest_path=manifest_path,
                     figure_paths=figure_paths, result=result, curves=curves, theory=theory)
