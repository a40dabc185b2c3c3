"""Typed configuration of a perceptron run, loaded from TOML and validated once at the edge.

A perceptron config is one flat TOML table (every key optional)::

    name = "perceptron"
    N = 400                       # input dimension
    alpha = [0.5, 1, 2, 5, 10]    # P = round(alpha * N) samples per α (sorted ascending)
    seeds = 8                     # seed values seed_start, seed_start + 1, ...
    seed_start = 0
    steps = 3000                  # GD steps
    dynamics = "flow"             # "gd" (constant lr) or "flow" (step grows with |w|)
    lr = 0.5
    init_norm = 1e-3              # λ at step 0 (small random init)
    log_points = 60               # log-spaced logged steps in [1, steps]
    layout = "bucket"             # how different P share one program: "bucket" or "pad"
    theory_points = 61            # λ grid of the theory curves in the figure

Unknown keys, wrong types and non-positive values raise :class:`~jaxscale.errors.UsageError`
with a one-line message naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Optional

from jaxscale.config import DEEP_SECTIONS, build_table, check_choice, check_name, load_toml
from jaxscale.errors import UsageError

DYNAMICS = ("gd", "flow")
LAYOUTS = ("bucket", "pad")


@dataclasses.dataclass(frozen=True)
class PerceptronConfig:
    """One perceptron experiment (see the module docstring for the meaning of each field)."""

    name: str = "perceptron"
    description: str = ""
    N: int = 400
    alpha: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0)
    seeds: int = 8
    seed_start: int = 0
    steps: int = 3000
    dynamics: str = "flow"
    lr: float = 0.5
    init_norm: float = 1e-3
    log_points: int = 60
    layout: str = "bucket"
    theory_points: int = 61

    @property
    def P(self) -> tuple[int, ...]:
        """Training-set sizes P = round(αN), one per α."""
        return tuple(int(round(a * self.N)) for a in self.alpha)

    @property
    def alpha_effective(self) -> tuple[float, ...]:
        """α actually simulated, P/N (differs from ``alpha`` by the rounding of αN)."""
        return tuple(P / self.N for P in self.P)

    def seed_values(self) -> tuple[int, ...]:
        return tuple(self.seed_start + i for i in range(self.seeds))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["alpha"] = list(self.alpha)
        return d


_FLOAT_KEYS = ("lr", "init_norm")


def load_perceptron_config(path: str | Path, overrides: Optional[Mapping[str, Any]] = None) -> PerceptronConfig:
    """Read and validate a perceptron TOML file; ``overrides`` ({"steps": 100, ...}) win over it."""
    raw = load_toml(path, "configs/perceptron.toml")
    raw.update(overrides or {})
    return perceptron_config_from_dict(raw, source=str(path))


def perceptron_config_from_dict(raw: Mapping[str, Any], *, source: str = "config") -> PerceptronConfig:
    """Build and validate a :class:`PerceptronConfig` from a plain mapping (e.g. parsed TOML)."""
    deep = sorted(set(raw) & set(DEEP_SECTIONS))
    if deep:
        raise UsageError(f"{source} is a deep-network config (section {deep[0]!r}): run it with `jaxscale run {source}`")
    cfg = build_table(PerceptronConfig, raw, source=source)
    # sorted so that P (the curves' first axis) increases, as every experiment's does
    cfg = dataclasses.replace(cfg, alpha=tuple(sorted(cfg.alpha)))
    validate_perceptron_config(cfg, source=source)
    return cfg


def validate_perceptron_config(cfg: PerceptronConfig, *, source: str = "config") -> None:
    """Value checks (types are checked when building); raises UsageError naming key and fix."""
    check_name(cfg.name, source)
    for key in ("N", "seeds", "steps", "log_points", "theory_points"):
        if getattr(cfg, key) <= 0:
            raise UsageError(f"{source}: {key} must be a positive integer, got {getattr(cfg, key)}: set {key} >= 1")
    if cfg.seed_start < 0:
        raise UsageError(f"{source}: seed_start must be >= 0, got {cfg.seed_start}: use a non-negative seed")
    for key in _FLOAT_KEYS:
        val = getattr(cfg, key)
        if not (math.isfinite(val) and val > 0):
            raise UsageError(f"{source}: {key} must be a positive number, got {val}: set e.g. {key} = 0.5")
    if not cfg.alpha:
        raise UsageError(f"{source}: alpha is empty: give the sample ratios, e.g. alpha = [1, 2, 5, 10]")
    for i, a in enumerate(cfg.alpha):
        if not (math.isfinite(a) and a > 0):
            raise UsageError(f"{source}: alpha[{i}] must be a positive number, got {a}: use alpha = P/N > 0")
        if round(a * cfg.N) < 1:
            raise UsageError(f"{source}: alpha[{i}] = {a} gives P = round(alpha*N) = 0 at N = {cfg.N}: increase alpha or N")
    if len(set(cfg.P)) != len(cfg.P):
        raise UsageError(f"{source}: alpha {list(cfg.alpha)} gives duplicate P = {list(cfg.P)} at N = {cfg.N}: list each alpha once")
    check_choice(source, "dynamics", cfg.dynamics, DYNAMICS)
    check_choice(source, "layout", cfg.layout, LAYOUTS)
