"""Typed experiment configuration: one place, loaded from TOML, validated once at the edge.

A config file has a top-level ``name`` (and optional ``description``) and the sections below; every key
is optional except ``train.P``. Unknown keys, wrong types and impossible values raise
:class:`~jaxscale.errors.UsageError` with a one-line message naming the key and the fix.

    name = "cnn_cifar10"
    [model]        family, preset, init_factor, init, and [model.arch] overrides of the preset
    [data]         dataset, data_dir, path, augment, augment_eval, mean, std, eval_batch_size
    [train]        P, seeds, seed_start, epochs, batch_size, optimizer, lr, weight_decay, log_points
    [norms]        convention, power_iterations, every
    [parallel]     ensemble (how seeds are batched), seeds_per_device, data, api, memory_limit_gb
    [checkpoint]   every_epochs, every_minutes, keep
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Optional

from jaxscale.errors import UsageError

FAMILIES = ("cnn", "resnet", "vit")
OPTIMIZERS = ("adam", "adamw", "sgd")
CONVENTIONS = ("paper", "bartlett")
ENSEMBLE_STRATEGIES = ("auto", "vmap", "loop")
PARALLEL_APIS = ("jit", "pmap")
PRECISIONS = ("fp32", "tf32", "bf16")
AUGMENTS = ("none", "crop_flip", "affine")
CONV_IMPLS = ("auto", "xla", "patches")
#: every family has "head"; "old" (the ViT-MNIST runs' init) is ViT's only
INITS = ("head", "old")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str = "cnn"
    #: architecture preset of jaxscale.models.PRESETS[family] (e.g. "mnist", "cifar10", "digits")
    preset: str = "digits"
    #: multiplier of the initial weights (PROTOCOL §2.4); biases are never scaled
    init_factor: float = 1.0
    #: "head" (official HEAD init) or "old" (the older ViT init used by the ViT-MNIST runs)
    init: str = "head"
    #: how convolutions are computed: "auto" (patches on CPU, xla elsewhere), "xla", "patches"
    conv_impl: str = "auto"
    #: overrides of preset fields, e.g. {channels = [16, 32]}
    arch: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"
    #: tfds data_dir (None: $TFDS_DATA_DIR or tfds' default)
    data_dir: Optional[str] = None
    #: the .npz file of dataset = "npz" (x_train, y_train, x_test, y_test; see jaxscale.data.npz_source)
    path: Optional[str] = None
    #: "none" | "crop_flip" | "affine"; None = the protocol's default for (family, dataset)
    augment: Optional[str] = None
    #: augment evaluation images too, as the official code does (PROTOCOL §3.1, §9.11); None = as official
    augment_eval: Optional[bool] = None
    #: per-channel normalisation; None = the protocol's default for (family, dataset)
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    #: images per evaluation chunk (per seed); only memory, not results, depends on it
    eval_batch_size: int = 1000


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    #: training-set sizes; per seed, subsets are nested prefixes of one permutation
    P: tuple[int, ...] = ()
    #: number of seeds, seed values are seed_start, seed_start+1, ...
    seeds: int = 1
    seed_start: int = 0
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    #: coupled L2 for adam/sgd (PyTorch weight_decay), decoupled for adamw
    weight_decay: float = 0.0
    #: number of log-spaced points of the logging schedule (PROTOCOL §4 uses 50)
    log_points: int = 50
    #: compute dtype: fp32 (default, as the paper), tf32, bf16 (fp32 master weights)
    precision: str = "fp32"


@dataclasses.dataclass(frozen=True)
class NormsConfig:
    #: "paper" (official definitions, quirks included) or "bartlett" (textbook, all layers)
    convention: str = "paper"
    #: power iterations per update of the carried singular vectors
    power_iterations: int = 1
    #: update the power-iteration vectors every this many train steps (0: only at logged epochs)
    every: int = 1


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    #: how the seeds of a device are batched in one program: "loop" (one seed after another, the
    #: stacked state updated in place), "vmap" (side by side, in the widest groups that fit in
    #: memory), or "auto" (loop for CNN/ResNet on CPU, vmap otherwise; see jaxscale.train.ensemble)
    ensemble: str = "auto"
    #: seeds per seed group (device, or group of `data` devices): 0 = spread the seeds evenly over
    #: every device; N > 0 = use ceil(seeds / N) groups of N seeds (the last one padded)
    seeds_per_device: int = 0
    #: data-parallel degree (devices per seed): 1 = seed-parallel only; 0 = auto (1 when there are
    #: at least as many seeds as devices, else the largest divisor of the device count that still
    #: gives every seed its own group)
    data: int = 0
    #: "jit" (jax.jit + shard_map over a ("seeds", "data") mesh; multi-host capable) or "pmap"
    #: (jax.pmap over seed groups or data shards, not both; one process only)
    api: str = "jit"
    #: device memory (GB, 1e9 bytes) the run's programs may use per device; 0 = the device's free
    #: memory (CPU: the host's available RAM shared by its devices). vmap groups are sized to fit it,
    #: and a run that cannot fit one seed at a time is refused before it starts
    memory_limit_gb: float = 0.0


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    #: save every this many epochs (0 = off unless every_minutes)
    every_epochs: int = 0
    #: save when this many minutes of wall time passed since the last save (0 = off); checked at
    #: epoch ends. A SIGTERM/SIGINT always saves, whatever these two say.
    every_minutes: float = 10.0
    #: number of most recent checkpoints kept on disk (older ones are deleted)
    keep: int = 3


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = "experiment"
    description: str = ""
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    norms: NormsConfig = dataclasses.field(default_factory=NormsConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)

    def seed_values(self) -> tuple[int, ...]:
        return tuple(self.train.seed_start + i for i in range(self.train.seeds))

    def to_dict(self) -> dict:
        return _to_plain(dataclasses.asdict(self))


# ------------------------------------------------------------------------------------------------
# Loading and validation


#: a run name becomes a directory under runs/: one path component of ordinary characters
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
#: integers must fit the int32 counters of the compiled programs (epochs, steps, sizes)
INT_LIMIT = 2**31 - 1
#: top-level keys that only one kind of config has: the other command is what the user wanted
_PERCEPTRON_ONLY = ("N", "alpha", "steps", "dynamics", "init_norm", "theory_points")
DEEP_SECTIONS = ("model", "data", "train", "norms", "parallel", "checkpoint")


def load_toml(path: str | Path, example: str) -> dict:
    """The table of a TOML file; every way of not being one is a :class:`UsageError` naming the fix
    (``example`` is a path to suggest, e.g. ``configs/quickstart.toml``)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {str(path)!r} not found: pass the path of a TOML file, e.g. {example}")
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text (byte {e.start}): save the config as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: invalid TOML ({e}): fix the syntax") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read it ({e.strerror}): check the path and its permissions") from None


def check_name(name: str, source: str, key: str = "name") -> None:
    """A run name is the default output directory ``runs/<name>``: it must stay one plain component."""
    if not NAME_PATTERN.fullmatch(name):
        raise UsageError(f"{source}: {key} = {name!r} is not a valid run name: use letters, digits and . _ + - "
                         "(no path separators, not empty), e.g. name = \"my_run\"")


def load_config(path: str | Path, overrides: Optional[Mapping[str, Any]] = None) -> Config:
    """Read a TOML config, apply ``overrides`` ({"train.epochs": 3, ...}), validate, return it."""
    raw = load_toml(path, "configs/quickstart.toml")
    return config_from_dict(raw, overrides, source=str(path))


def config_from_dict(
    raw: Mapping[str, Any], overrides: Optional[Mapping[str, Any]] = None, *, source: str = "config"
) -> Config:
    raw = _deep_copy(raw)
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = raw
        for i, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                where = ".".join(parents[:i + 1])
                raise UsageError(f"{source}: cannot set {dotted}: {where} is a value, not a table; "
                                 f"set {where} itself, e.g. --set {where}=...")
        node[leaf] = value
    cfg = build_table(Config, raw, prefix="", source=source)
    validate(cfg, source=source)
    return cfg


def build_table(cls: type, raw: Any, *, prefix: str = "", source: str = "config") -> Any:
    """The dataclass ``cls`` from a parsed TOML table: unknown keys, wrong types, non-finite numbers
    and out-of-range integers are :class:`UsageError`; nested dataclasses are sub-tables."""
    if not isinstance(raw, Mapping):
        raise UsageError(f"{source}: {prefix.rstrip('.') or 'top level'} must be a table: write it as [{prefix.rstrip('.')}]")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = prefix + unknown[0]
        if not prefix and set(unknown) & set(_PERCEPTRON_ONLY) and not set(raw) & set(DEEP_SECTIONS):
            raise UsageError(f"{source} is a perceptron config (key {key!r}): run it with "
                             f"`jaxscale perceptron run {source}`")
        raise UsageError(
            f"{source}: unknown key {key!r}: valid keys in [{prefix.rstrip('.') or 'top level'}] are "
            + ", ".join(sorted(fields))
        )
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, key=prefix + name, source=source)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, *, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build_table(tp, value, prefix=key + ".", source=source)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(args[0], value, key=key, source=source)
    if origin is tuple:
        (elem, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            value = [value]  # a single P or mean value is a one-element list
        return tuple(_coerce(elem, v, key=f"{key}[{i}]", source=source) for i, v in enumerate(value))
    if origin in (collections.abc.Mapping, dict) or tp is Mapping:
        if not isinstance(value, Mapping):
            raise UsageError(f"{source}: {key} must be a table of overrides, e.g. {key} = {{ channels = [16, 32] }}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{source}: {key} must be an integer, got {value!r}")
        if abs(value) > INT_LIMIT:
            raise UsageError(f"{source}: {key} = {value} is out of range: use a value of magnitude below 2**31")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{source}: {key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise UsageError(f"{source}: {key} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UsageError(f"{source}: {key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # programming error, not user error


def check_choice(source: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"{source}: {key} = {value!r} is not valid: choose one of {', '.join(choices)}")


def validate(cfg: Config, *, source: str = "config") -> None:
    """Checks that need no dataset or model (those happen when they are built)."""
    m, d, t, n, p, c = cfg.model, cfg.data, cfg.train, cfg.norms, cfg.parallel, cfg.checkpoint
    check_name(cfg.name, source)
    check_choice(source, "model.family", m.family, FAMILIES)
    check_choice(source, "model.init", m.init, INITS)
    check_choice(source, "model.conv_impl", m.conv_impl, CONV_IMPLS)
    if not (m.init_factor > 0 and math.isfinite(m.init_factor)):
        raise UsageError(f"{source}: model.init_factor must be a positive number, got {m.init_factor}")
    from jaxscale.data import DATASETS  # local import: keeps `jaxscale.config` light to import

    check_choice(source, "data.dataset", d.dataset, DATASETS)
    if (d.dataset == "npz") != (d.path is not None):
        raise UsageError(f"{source}: data.path goes with data.dataset = 'npz' (your own arrays): "
                         + ("give data.path = 'FILE.npz'" if d.dataset == "npz" else "remove data.path or set data.dataset = 'npz'"))
    if d.augment is not None:
        check_choice(source, "data.augment", d.augment, AUGMENTS)
    if (d.mean is None) != (d.std is None):
        raise UsageError(f"{source}: data.mean and data.std must be given together (or neither, for the protocol defaults)")
    if d.std is not None and (len(d.std) != len(d.mean) or any(s <= 0 for s in d.std)):
        raise UsageError(f"{source}: data.std must be positive and as long as data.mean")
    if d.eval_batch_size <= 0:
        raise UsageError(f"{source}: data.eval_batch_size must be a positive integer, got {d.eval_batch_size}")
    if not t.P:
        raise UsageError(f"{source}: train.P is missing: give the training-set sizes, e.g. P = [256, 512, 1024]")
    if any(P <= 0 for P in t.P):
        raise UsageError(f"{source}: train.P must contain positive integers, got {list(t.P)}")
    if len(set(t.P)) != len(t.P):
        raise UsageError(f"{source}: train.P has duplicates {list(t.P)}: list each size once")
    if list(t.P) != sorted(t.P):
        # the P axis of curves.npz is increasing: analysis indexes it (--min-p) and fits ln P
        raise UsageError(f"{source}: train.P = {list(t.P)} is not increasing: list the sizes in increasing order, "
                         f"e.g. {sorted(t.P)}")
    for key, val in (("train.seeds", t.seeds), ("train.epochs", t.epochs), ("train.batch_size", t.batch_size),
                     ("train.log_points", t.log_points), ("norms.power_iterations", n.power_iterations),
                     ("checkpoint.keep", c.keep)):
        if val <= 0:
            raise UsageError(f"{source}: {key} must be a positive integer, got {val}")
    if t.seed_start < 0:
        raise UsageError(f"{source}: train.seed_start must be >= 0, got {t.seed_start}")
    if not (t.lr > 0 and math.isfinite(t.lr)):
        raise UsageError(f"{source}: train.lr must be a positive number, got {t.lr}")
    if t.weight_decay < 0:
        raise UsageError(f"{source}: train.weight_decay must be >= 0, got {t.weight_decay}")
    check_choice(source, "train.optimizer", t.optimizer, OPTIMIZERS)
    check_choice(source, "train.precision", t.precision, PRECISIONS)
    check_choice(source, "norms.convention", n.convention, CONVENTIONS)
    if n.every < 0:
        raise UsageError(f"{source}: norms.every must be >= 0 (0 = only at logged epochs), got {n.every}")
    check_choice(source, "parallel.ensemble", p.ensemble, ENSEMBLE_STRATEGIES)
    check_choice(source, "parallel.api", p.api, PARALLEL_APIS)
    if p.seeds_per_device < 0:
        raise UsageError(f"{source}: parallel.seeds_per_device must be >= 0 (0 = spread evenly), got {p.seeds_per_device}")
    if p.data < 0:
        raise UsageError(f"{source}: parallel.data must be >= 0 (0 = auto, 1 = no data parallelism), got {p.data}")
    if not (p.memory_limit_gb >= 0 and math.isfinite(p.memory_limit_gb)):
        raise UsageError(f"{source}: parallel.memory_limit_gb must be a number >= 0 (0 = the device's free memory), "
                         f"got {p.memory_limit_gb}")
    if c.every_epochs < 0 or not (c.every_minutes >= 0 and math.isfinite(c.every_minutes)):
        raise UsageError(f"{source}: checkpoint.every_epochs and checkpoint.every_minutes must be >= 0 (0 = off)")


def check_against_dataset(cfg: Config, n_train: int, source: str = "config") -> None:
    too_big = [P for P in cfg.train.P if P > n_train]
    if too_big:
        raise UsageError(
            f"{source}: train.P = {too_big[0]} is larger than the {cfg.data.dataset} training set "
            f"({n_train} images): use P <= {n_train}"
        )


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["train.lr=3e-4", "model.arch.channels=[8,16]"]`` -> dict, values parsed as TOML."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"--set {pair!r}: write it as section.key=value, e.g. --set train.lr=3e-4")
        key, text = pair.split("=", 1)
        try:
            out[key.strip()] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError as e:
            if text.strip()[:1] in ("[", "{", '"', "'"):  # meant as a TOML list/table/string, but broken
                raise UsageError(f"--set {key.strip()}=...: the value is not valid TOML ({e}); fix: write it as "
                                 f"TOML, e.g. --set model.arch.convs=[8,16] or --set data.data_dir='DIR'") from None
            out[key.strip()] = text  # a bare word is a string: --set model.preset=cifar10
    return out


def _deep_copy(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _deep_copy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deep_copy(v) for v in x]
    return x


def _to_plain(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x


def to_toml(cfg: Config) -> str:
    """Serialise a config back to TOML (for the run directory: the exact config that ran)."""
    d = cfg.to_dict()
    lines = [f"name = {_toml_value(d.pop('name'))}", f"description = {_toml_value(d.pop('description'))}"]
    for section, body in d.items():
        lines.append(f"\n[{section}]")
        for k, v in body.items():
            if v is None:
                continue
            if isinstance(v, Mapping):
                if v:
                    lines.append(f"[{section}.{k}]")
                    lines += [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
                continue
            lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(type(v))
