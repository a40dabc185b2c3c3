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
import tomllib
from pathlib import Path
from typing import Any, Mapping, Optional

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


_INT_KEYS = ("N", "seeds", "seed_start", "steps", "log_points", "theory_points")
_FLOAT_KEYS = ("lr", "init_norm")
_STR_KEYS = ("name", "description", "dynamics", "layout")


def load_perceptron_config(path: str | Path, overrides: Optional[Mapping[str, Any]] = None) -> PerceptronConfig:
    """Read and validate a perceptron TOML file; ``overrides`` ({"steps": 100, ...}) win over it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {str(path)!r} not found: pass the path of a TOML file, e.g. configs/perceptron.toml")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: invalid TOML ({e}): fix the syntax") from None
    raw = dict(raw)
    raw.update(overrides or {})
    return perceptron_config_from_dict(raw, source=str(path))


def perceptron_config_from_dict(raw: Mapping[str, Any], *, source: str = "config") -> PerceptronConfig:
    """Build and validate a :class:`PerceptronConfig` from a plain mapping (e.g. parsed TOML)."""
    fields = {f.name for f in dataclasses.fields(PerceptronConfig)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise UsageError(
            f"{source}: unknown key {unknown[0]!r}: valid perceptron keys are {', '.join(sorted(fields))}"
        )
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _INT_KEYS:
            kwargs[key] = _as_int(value, key, source)
        elif key in _FLOAT_KEYS:
            kwargs[key] = _as_float(value, key, source)
        elif key in _STR_KEYS:
            if not isinstance(value, str):
                raise UsageError(f"{source}: {key} must be a string, got {value!r}: quote it, e.g. {key} = \"...\"")
            kwargs[key] = value
        elif key == "alpha":
            vals = value if isinstance(value, (list, tuple)) else [value]
            # sorted so that P (the curves' first axis) increases, as every experiment's does
            kwargs[key] = tuple(sorted(_as_float(v, f"alpha[{i}]", source) for i, v in enumerate(vals)))
    cfg = PerceptronConfig(**kwargs)
    validate_perceptron_config(cfg, source=source)
    return cfg


def validate_perceptron_config(cfg: PerceptronConfig, *, source: str = "config") -> None:
    """Value checks (types are checked when building); raises UsageError naming key and fix."""
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
    if cfg.dynamics not in DYNAMICS:
        raise UsageError(f"{source}: dynamics = {cfg.dynamics!r} is not valid: choose one of {', '.join(DYNAMICS)}")
    if cfg.layout not in LAYOUTS:
        raise UsageError(f"{source}: layout = {cfg.layout!r} is not valid: choose one of {', '.join(LAYOUTS)}")


def _as_int(value: Any, key: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise UsageError(f"{source}: {key} must be an integer, got {value!r}: write e.g. {key} = 100")
    return int(value)


def _as_float(value: Any, key: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{source}: {key} must be a number, got {value!r}: write e.g. {key} = 0.5")
    return float(value)
