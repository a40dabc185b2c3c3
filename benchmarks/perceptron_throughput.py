"""Perceptron GD throughput (steps × seeds per second) against a per-seed NumPy loop and against this
machine's memory-bandwidth roofline, measured in the same run; optionally (``--validate``) the
fixed-norm theory against the sphere minimiser and GD trajectories at larger N.

    python benchmarks/perceptron_throughput.py [--N 1000] [--alpha 1,2,5,10] [--seeds 64] [--json]
    python benchmarks/perceptron_throughput.py --validate [--json]

Throughput. One GD step of one instance reads its P×N float32 inputs once (the stabilities Xv and
the gradient Xᵀc are computed block by block while the block is in cache, see
``jaxscale.perceptron.simulate._one_step``), so the roofline is

    steps × instances / s  ≤  (streaming read bandwidth) / (4 N P bytes).

The bandwidth is measured in the same run: once at the start (NumPy sum, jitted ``jnp.sum``, NumPy
and jitted-JAX matrix–vector products over 1 GiB; the best is printed as the roofline), and, since
on a shared machine the bandwidth available drifts by 2x within minutes, again by a quick sum probe
just before and after each timed kernel: its "% roofline" is relative to those probes. Data are stored, not regenerated: one seed's
nested data serve every α (P_max rows), and the script also times regenerating them from the
counter-based PRNG to show why (on this CPU it is far slower than reading them).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def _best_rate(fn, nbytes: float, repeats: int = 3) -> float:
    """Best of ``repeats`` timings of fn(), as GB/s of ``nbytes`` streamed."""
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return nbytes / best / 1e9


def bandwidth(gib: float = 1.0) -> dict:
    """Streaming read bandwidth (GB/s) by four kernels over ≥ ``gib`` GiB of float32."""
    n = int(gib * (1 << 30)) // 4
    rows, cols = n // 1000, 1000
    x = np.ones((rows, cols), np.float32)
    v = np.ones(cols, np.float32)
    xj = jnp.asarray(x)
    vj = jnp.asarray(v)
    jsum = jax.jit(jnp.sum)
    jmv = jax.jit(lambda a, b: a @ b)
    jsum(xj).block_until_ready()
    jmv(xj, vj).block_until_ready()
    out = {
        "numpy_sum": _best_rate(lambda: x.sum(), x.nbytes),
        "numpy_matvec": _best_rate(lambda: x @ v, x.nbytes),
        "jax_sum": _best_rate(lambda: jsum(xj).block_until_ready(), x.nbytes),
        "jax_matvec": _best_rate(lambda: jmv(xj, vj).block_until_ready(), x.nbytes),
    }
    out["roofline_GBps"] = max(out.values())
    del x, xj
    return out


class _Probe:
    """A quick streaming-bandwidth probe (NumPy and jitted-JAX sums over 512 MiB, best of 2),
    taken right before and after each timed kernel: on a shared machine the bandwidth available
    drifts by 2x within minutes, so each kernel is compared with the bandwidth of its own moment."""

    def __init__(self):
        self.x = np.ones((1 << 27,), np.float32)
        self.xj = jnp.asarray(self.x)
        self.jsum = jax.jit(jnp.sum)
        self.jsum(self.xj).block_until_ready()

    def __call__(self) -> float:
        return max(_best_rate(lambda: self.x.sum(), self.x.nbytes, 2),
                   _best_rate(lambda: self.jsum(self.xj).block_until_ready(), self.x.nbytes, 2))


def jax_throughput(data, P_list, steps: int, dynamics: str, probe: "_Probe") -> dict:
    """Timed GD steps of the jitted, vmapped program on all α in ``P_list`` (bucket layout).

    Three timed calls of ``steps`` steps each, each bracketed by bandwidth probes; reports the
    best call and its ratio to the mean of its two probes."""
    from jaxscale.perceptron.simulate import _make_chunk_fn

    S, _, N = data.X.shape
    fn = _make_chunk_fn(tuple(P_list), "bucket", dynamics, 0.1)
    v = tuple(jnp.array(data.v0) for _ in P_list)
    buf = tuple(jnp.zeros((1, S, 4), jnp.float32) for _ in P_list)
    rec = jnp.full((steps,), -1, jnp.int32)
    act = jnp.ones((steps,), bool)
    t = time.perf_counter()
    v, buf = fn(v, buf, data, rec[:1], act[:1])  # compile (+1 step)
    jax.block_until_ready(v)
    compile_s = time.perf_counter() - t
    nbytes = 4.0 * N * sum(P_list) * S * steps
    best = None
    for _ in range(3):
        before = probe()
        t = time.perf_counter()
        v, buf = fn(v, buf, data, rec, act)
        jax.block_until_ready(v)
        dt = time.perf_counter() - t
        bw = 0.5 * (before + probe())
        if best is None or dt < best[0]:
            best = (dt, bw)
    dt, bw = best
    return {"steps_x_seeds_per_s": steps * S * len(P_list) / dt, "GBps": nbytes / dt / 1e9, "compile_s": compile_s,
            "s_per_step": dt / steps, "probe_GBps": bw, "fraction_of_roofline": nbytes / dt / 1e9 / bw,
            "roofline_steps_x_seeds_per_s": bw * 1e9 / (4.0 * N * float(np.mean(P_list)))}


def numpy_throughput(X: np.ndarray, y: np.ndarray, P_list, steps: int, seeds: int) -> dict:
    """A plain per-seed NumPy loop of the same GD step (two BLAS matvecs per step)."""
    N = X.shape[2]
    t = time.perf_counter()
    for s in range(seeds):
        for P in P_list:
            Xs, ys = X[s, :P], y[s, :P]
            v = np.zeros(N, np.float32) + 1e-3
            for _ in range(steps):
                z = ys * (Xs @ v)
                c = -0.5 * (1 - np.tanh(0.5 * z)) / P  # ℓ'(z)/P = −σ(−z)/P
                v = v - np.float32(0.1) * ((c * ys) @ Xs)
    dt = time.perf_counter() - t
    inst_steps = steps * seeds * len(P_list)
    nbytes = 4.0 * N * sum(P_list) * seeds * steps
    return {"steps_x_seeds_per_s": inst_steps / dt, "GBps": nbytes / dt / 1e9}


def regeneration_cost(N: int, P: int, seeds: int = 1) -> dict:
    """Time to regenerate one seed's P×N inputs from the counter-based PRNG (what a step would
    pay if data were not stored), against reading them once at the roofline."""
    from jaxscale.perceptron.simulate import make_instances

    make_instances(np.arange(seeds), N, P).X.block_until_ready()  # compile
    t = time.perf_counter()
    make_instances(np.arange(seeds, 2 * seeds), N, P).X.block_until_ready()
    dt = time.perf_counter() - t
    return {"gen_s_per_seed": dt / seeds, "gen_GBps": 4.0 * N * P * seeds / dt / 1e9}


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def run_throughput(args) -> dict:
    from jaxscale.perceptron.simulate import make_instances

    alphas = [float(a) for a in args.alpha.split(",")]
    P_list = [int(round(a * args.N)) for a in alphas]
    res = {"N": args.N, "alpha": alphas, "P": P_list, "seeds": args.seeds, "steps": args.steps,
           "dynamics": args.dynamics, "load_before": load_average(), "cpu_count": os.cpu_count(),
           "backend": jax.default_backend()}
    t = time.perf_counter()
    bw = bandwidth()
    res["bandwidth"] = bw
    t_data = time.perf_counter()
    data = make_instances(np.arange(args.seeds), args.N, max(P_list))
    data.X.block_until_ready()
    res["data_gen_s"] = time.perf_counter() - t_data
    res["data_GB"] = data.X.nbytes / 1e9
    probe = _Probe()
    rows = []
    for a, P in zip(alphas, P_list):
        r = jax_throughput(data, [P], args.steps, args.dynamics, probe)
        r.update(alpha=a, P=P)
        rows.append(r)
    allr = jax_throughput(data, P_list, args.steps, args.dynamics, probe)
    allr.update(alpha="all", P=sum(P_list))
    rows.append(allr)
    res["jax"] = rows

    nps = min(args.numpy_seeds, args.seeds)
    Xn = np.asarray(data.X[:nps])
    yn = np.asarray(data.y[:nps])
    res["numpy"] = numpy_throughput(Xn, yn, P_list, max(2, args.steps // 4), nps)
    res["numpy"]["seeds"] = nps
    del Xn, yn
    res["regeneration"] = regeneration_cost(args.N, max(P_list))
    res["load_after"] = load_average()
    res["wall_s"] = time.perf_counter() - t
    return res


def print_throughput(res: dict) -> None:
    bw = res["bandwidth"]
    print(f"perceptron GD throughput: N={res['N']}, {res['seeds']} seeds, {res['dynamics']}, {res['steps']} timed steps, "
          f"backend {res['backend']}, {res['cpu_count']} CPUs, load average {res['load_before']} -> {res['load_after']}")
    print(f"stored data: {res['data_GB']:.2f} GB (nested: one P_max x N array per seed serves every alpha), "
          f"generated in {res['data_gen_s']:.1f} s")
    print("bandwidth (GB/s): " + ", ".join(f"{k} {v:.2f}" for k, v in bw.items() if k != "roofline_GBps")
          + f"  -> roofline {bw['roofline_GBps']:.2f}")
    print(f"\n{'alpha':>6} {'P':>6} {'steps*seeds/s':>14} {'GB/s':>7} {'probe GB/s':>10} {'roofline s*s/s':>15} "
          f"{'% roofline':>10} {'compile s':>9}")
    for r in res["jax"]:
        a = r["alpha"] if isinstance(r["alpha"], str) else f"{r['alpha']:g}"
        print(f"{a:>6} {r['P']:>6} {r['steps_x_seeds_per_s']:>14.1f} {r['GBps']:>7.2f} {r['probe_GBps']:>10.2f} "
              f"{r['roofline_steps_x_seeds_per_s']:>15.1f} {100 * r['fraction_of_roofline']:>9.0f}% {r['compile_s']:>9.1f}")
    n, a = res["numpy"], res["jax"][-1]
    print(f"\nNumPy per-seed loop (all alpha, {n['seeds']} seeds): {n['steps_x_seeds_per_s']:.1f} steps*seeds/s "
          f"({n['GBps']:.2f} GB/s of X); JAX/NumPy speed-up {a['steps_x_seeds_per_s'] / n['steps_x_seeds_per_s']:.1f}x")
    g = res["regeneration"]
    t_read = 4.0 * res["N"] * max(res["P"]) / (bw["roofline_GBps"] * 1e9)
    print(f"regenerating one seed's data from the PRNG: {g['gen_s_per_seed']:.3f} s ({g['gen_GBps']:.2f} GB/s) vs "
          f"{t_read:.4f} s to read it at the roofline: {g['gen_s_per_seed'] / t_read:.0f}x slower, so data are stored")


# ------------------------------------------------------------------------------------------------
# validation at larger N


def run_validation(args) -> dict:
    from jaxscale.perceptron import theory
    from jaxscale.perceptron.config import perceptron_config_from_dict
    from jaxscale.perceptron.simulate import simulate
    from jaxscale.perceptron.sphere import validate_fixed_norm

    out = {"load_before": load_average()}
    lams = [0.01, 0.1, 1.0, 10.0, 100.0]
    t = time.perf_counter()
    rows = validate_fixed_norm(5.0, lams, sizes=(200, 400), instances=(128, 64), batch=32)
    out["sphere"] = {"alpha": 5.0, "sizes": [200, 400], "instances": [128, 64], "wall_s": time.perf_counter() - t,
                     "rows": [{"lam": r.lam, "theory": r.theory,
                               "per_size": {str(k): list(v) for k, v in r.per_size.items()},
                               "extrap": r.extrap, "extrap_se": r.extrap_se, "z": r.z, "max_grad": r.max_grad}
                              for r in rows]}

    t = time.perf_counter()
    cfg = perceptron_config_from_dict({"N": args.val_N, "alpha": [1, 2, 5, 10], "seeds": 8, "steps": 3000,
                                       "dynamics": "flow", "lr": 0.1, "log_points": 80})
    sim = simulate(cfg)
    comp = []
    grid = [0.3, 1.0, 3.0, 10.0, 30.0, 100.0]
    for i, a in enumerate(cfg.alpha_effective):
        e_th = np.atleast_1d(theory.eps_fixed_norm(grid, a))
        for lam, et in zip(grid, e_th):
            per_seed = []
            for s in range(cfg.seeds):
                ll, ee = np.log(sim.lam[i, s]), sim.eps[i, s]
                if ll.min() <= math.log(lam) <= ll.max():
                    per_seed.append(np.interp(math.log(lam), ll, ee))
            if len(per_seed) >= 2:
                m = float(np.mean(per_seed))
                se = float(np.std(per_seed, ddof=1) / math.sqrt(len(per_seed)))
                comp.append({"alpha": a, "lam": lam, "theory": float(et), "gd_mean": m, "gd_se": se,
                             "diff": m - float(et), "z": (m - float(et)) / se if se > 0 else float("nan")})
    out["gd_vs_theory"] = {"N": cfg.N, "seeds": cfg.seeds, "dynamics": "flow", "lr": 0.1, "steps": 3000,
                           "wall_s": time.perf_counter() - t, "rows": comp}
    out["load_after"] = load_average()
    return out


def print_validation(out: dict) -> None:
    s = out["sphere"]
    n1, n2 = s["sizes"]
    print(f"\nfixed-norm theory vs the sphere minimiser, alpha = {s['alpha']:g}, N = {n1} ({s['instances'][0]} instances) "
          f"and {n2} ({s['instances'][1]}), control variates, extrapolated linearly in 1/N ({s['wall_s']:.0f} s):")
    print(f"{'lambda':>8} {'theory':>9} {'N=' + str(n1):>18} {'N=' + str(n2):>18} {'N->inf':>18} {'z':>6}")
    for r in s["rows"]:
        a, b = r["per_size"][str(n1)], r["per_size"][str(n2)]
        print(f"{r['lam']:>8g} {r['theory']:>9.5f} {a[0]:>9.5f} ± {a[1]:.5f} {b[0]:>9.5f} ± {b[1]:.5f} "
              f"{r['extrap']:>9.5f} ± {r['extrap_se']:.5f} {r['z']:>6.2f}")
    g = out["gd_vs_theory"]
    print(f"\nGD trajectories ({g['dynamics']}, lr {g['lr']}, N = {g['N']}, {g['seeds']} seeds) vs theory eps(lambda, alpha) "
          f"at the same lambda ({g['wall_s']:.0f} s):")
    print(f"{'alpha':>6} {'lambda':>7} {'theory':>8} {'GD':>18} {'GD - theory':>12} {'z':>6}")
    for r in g["rows"]:
        print(f"{r['alpha']:>6g} {r['lam']:>7g} {r['theory']:>8.4f} {r['gd_mean']:>9.4f} ± {r['gd_se']:.4f} "
              f"{r['diff']:>+12.4f} {r['z']:>6.1f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--N", type=int, default=1000)
    p.add_argument("--alpha", default="1,2,5,10")
    p.add_argument("--seeds", type=int, default=64, help="seeds vmapped at once (64: 2.6 GB of nested data at N=1000)")
    p.add_argument("--steps", type=int, default=10, help="timed GD steps per measurement")
    p.add_argument("--dynamics", default="gd", choices=("gd", "flow"))
    p.add_argument("--numpy-seeds", type=int, default=2, help="seeds timed in the NumPy loop")
    p.add_argument("--validate", action="store_true", help="also run the larger-N validation (several minutes)")
    p.add_argument("--no-throughput", action="store_true", help="skip the throughput measurement")
    p.add_argument("--val-N", type=int, default=1000, help="N of the GD-vs-theory trajectories")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = p.parse_args(argv)
    res = {"command": " ".join([os.path.basename(sys.executable), *sys.argv])}
    if not args.no_throughput:
        res["throughput"] = run_throughput(args)
    if args.validate:
        res["validation"] = run_validation(args)
    if args.json:
        print(json.dumps(res, default=float))
    else:
        if "throughput" in res:
            print_throughput(res["throughput"])
        if "validation" in res:
            print_validation(res["validation"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
