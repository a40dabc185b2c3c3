"""Config loading and validation: every user mistake is one line naming the key, and exit code 2."""

import pytest

from jaxscale.cli import main
from jaxscale.config import Config, config_from_dict, load_config, parse_overrides, to_toml
from jaxscale.errors import UsageError

GOOD = {"name": "t", "model": {"family": "cnn", "preset": "digits"}, "data": {"dataset": "digits"},
        "train": {"P": [64, 128], "seeds": 2, "epochs": 3}}


def _with(section, key, value):
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in GOOD.items()}
    raw.setdefault(section, {})[key] = value
    return raw


def test_good_config_roundtrips_through_toml(tmp_path):
    cfg = config_from_dict(GOOD)
    assert cfg.train.P == (64, 128) and cfg.seed_values() == (0, 1)
    p = tmp_path / "c.toml"
    p.write_text(to_toml(cfg))
    assert load_config(p) == cfg


@pytest.mark.parametrize(
    "section,key,value,needle",
    [
        ("train", "lrr", 1e-3, "unknown key 'train.lrr'"),
        ("train", "lr", "fast", "train.lr must be a number"),
        ("train", "lr", -1.0, "train.lr must be a positive number"),
        ("train", "epochs", 0, "train.epochs must be a positive integer"),
        ("train", "epochs", 2.5, "train.epochs must be an integer"),
        ("train", "P", [0, 5], "train.P must contain positive integers"),
        ("train", "optimizer", "adagrad", "train.optimizer = 'adagrad' is not valid"),
        ("model", "family", "mlp", "model.family = 'mlp' is not valid: choose one of cnn, resnet, vit"),
        ("data", "dataset", "imagenet", "data.dataset = 'imagenet' is not valid"),
        ("norms", "convention", "frobenius", "norms.convention"),
    ],
)
def test_config_errors_name_the_key(section, key, value, needle):
    with pytest.raises(UsageError) as e:
        config_from_dict(_with(section, key, value))
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_section():
    with pytest.raises(UsageError, match="unknown key 'trian'"):
        config_from_dict({**GOOD, "trian": {}})


def test_missing_P():
    raw = {**GOOD, "train": {"seeds": 1}}
    with pytest.raises(UsageError, match="train.P is missing"):
        config_from_dict(raw)


def test_overrides_parse_as_toml():
    assert parse_overrides(["train.lr=3e-4", "model.preset=cifar10", "train.P=[1,2]"]) == {
        "train.lr": 3e-4, "model.preset": "cifar10", "train.P": [1, 2]}
    # a value meant as TOML but broken is an error, not silently a string (a path with a CR, say)
    for text in ('["x\r"]', "[1, 2", "{a = 1", '"unterminated'):
        with pytest.raises(UsageError, match="the value is not valid TOML"):
            parse_overrides([f"data.data_dir={text}"])


def _write(tmp_path, text):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    return str(p)


BASE_TOML = """
name = "t"
[model]
family = "cnn"
preset = "digits"
[data]
dataset = "digits"
[train]
P = [64]
seeds = 1
epochs = 1
"""


@pytest.mark.parametrize(
    "text,argv_extra,needle",
    [
        (BASE_TOML.replace("epochs = 1", "epochs = 1\nlrr = 3"), [], "unknown key 'train.lrr'"),
        (BASE_TOML.replace("epochs = 1", "epochs = -4"), [], "train.epochs must be a positive integer"),
        (BASE_TOML.replace('family = "cnn"', 'family = "rnn"'), [], "model.family = 'rnn'"),
        (BASE_TOML.replace('preset = "digits"', 'preset = "huge"'), [], "huge"),
        (BASE_TOML.replace("P = [64]", "P = [100000]"), [], "larger than the digits training set"),
        (BASE_TOML, ["--P", "1,x"], "--P"),
        (BASE_TOML, ["--set", "train.lr"], "--set"),
        (BASE_TOML, ["--bogus-flag"], "unrecognized arguments"),
        ("name = [", [], "invalid TOML"),
    ],
)
def test_cli_config_errors_exit_2_with_one_line(tmp_path, capsys, text, argv_extra, needle):
    rc = main(["run", _write(tmp_path, text), "--out", str(tmp_path / "out"), "--quiet", *argv_extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("jaxscale: error:") and needle in err, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "curves.npz").exists()


def test_missing_config_file(tmp_path, capsys):
    rc = main(["run", str(tmp_path / "nope.toml")])
    assert rc == 2
    assert "not found" in capsys.readouterr().err


def test_every_shipped_config_is_valid():
    from pathlib import Path

    configs = [p for p in sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))
               if p.stem != "perceptron"]  # the perceptron has its own config type
    assert len(configs) >= 11
    for p in configs:
        cfg = load_config(p)
        assert isinstance(cfg, Config) and cfg.name == p.stem
