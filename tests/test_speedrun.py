"""``nanoseek speedrun``: presets, markers and resume planning, the ETA clock, and (slow) a
miniature end-to-end run whose report, models and printed commands are checked."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from nanoseek.speedrun import presets
from nanoseek.speedrun import run as speedrun
from nanoseek.speedrun.presets import STAGE_NAMES, get_preset
from nanoseek.speedrun.report import SECTIONS
from nanoseek.speedrun.stages import MODELS, build_config, nest

# -------------------------------------------------------------------- fast units


def test_every_preset_builds_valid_stage_configs():
    from nanoseek.distill.run import DistillConfig
    from nanoseek.rl.grpo import GRPOConfig
    from nanoseek.train.pretrain import PretrainConfig
    from nanoseek.train.sft import SFTConfig

    for preset in presets.PRESETS.values():
        build_config(PretrainConfig, preset.pretrain)
        build_config(SFTConfig, preset.sft)
        build_config(GRPOConfig, preset.grpo)
        build_config(DistillConfig, preset.distill)
        assert set(preset.expected_s) == set(STAGE_NAMES), preset.name
        assert preset.corpus and preset.eval_problems > 0


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_worked_solution_fits_the_generation_budgets(name, tmp_path):
    """GRPO rollouts, rejection samples and eval answers cut off before the longest right
    answer score 0 (GRPO then learns to avoid it). A tokenizer trained on the task alone
    merges more than the speedrun's (whose corpus has prose too), hence the 25% margin."""
    from nanoseek.data.tasks import get_task
    from nanoseek.rl.grpo import DataSection, solutions_too_long
    from nanoseek.tokenizer import train_tokenizer

    p = get_preset(name)
    problems = get_task(p.task)(1000, seed=5, **p.task_args)
    (tmp_path / "c.txt").write_text("\n\n".join(q.text() for q in problems))
    tok = train_tokenizer([tmp_path / "c.txt"], vocab_size=p.vocab_size)
    longest = solutions_too_long(problems, tok, 10**6, DataSection(template="chat"))[1]
    for budget in (p.grpo["grpo.max_new_tokens"], p.sample["max_tokens"], p.eval_max_tokens):
        assert longest * 1.25 <= budget, (name, longest, budget)


def test_report_warns_when_grpo_cut_off_reference_solutions(tmp_path):
    from nanoseek.speedrun.report import Report, sec_grpo

    (tmp_path / "grpo").mkdir()
    records = [{"step": 0, "solutions_too_long": 3, "longest_solution": 90},
               {"step": 1, "reward": 0.5, "length_mean": 60.0},
               {"step": 1, "eval_greedy": 0.5, "eval_pass@1": 0.4, "eval_length": 60.0}]
    path = tmp_path / "grpo" / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    text = sec_grpo(Report(tmp_path, get_preset("cpu")))
    assert "**Warning:** 3 reference solutions are longer than the 128-token rollouts" in text
    path.write_text("".join(json.dumps({**r, "solutions_too_long": 0}) + "\n"
                            for r in records[:1]) + "".join(json.dumps(r) + "\n"
                                                          for r in records[1:]))
    assert "Warning" not in sec_grpo(Report(tmp_path, get_preset("cpu")))


def test_unknown_preset_and_bad_override_name_the_fix():
    with pytest.raises(ValueError, match="choose one of"):
        get_preset("tpu")
    from nanoseek.train.pretrain import PretrainConfig

    with pytest.raises(ValueError, match=r"train\.stepz"):
        build_config(PretrainConfig, {"train.stepz": 3})


def test_nest():
    assert nest({"a.b": 1, "a.c.d": 2, "e": 3}) == {"a": {"b": 1, "c": {"d": 2}}, "e": 3}


def _mark(run_dir: Path, *stages: str) -> None:
    for stage in stages:
        speedrun.write_marker(run_dir, stage, {"stage": stage, "seconds": 1.0, "summary": {}})


def test_plan_skips_done_stages_and_reruns_everything_after_the_first_missing(tmp_path):
    plan = speedrun.make_plan(tmp_path, force=False, start=None)
    assert plan.run == list(STAGE_NAMES) and plan.skip == []
    _mark(tmp_path, "corpus", "tokenizer", "data", "sft")
    plan = speedrun.make_plan(tmp_path, force=False, start=None)
    assert plan.skip == ["corpus", "tokenizer", "data"]
    assert plan.run[0] == "pretrain" and "sft" in plan.run  # sft's input changes: redo it
    _mark(tmp_path, *STAGE_NAMES)
    assert speedrun.make_plan(tmp_path, force=False, start=None).run == ["report"]
    assert speedrun.make_plan(tmp_path, force=False, start="grpo").run[0] == "grpo"
    assert speedrun.make_plan(tmp_path, force=True, start=None).skip == []


def test_clear_stage_removes_outputs_only_when_fresh(tmp_path):
    _mark(tmp_path, "sft")
    (tmp_path / "sft" / "model").mkdir(parents=True)
    speedrun.clear_stage(tmp_path, "sft", fresh=False)
    assert speedrun.read_marker(tmp_path, "sft") is None and (tmp_path / "sft").is_dir()
    speedrun.clear_stage(tmp_path, "sft", fresh=True)
    assert not (tmp_path / "sft").exists()


def test_marker_write_is_atomic_and_torn_markers_count_as_missing(tmp_path):
    _mark(tmp_path, "corpus")
    assert speedrun.read_marker(tmp_path, "corpus")["seconds"] == 1.0
    assert [p.name for p in (tmp_path / ".stages").iterdir()] == ["corpus.json"]
    speedrun.marker_path(tmp_path, "data").write_text('{"stage": "da')
    assert speedrun.read_marker(tmp_path, "data") is None


def test_run_dir_of_another_preset_is_refused(tmp_path):
    (tmp_path / "speedrun.json").write_text(json.dumps({"preset": {"name": "ci"}}))
    _mark(tmp_path, "corpus")
    with pytest.raises(ValueError, match="--force"):
        speedrun.check_run_dir(tmp_path, get_preset("cpu"))
    speedrun.check_run_dir(tmp_path, get_preset("ci"))


def test_clock_eta_uses_expected_times_then_refines():
    preset = get_preset("cpu")
    clock = speedrun.Clock(preset)
    later = ["grpo", "sample"]
    eta = clock.eta("sft", 0.0, None, later)
    assert eta == pytest.approx(sum(preset.expected(s) for s in ("sft", *later)))
    assert clock.eta("sft", 30.0, 0.5, later) == pytest.approx(
        30.0 + sum(preset.expected(s) for s in later))
    clock.finished("pretrain", 2 * preset.expected("pretrain"))  # this machine is 2x slower
    assert 1.5 < clock.scale < 2.0
    assert clock.eta("sft", 0.0, None, []) == pytest.approx(preset.expected("sft") * clock.scale)


def test_stage_fraction_reads_the_metrics_tail(tmp_path):
    preset = get_preset("ci")
    (tmp_path / "sft").mkdir()
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in range(1, 6)] + ['{"step": 9']
    (tmp_path / "sft" / "metrics.jsonl").write_text("\n".join(lines))
    total = preset.sft["train.steps"]
    assert speedrun.stage_fraction(tmp_path, preset, "sft") == pytest.approx(5 / total)
    assert speedrun.stage_fraction(tmp_path, preset, "eval") is None


def test_bad_from_stage_is_refused(tmp_path):
    with pytest.raises(SystemExit):  # argparse choices
        speedrun.main(["--preset", "ci", "--out", str(tmp_path), "--from", "nope"])
    with pytest.raises(ValueError, match="not a stage"):
        speedrun.run_speedrun(get_preset("ci"), tmp_path, start="nope")


# -------------------------------------------------------------------- the miniature run


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory):
    """One ``--preset ci`` speedrun (every stage, tiny sizes), shared by the slow tests."""
    import contextlib

    run_dir = tmp_path_factory.mktemp("speedrun") / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = speedrun.main(["--preset", "ci", "--out", str(run_dir), "--quiet"])
    return run_dir, code, out.getvalue()


@pytest.mark.slow
def test_mini_speedrun_writes_every_stage_and_the_report(mini_run):
    run_dir, code, printed = mini_run
    assert code == 0, printed[-3000:]
    for stage in STAGE_NAMES:
        marker = speedrun.read_marker(run_dir, stage)
        assert marker is not None and marker["status"] == "done", stage
    report = (run_dir / "report.md").read_text()
    headings = re.findall(r"^## (.+)$", report, flags=re.M)
    assert headings == list(SECTIONS)
    for name in MODELS:
        assert f"| {name} |" in report  # one evaluation row per stage's model
    for png in ("loss.png", "expert_load.png", "balance.png", "grpo.png", "accuracy.png"):
        assert (run_dir / png).stat().st_size > 1000, png
    assert "V3" in report and "per 1M" in report
    assert "fallible teacher" in report and "SFT chats)" in report  # the ci preset's slips


@pytest.mark.slow
def test_mini_speedrun_models_load_and_printed_commands_work(mini_run, monkeypatch, capsys):
    import torch

    from nanoseek.checkpoint import load_pretrained
    from nanoseek.tokenizer import Tokenizer

    run_dir, code, printed = mini_run
    assert code == 0
    for _, (model_dir, _) in MODELS.items():
        path = run_dir / model_dir
        model = load_pretrained(path, dtype=torch.float32)
        assert Tokenizer.from_pretrained(path).vocab_size <= model.config.vocab_size
        assert f"nanoseek chat --model {path}" in printed
        assert f"nanoseek serve --model {path}" in printed
    chat_line = next(line for line in printed.splitlines() if line.startswith("nanoseek chat"))
    from nanoseek.cli import main as cli

    monkeypatch.setattr("sys.stdin", io.StringIO("What is 2 + 3?\n/exit\n"))
    argv = [*chat_line.split()[1:], "--max-tokens", "8"]
    assert cli(argv) == 0
    assert "tokens" in capsys.readouterr().out


@pytest.mark.slow
def test_mini_speedrun_serve_command_answers_a_chat_request(mini_run, monkeypatch):
    from fastapi.testclient import TestClient

    _, code, printed = mini_run
    assert code == 0
    serve_line = next(line for line in printed.splitlines() if line.startswith("nanoseek serve"))
    apps = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: apps.append(app))
    from nanoseek.cli import main as cli

    assert cli([*serve_line.split()[1:], "--no-ledger"]) == 0
    with TestClient(apps[0]) as client:
        reply = client.post("/v1/chat/completions", json={
            "model": "deepseek-chat", "max_tokens": 8,
            "messages": [{"role": "user", "content": "What is 2 + 3?"}]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.slow
def test_rerun_skips_finished_stages(mini_run, capsys):
    run_dir, code, _ = mini_run
    assert code == 0
    before = speedrun.read_marker(run_dir, "pretrain")
    assert speedrun.main(["--preset", "ci", "--out", str(run_dir), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "pretrain: done in an earlier run, skipped" in out
    assert speedrun.read_marker(run_dir, "pretrain") == before
