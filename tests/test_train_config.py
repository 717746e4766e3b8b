"""TOML configs and ``--section.key value`` overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nanoseek.train.config import load_config, parse_overrides, parse_value
from nanoseek.train.pretrain import PretrainConfig, main


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_load_config_file_and_overrides(tmp_path: Path) -> None:
    path = _toml(tmp_path, """
[model]
preset = "small"
overrides = {num_hidden_layers = 2}
[train]
steps = 10
tokens = 1e6
[optim]
lr = 1e-3
bias_update_speed = 0.0
[loss]
mtp_weight = 0.2
""")
    cfg = load_config(PretrainConfig, path, [
        "--train.steps", "20", "--optim.lr=2e-3", "--loss.mtp_weight", "[[0, 0.3], [0.5, 0.1]]",
        "--model.overrides.hidden_size", "128", "--train.out-dir", "x/y", "--train.compile",
        "true"])
    assert cfg.model.preset == "small"
    assert cfg.model.overrides == {"num_hidden_layers": 2, "hidden_size": 128}
    assert cfg.train.steps == 20 and cfg.train.tokens == 1_000_000
    assert isinstance(cfg.train.tokens, int)
    assert cfg.optim.lr == 2e-3 and cfg.optim.bias_update_speed == 0.0
    assert cfg.loss.mtp_weight == [[0.0, 0.3], [0.5, 0.1]]
    assert cfg.train.out_dir == "x/y" and cfg.train.compile is True
    assert cfg.train.micro_batch == 4  # default kept
    assert cfg.train.out_dir != PretrainConfig().train.out_dir


def test_defaults_follow_deepseek_v3() -> None:
    cfg = PretrainConfig()
    assert (cfg.optim.beta1, cfg.optim.beta2, cfg.optim.weight_decay) == (0.9, 0.95, 0.1)
    assert cfg.optim.grad_clip == 1.0 and cfg.optim.schedule == "v3"
    assert cfg.optim.bias_update_speed[0] == [0.0, 0.001]
    assert cfg.loss.balance_alpha == 1e-4 and cfg.model.init_std == 0.006
    assert cfg.loss.mtp_weight == [[0.0, 0.3], [0.676, 0.1]]


@pytest.mark.parametrize(("args", "message"), [
    (["--train.stepz", "3"], r"train.stepz: unknown key; valid keys here: out_dir, seed, steps"),
    (["--train.steps", "three"], "train.steps: expected an integer"),
    (["--train.steps", "2.5"], "train.steps: expected an integer"),
    (["--optim.lr", "true"], "optim.lr: expected a number"),
    (["--train.compile", "maybe"], "train.compile: expected true or false"),
    (["--optimizer.lr", "1"], "optimizer: unknown key"),
    (["train.steps", "3"], "expected --section.key value"),
    (["--train.steps"], "missing value"),
])
def test_bad_overrides(args: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(PretrainConfig, None, args)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        load_config(PretrainConfig, tmp_path / "missing.toml")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(PretrainConfig, _toml(tmp_path, "[train\nsteps = 1"))
    with pytest.raises(ValueError, match="train: expected a table"):
        load_config(PretrainConfig, _toml(tmp_path, "train = 3"))


def test_parse_values() -> None:
    assert parse_value("3") == 3 and parse_value("3e-4") == 3e-4
    assert parse_value("hello") == "hello" and parse_value('"a b"') == "a b"
    assert parse_overrides(["--a.b=1", "--c", "x"]) == [("a.b", 1), ("c", "x")]


def test_main_print_config_and_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--print-config", "--train.steps", "7"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["steps"] == 7
    assert main(["--train.bogus", "1"]) == 2
    assert "train.bogus: unknown key" in capsys.readouterr().err


def test_a_partial_section_keeps_the_defaults_its_stage_declares(tmp_path) -> None:
    from nanoseek.train.sft import SFTConfig

    (tmp_path / "sft.toml").write_text("[train]\nsteps = 7\n[optim]\nwarmup_steps = 3\n")
    cfg = load_config(SFTConfig, tmp_path / "sft.toml", ["--model.preset", "tiny"])
    default = SFTConfig()
    assert (cfg.train.steps, cfg.train.out_dir) == (7, default.train.out_dir)
    assert (cfg.optim.warmup_steps, cfg.optim.lr) == (3, default.optim.lr)
    assert cfg.model.init_std == default.model.init_std
