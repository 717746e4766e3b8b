"""Training, API and deployment cost (nanoseek.costmodel) and the ``nanoseek cost`` stage."""

from __future__ import annotations

import json

import pytest

from nanoseek import cost, costmodel
from nanoseek.cli import main as cli_main
from nanoseek.config import get_preset
from nanoseek.costmodel import Workload, api_cost, main, parse_count, training_cost

V3 = get_preset("deepseek-v3")


# -------------------------------------------------------------------- DeepSeek-V3 Table 1
def test_v3_published_table_reproduced_exactly() -> None:
    t = costmodel.v3_published_table()
    assert t["gpu_hours"] == {"pre-training": 2_664_000, "context extension": 119_000,
                              "post-training": 5_000, "total": 2_788_000}
    assert t["dollars"] == {"pre-training": 5_328_000, "context extension": 238_000,
                            "post-training": 10_000, "total": 5_576_000}
    assert t["matches_published"] is True
    assert t["inputs"]["pretraining_tokens"] == 14_800_000_000_000
    assert t["inputs"]["gpu_hours_per_trillion_tokens"] == 180_000
    # "3.7 days on 2048 H800 per trillion tokens"
    assert round(t["pretraining_days_on_2048_gpus"] / 14.8, 2) == 3.66


def test_v3_implied_mfu_plausible_and_fp8_half_of_bf16() -> None:
    mfu = costmodel.v3_published_table()["implied_mfu"]
    assert 0.35 < mfu["bf16"] < 0.5
    assert mfu["fp8"] == pytest.approx(mfu["bf16"] / 2, rel=1e-3)
    assert mfu["bf16_with_mtp"] > mfu["bf16"]
    tps = 1e12 / (180_000 * 3600)
    assert mfu["bf16"] == pytest.approx(cost.train_flops_per_token(V3, 4096) * tps / 989.5e12)


def test_mfu_round_trip_gives_published_hours() -> None:
    implied = costmodel.v3_published_table()["implied_mfu"]
    for precision in ("bf16", "fp8"):
        c = training_cost(V3, parse_count("14.8T"), "h800", mfu=implied[precision],
                          precision=precision, price_per_hour=2)
        assert c.gpu_hours == pytest.approx(2_664_000, rel=1e-9)
        assert c.dollars == pytest.approx(5_328_000, rel=1e-9)
        assert c.basis == "mfu" and c.mfu == implied[precision]


def test_training_cost_forward_arithmetic() -> None:
    config = get_preset("tiny-llama")
    c = training_cost(config, 10**9, "a100", mfu=0.5, price_per_hour=1.5, seq_len=128,
                      num_gpus=4)
    fpt = cost.train_flops_per_token(config, 128)
    assert c.flops_per_token == fpt and c.total_flops == fpt * 1e9
    assert c.tokens_per_second_per_gpu == pytest.approx(0.5 * 312e12 / fpt)
    assert c.gpu_hours == pytest.approx(fpt * 1e9 / (0.5 * 312e12) / 3600)
    assert c.dollars == pytest.approx(1.5 * c.gpu_hours)
    assert c.wall_clock_days == pytest.approx(c.gpu_hours / 4 / 24)
    measured = training_cost(config, 10**9, "a100", seq_len=128,
                             tokens_per_second=c.tokens_per_second_per_gpu)
    assert measured.mfu == pytest.approx(0.5) and measured.basis == "tokens_per_second"
    with_mtp = training_cost(V3, 10**12, "h800", mfu=0.4, include_mtp=True)
    assert with_mtp.flops_per_token == cost.train_flops_per_token(V3, 4096, True)


def test_cpu_hardware_is_measured() -> None:
    hw = costmodel.get_hardware("cpu")
    assert set(hw.peak_tflops) == {"fp32"} and hw.peak_tflops["fp32"] > 0
    c = training_cost(get_preset("tiny"), 10**6, hw, tokens_per_second=1000.0)
    assert c.precision == "fp32" and c.gpu_hours == pytest.approx(10**6 / 1000 / 3600)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"hardware": "tpu9", "mfu": 0.4}, "gpu: unknown"),
    ({"mfu": 0.4, "tokens_per_second": 10.0}, "exactly one"),
    ({}, "exactly one"),
    ({"mfu": 40.0}, "mfu: a fraction"),
    ({"mfu": -0.1}, "mfu: must be > 0"),
    ({"mfu": 0.4, "tokens": -5}, "tokens: must be > 0"),
    ({"hardware": "a100", "mfu": 0.4, "precision": "fp8"}, "precision: a100 has no 'fp8'"),
    ({"mfu": 0.4, "price_per_hour": -1.0}, "price_per_hour"),
])
def test_training_cost_bad_input(kwargs: dict, match: str) -> None:
    kwargs = {"tokens": 10**9, "hardware": "h800"} | kwargs
    with pytest.raises(ValueError, match=match):
        training_cost(V3, kwargs.pop("tokens"), kwargs.pop("hardware"), **kwargs)


# -------------------------------------------------------------------- parsing
@pytest.mark.parametrize(("text", "value"), [
    ("14.8T", 14_800_000_000_000), ("500K", 500_000), ("1.5m", 1_500_000), ("2B", 2 * 10**9),
    ("1e9", 10**9), ("1,000", 1000), ("0", 0), (42, 42),
])
def test_parse_count(text: str, value: int) -> None:
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["-1K", "abc", "1.2X", "", "T", "nan", "inf"])
def test_parse_count_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="tokens"):
        parse_count(text)


# -------------------------------------------------------------------- serving
def test_api_cost_hand_computed() -> None:
    w = Workload(prompt_tokens=1_000_000, output_tokens=1_000_000, cache_hit=0.5, requests=1)
    assert api_cost(w, "deepseek-r1") == pytest.approx(0.5 * 0.14 + 0.5 * 0.55 + 2.19)
    assert api_cost(w, "deepseek-v3") == pytest.approx(0.5 * 0.07 + 0.5 * 0.27 + 1.10)
    assert api_cost(w, "o1") == pytest.approx(0.5 * 7.5 + 0.5 * 15 + 60)
    # 1,000 requests of 2,000 prompt (25% cached) + 500 output tokens on R1
    w = Workload(2000, 500, cache_hit=0.25, requests=1000)
    b = costmodel.api_cost_breakdown(w, "deepseek-r1")
    assert b["cache_hit"] == pytest.approx(500_000 * 0.14 / 1e6)
    assert b["cache_miss"] == pytest.approx(1_500_000 * 0.55 / 1e6)
    assert b["output"] == pytest.approx(500_000 * 2.19 / 1e6)
    assert b["total"] == pytest.approx(0.07 + 0.825 + 1.095)


def test_provider_table_has_documented_prices() -> None:
    p = costmodel.PROVIDERS
    assert (p["deepseek-r1"].cache_hit, p["deepseek-r1"].cache_miss, p["deepseek-r1"].output) \
        == (0.14, 0.55, 2.19)
    assert (p["deepseek-v3"].cache_hit, p["deepseek-v3"].cache_miss, p["deepseek-v3"].output) \
        == (0.07, 0.27, 1.10)
    assert (p["o1"].cache_miss, p["o1"].output) == (15.0, 60.0)
    assert all(x.date and x.source for x in p.values())


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"cache_hit": 1.5}, "cache_hit"), ({"cache_hit": -0.1}, "cache_hit"),
    ({"prompt_tokens": -1}, "prompt_tokens"), ({"requests": -2}, "requests"),
])
def test_workload_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Workload(**({"prompt_tokens": 10, "output_tokens": 10} | kwargs))
    with pytest.raises(ValueError, match="provider: unknown"):
        api_cost(Workload(1, 1), "gpt-9")


def test_deployment_cost_per_million() -> None:
    # DeepSeek's production decode: ~14.8k output tok/s per H800 node, 8 GPUs at $2/h
    assert costmodel.deployment_cost_per_million(14_800, 16) == pytest.approx(
        16 / (14_800 * 3600) * 1e6)
    assert costmodel.deployment_cost_per_million(1000, 3.6) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="tokens_per_second"):
        costmodel.deployment_cost_per_million(0, 1)


def test_markdown_tables() -> None:
    md = costmodel.v3_markdown()
    assert "| total | 2,788K | 2,788K | $5.576M |" in md
    assert md.count("\n") > 6
    c = training_cost(V3, 10**12, "h800", mfu=0.4)
    assert costmodel.training_markdown([c]).splitlines()[2].startswith("| 1,000B | h800 |")
    assert "deepseek-r1" in costmodel.api_markdown(Workload(1000, 100, 0.5))


# -------------------------------------------------------------------- command line
def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_v3_json(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(capsys, ["v3"])
    assert out["gpu_hours"]["total"] == 2_788_000 and out["dollars"]["total"] == 5_576_000
    assert cli_main(["cost", "v3"]) == 0
    assert "5,576,000" in capsys.readouterr().out


def test_cli_train_json(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(capsys, ["train", "--preset", "deepseek-v3", "--tokens", "14.8T", "--gpu",
                         "h800", "--gpu-hours-per-trillion", "180K", "--price", "2"])
    assert out["gpu_hours"] == 2_664_000 and out["dollars"] == 5_328_000
    out = _json(capsys, ["train", "--preset", "deepseek-v3", "--tokens", "14.8T",
                         "--mfu", str(out["mfu"])])
    assert out["gpu_hours"] == pytest.approx(2_664_000)
    assert main(["train", "--preset", "tiny", "--tokens", "1M", "--gpu", "cpu",
                 "--tokens-per-second", "1.5K"]) == 0
    assert "fp32" in capsys.readouterr().out


def test_cli_api_and_deploy_json(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(capsys, ["api", "--prompt-tokens", "1M", "--cache-hit", "0.5",
                         "--output-tokens", "1M", "--provider", "deepseek-r1"])
    assert list(out["providers"]) == ["deepseek-r1"]
    assert out["providers"]["deepseek-r1"]["cost"]["total"] == pytest.approx(2.535)
    out = _json(capsys, ["api", "--prompt-tokens", "100", "--output-tokens", "10"])
    assert set(out["providers"]) == set(costmodel.PROVIDERS)
    out = _json(capsys, ["deploy", "--tokens-per-second", "1K", "--price-per-hour", "3.6"])
    assert out["dollars_per_million_tokens"] == pytest.approx(1.0)
    assert set(_json(capsys, ["hardware"])) >= {"h800", "h100", "h200", "a100", "cpu"}
    for argv in (["api", "--prompt-tokens", "1", "--output-tokens", "1"],
                 ["deploy", "--tokens-per-second", "10", "--price-per-hour", "1"]):
        assert main(argv) == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--preset", "deepseek-v3", "--tokens", "1T", "--gpu", "tpu", "--mfu", "0.4"],
     "gpu: unknown"),
    (["train", "--preset", "deepseek-v3", "--tokens=-1T", "--mfu", "0.4"], "must be >= 0"),
    (["train", "--preset", "nope", "--tokens", "1T", "--mfu", "0.4"], "unknown preset"),
    (["train", "--preset", "tiny", "--tokens", "1T", "--mfu", "3"], "mfu"),
    (["api", "--prompt-tokens", "1", "--output-tokens", "1", "--cache-hit", "1.2"],
     "cache_hit"),
    (["api", "--prompt-tokens", "1", "--output-tokens", "1", "--provider", "claude"],
     "provider: unknown"),
    (["deploy", "--tokens-per-second", "0", "--price-per-hour", "1"], "tokens_per_second"),
])
def test_cli_bad_input_exits_2(capsys: pytest.CaptureFixture[str], argv: list[str],
                               message: str) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
