"""Property test of the command line: any malformed config value, section, key, file or flag of
`jaxscale run`, `perceptron run` and `analyze` exits with code 2 and exactly one line on stderr (no
traceback), and leaves the output directory byte for byte as it was.

The default suite runs a bounded number of examples (~30 s); `pytest -m slow` runs many more."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import math
import typing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxscale.cli import main
from jaxscale.config import Config
from jaxscale.perceptron.config import PerceptronConfig
from jaxscale.results import Curves

BASE = {"name": "fuzz", "model": {"family": "cnn", "preset": "tiny"}, "data": {"dataset": "digits"},
        "train": {"P": [40], "seeds": 1, "epochs": 1, "batch_size": 32, "log_points": 1}}
#: keys whose every string is a valid value (free text, paths): only a wrong type is malformed there
FREE_TEXT = {"description", "data.data_dir"}


def _leaf_types(cls: type, prefix: str = "") -> dict[str, typing.Any]:
    """{dotted key: annotated type} of every leaf of a config dataclass."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(_leaf_types(tp, prefix + f.name + "."))
        else:
            out[prefix + f.name] = tp
    return out


DEEP_KEYS = _leaf_types(Config)
PERCEPTRON_KEYS = _leaf_types(PerceptronConfig)


def _kind(tp) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    tp = args[0] if typing.get_origin(tp) in (typing.Union, __import__("types").UnionType) else tp
    origin = typing.get_origin(tp)
    if origin is tuple:
        return "list"
    if origin is not None or tp is typing.Mapping:
        return "table"
    return {int: "int", float: "float", str: "str", bool: "bool"}[tp]


wrong_type = {
    "int": st.one_of(st.text(max_size=4), st.lists(st.integers(), max_size=2), st.booleans(),
                     st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not float(x).is_integer())),
    "float": st.one_of(st.text(max_size=4), st.booleans(), st.lists(st.floats(), min_size=1, max_size=2)),
    "str": st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.lists(st.text(max_size=3), max_size=2)),
    "bool": st.one_of(st.integers(), st.text(max_size=4)),
    "list": st.one_of(st.text(max_size=4), st.booleans(), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)),
    "table": st.one_of(st.integers(), st.text(max_size=4), st.lists(st.integers(), max_size=2)),
}
out_of_range = {
    # every integer and number key of both configs is >= 0 (most > 0); 2**31 overflows the programs
    "int": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**31, max_value=2**62)),
    "float": st.sampled_from([math.nan, math.inf, -math.inf]),
}


@st.composite
def malformed_value(draw, keys: dict):
    key = draw(st.sampled_from(sorted(keys)))
    kind = _kind(keys[key])
    choices = [wrong_type[kind]]
    if kind in out_of_range and key not in ("data.mean",):
        choices.append(out_of_range[kind])
    if kind == "str" and key not in FREE_TEXT:
        choices.append(st.sampled_from(["", "../x", "no such choice", "a/b"]))
    return key, draw(st.one_of(*choices))


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.encode("unicode_escape").decode().replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f'"{k}" = {_toml_value(x)}' for k, x in v.items()) + "}"
    raise TypeError(type(v))


def _toml(raw: dict) -> str:
    top = [f"{k} = {_toml_value(v)}" for k, v in raw.items() if not isinstance(v, dict)]
    body = []
    for k, v in raw.items():
        if isinstance(v, dict):
            body.append(f"[{k}]")
            body += [f'"{kk}" = {_toml_value(vv)}' for kk, vv in v.items()]
    return "\n".join(top + body) + "\n"


def _set(raw: dict, dotted: str, value) -> dict:
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    *parents, leaf = dotted.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return raw


def _positive_ints(text: str) -> bool:
    try:
        vals = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        return False
    return bool(vals) and all(v > 0 for v in vals)


identifier = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)


@st.composite
def bad_deep_config(draw):
    """(file bytes, extra flags) of a `jaxscale run` whose config or flags are malformed."""
    how = draw(st.sampled_from(["value", "value_flag", "unknown_key", "section", "bytes", "flag"]))
    raw, flags = BASE, []
    if how == "value":
        key, value = draw(malformed_value(DEEP_KEYS))
        raw = _set(BASE, key, value)
    elif how == "value_flag":
        key, value = draw(malformed_value({k: v for k, v in DEEP_KEYS.items() if _kind(v) != "table"}))
        flags = ["--set", f"{key}={_toml_value(value)}"]
    elif how == "unknown_key":
        section = draw(st.sampled_from(["", "model.", "data.", "train.", "norms.", "parallel.", "checkpoint."]))
        name = draw(identifier.filter(lambda n: section + n not in DEEP_KEYS and n not in BASE))
        raw = _set(BASE, section + name, 1)
    elif how == "section":
        raw = {**BASE, draw(st.sampled_from(["model", "data", "train", "norms"])): draw(wrong_type["table"])}
    elif how == "bytes":
        text = _toml(BASE).encode()
        junk = draw(st.sampled_from([b"\xff\xfe", b"[train\n", b"= =\n", b"P = [1,\n", b"\x00"]))
        at = draw(st.integers(0, len(text)))
        return text[:at] + junk + text[at:], []
    else:
        flag = draw(st.sampled_from(["--seeds", "--epochs", "--P", "--set"]))
        value = draw(st.one_of(st.sampled_from(["0", "-3", "x", "", "1,,x", "nan", "1e99", "=", "train.zz=1"]),
                               st.text("abc.=-,0123456789 ", max_size=8)))
        if flag == "--set" and value in ("", "0", "-3", "x", "1,,x", "nan", "1e99"):
            value = "nosuchsection.key=" + value
        if flag == "--P" and _positive_ints(value):
            value = value + ",0"  # a list of positive sizes could be valid: make it not
        if flag in ("--seeds", "--epochs") and value.strip().isdigit() and int(value) > 0:
            value = "-" + value
        flags = [f"{flag}={value}"]
    return _toml(raw).encode(), flags


@st.composite
def bad_perceptron_config(draw):
    base = {"name": "fuzz", "N": 20, "alpha": [1.0], "seeds": 1, "steps": 2, "log_points": 2}
    how = draw(st.sampled_from(["value", "unknown_key"]))
    if how == "value":
        key, value = draw(malformed_value(PERCEPTRON_KEYS))
        return _toml({**base, key: value}).encode()
    name = draw(identifier.filter(lambda n: n not in PERCEPTRON_KEYS))
    return _toml({**base, name: 1}).encode()


bad_analyze_flags = st.one_of(
    st.tuples(st.just("--bootstrap"), st.one_of(st.integers(max_value=-1), st.integers(min_value=100_001))),
    st.tuples(st.just("--seed"), st.integers(max_value=-1)),
    st.tuples(st.just("--grid"), st.one_of(st.sampled_from(["1,0,5", "0,1,2", "0,1,1e9", "a,b,c", "0,1", "nan,1,5",
                                                             "0,1,20000"]), st.text("ab,", max_size=5))),
    st.tuples(st.just("--x-left"), st.sampled_from(["-1", "0", "nan", "inf", "x", ""])),
    st.tuples(st.just("--min-p"), st.one_of(st.integers(max_value=-1), st.integers(min_value=3))),
    st.tuples(st.just("--gamma2-start"), st.integers(min_value=3)),
    st.tuples(st.just("--norm"), identifier.map(lambda n: "zz" + n)),
    st.tuples(st.just("--entry"), st.integers()),
)


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _check(argv: list[str], root: Path) -> None:
    before = _digest(root)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    lines = err.getvalue().strip().splitlines()
    assert rc == 2, (argv, err.getvalue())
    assert len(lines) == 1 and lines[0].startswith("jaxscale: error: "), (argv, lines)
    assert "Traceback" not in err.getvalue()
    assert _digest(root) == before, argv


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    out = root / "out"
    out.mkdir()
    (out / "notes.txt").write_text("a user's file")
    run = root / "analysis_run"
    run.mkdir()
    te = np.linspace(0.5, 0.2, 24).reshape(1, 1, 24) + np.zeros((3, 2, 1)) + np.arange(3)[:, None, None] * 0.01
    logn = np.log(np.arange(1, 25, dtype=float)) + np.zeros((3, 2, 1))
    Curves(P=np.array([100, 200, 400]), seeds=np.arange(2), epochs=np.arange(1, 25),
           values={"train_error": te, "test_error": te, "train_loss": te, "test_loss": te,
                   "log_spectral_complexity": logn}).save(run / "curves.npz")
    return root


def _fuzz(workspace: Path, data) -> None:
    kind = data.draw(st.sampled_from(["run", "perceptron", "analyze"]))
    cfg = workspace / "config.toml"
    if kind == "run":
        text, flags = data.draw(bad_deep_config())
        cfg.write_bytes(text)
        _check(["run", str(cfg), "--out", str(workspace / "out"), "--quiet", *flags], workspace)
    elif kind == "perceptron":
        cfg.write_bytes(data.draw(bad_perceptron_config()))
        _check(["perceptron", "run", str(cfg), "--out", str(workspace / "out"), "--quiet"], workspace)
    else:
        flag, value = data.draw(bad_analyze_flags)
        _check(["analyze", str(workspace / "analysis_run"), "--no-plots", f"{flag}={value}"], workspace)


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_input_is_one_line_and_changes_nothing(workspace, data):
    _fuzz(workspace, data)


@pytest.mark.slow
@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_input_is_one_line_and_changes_nothing_long(workspace, data):
    _fuzz(workspace, data)
