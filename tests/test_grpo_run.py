"""``nanoseek grpo`` end to end on a tiny model: metrics, plots and checkpoints, exact resume,
β = 0 skipping the reference forward, dynamic sampling, and clear errors for bad input (a
failing reward, over-long prompts, a reference with another tokenizer, bad config values)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from nanoseek.checkpoint import load_pretrained, save_pretrained
from nanoseek.config import get_preset
from nanoseek.data.tasks import arithmetic
from nanoseek.distributed import DistInfo
from nanoseek.model import build_model
from nanoseek.rl.grpo import GRPOConfig, build_trainer, main
from nanoseek.rl.rewards import RewardBatch
from nanoseek.train.config import load_config

STEP_KEYS = ("reward", "reward/accuracy", "reward/format", "pass_rate", "frac_zero_std",
             "clip_frac", "clip_low", "clip_high", "kl", "entropy", "length_mean",
             "length_max", "loss", "grad_norm", "logp_mismatch", "reward_errors/accuracy")


def make_model_dir(root: Path, vocab: int = 280, corpus_seed: int = 0) -> Path:
    """A tokenizer trained on short arithmetic text and a fresh tiny DeepSeek model (with an
    MTP layer, which GRPO freezes), saved together as an HF dir."""
    from nanoseek.tokenizer import train_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    items = arithmetic(800, seed=corpus_seed, difficulty=2, ops="+")
    (root / "corpus.txt").write_text("\n\n".join(
        f"{p.prompt}\n\\boxed{{{p.answer}}}" for p in items))
    tok = train_tokenizer([root / "corpus.txt"], vocab_size=vocab)
    config = get_preset("tiny").replace(vocab_size=vocab, num_hidden_layers=2,
                                        max_position_embeddings=64, bos_token_id=tok.bos_id,
                                        eos_token_id=tok.eos_id)
    torch.manual_seed(0)
    save_pretrained(build_model(config), root / "model")
    tok.save_pretrained(root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("policy"))


def overrides(model: Path, out: Path, **extra: object) -> list[str]:
    settings = {"model.path": str(model), "data.tasks": ["arithmetic"], "data.difficulty": 2,
                "data.num_problems": 64, "data.eval_problems": 8, "grpo.group_size": 4,
                "grpo.prompts_per_step": 4, "grpo.mu": 2, "grpo.max_new_tokens": 6,
                "grpo.beta": 0.02, "reward.workers": 0, "optim.lr": 1e-3,
                "grpo.kv_cache_memory": 2**23, "train.out_dir": str(out), "train.steps": 3,
                "train.micro_batch": 6,
                "train.precision": "fp32", "train.save_every": 2, "train.device": "cpu",
                **extra}
    return [x for k, v in settings.items() for x in (f"--{k}", json.dumps(v))]


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def steps(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in records(out) if "reward" in r}


# -------------------------------------------------------------------- the run
def test_run_logs_every_metric_plots_and_checkpoints(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main([*overrides(model_dir, out, **{"train.eval_every": 2}), "--quiet"]) == 0
    logged = steps(out)
    assert sorted(logged) == [1, 2, 3]
    for rec in logged.values():
        assert all(k in rec for k in STEP_KEYS), sorted(set(STEP_KEYS) - set(rec))
        assert rec["kl"] >= 0 and 0 <= rec["frac_zero_std"] <= 1
        assert rec["logp_mismatch"] < 1e-3  # engine and trainer log-probs agree
    assert logged[1]["kl"] == pytest.approx(0, abs=1e-7)  # the policy starts at the reference
    evals = [r for r in records(out) if "eval_greedy" in r]
    assert [r["step"] for r in evals] == [0, 2, 3]
    first = records(out)[0]
    assert first["train_prompts"] == 64 and first["skipped_too_long"] == 0
    assert first["solutions_too_long"] == 64 and first["longest_solution"] > 6  # 6-token budget
    assert (out / "grpo.png").stat().st_size > 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002",
                                                                      "step_00000003"]
    exported = load_pretrained(out / "model")
    assert (out / "model" / "tokenizer.json").is_file()
    # the MTP module was frozen: it left the run unchanged
    start = load_pretrained(model_dir)
    mtp = [k for k in start.state_dict() if k.startswith("model.layers.2.")]
    assert mtp and all(torch.equal(start.state_dict()[k], exported.state_dict()[k]) for k in mtp)


def test_reference_solutions_longer_than_the_budget_are_counted(model_dir: Path) -> None:
    from nanoseek.rl.grpo import DataSection, solutions_too_long
    from nanoseek.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(model_dir)
    problems = arithmetic(50, seed=0, difficulty=2, ops="+-")
    d = DataSection(template="plain")
    lengths = [len(tok.encode(p.solution)) + 1 for p in problems]  # plain: the whole solution
    longest = max(lengths)
    assert solutions_too_long(problems, tok, longest, d) == (0, longest)
    assert solutions_too_long(problems, tok, longest - 1, d) == (lengths.count(longest), longest)
    short = sorted(lengths)[10]
    assert solutions_too_long(problems, tok, short, d)[0] == sum(n > short for n in lengths)
    without = [replace(p, solution=None) for p in problems]
    assert solutions_too_long(without, tok, 1, d) == (0, 0)


def test_resume_continues_exactly(model_dir: Path, tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([*overrides(model_dir, straight), "--quiet"]) == 0
    assert main([*overrides(model_dir, resumed, **{"train.steps": 2}), "--quiet"]) == 0
    assert main([*overrides(model_dir, resumed), "--quiet", "--resume"]) == 0
    a, b = steps(straight), steps(resumed)
    assert sorted(b) == [1, 2, 3]
    for step in (3,):
        for key in ("reward", "loss", "kl", "grad_norm", "entropy", "length_mean"):
            assert a[step][key] == pytest.approx(b[step][key], rel=1e-6, abs=1e-9), (step, key)
    wa, wb = load_pretrained(straight / "model"), load_pretrained(resumed / "model")
    for (name, x), y in zip(wa.state_dict().items(), wb.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)


# -------------------------------------------------------------------- the step's pieces
def build(model_dir: Path, out: Path, rewards=None, **extra: object):
    cfg = load_config(GRPOConfig, None, overrides(model_dir, out, **extra))
    return build_trainer(cfg, DistInfo(), rewards=rewards)


def count_forwards(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_beta_zero_never_builds_or_runs_a_reference(model_dir: Path, tmp_path: Path) -> None:
    trainer = build(model_dir, tmp_path / "b0", **{"grpo.beta": 0.0, "train.micro_batch": 8})
    assert trainer.ref_model is None
    policy = count_forwards(trainer.model)
    rec = trainer.train_step()
    assert "kl" not in rec
    assert policy[0] == 2 * 2  # mu = 2 passes × 2 micro-batches of 8 (16 rows); no extra
    trainer.finish()
    trainer = build(model_dir, tmp_path / "b1", **{"grpo.beta": 0.1, "train.micro_batch": 8})
    ref, policy = count_forwards(trainer.ref_model), count_forwards(trainer.model)
    trainer.train_step()
    assert (ref[0], policy[0]) == (2, 4)  # the reference runs once per micro-batch
    trainer.finish()


class ScriptedRewards:
    """Rewards by (prompt index within the step, sample index), like RewardSet."""

    def __init__(self, table: list[list[float]]) -> None:
        self.table = table

    def score(self, completions, problems, lengths=None) -> RewardBatch:
        values = np.array([v for row in self.table for v in row], np.float64)
        return RewardBatch({"accuracy": values}, values, {"accuracy": 0}, {"accuracy": 0}, [])

    def close(self) -> None:
        pass


def test_dynamic_sampling_drops_groups_whose_rewards_are_equal(model_dir: Path,
                                                                tmp_path: Path) -> None:
    table = [[1, 1, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0]]
    for dynamic, kept in ((True, 2), (False, 4)):
        trainer = build(model_dir, tmp_path / str(dynamic), ScriptedRewards(table),
                        **{"grpo.dynamic_sampling": dynamic})
        micros, rec = trainer.rollout()
        assert rec["frac_zero_std"] == 0.5 and rec["groups_kept"] == kept
        assert sum(m["adv"].numel() for m in micros) == 4 * kept
        advs = torch.cat([m["adv"] for m in micros])
        assert (advs != 0).sum() == 8  # the two mixed groups
        trainer.finish()


def test_a_failing_reward_scores_zero_is_counted_and_the_run_goes_on(
        model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nanoseek.rl import rewards

    def boom(completion, problem):
        raise RuntimeError("checker crashed")

    monkeypatch.setitem(rewards.REWARDS, "boom", boom)
    trainer = build(model_dir, tmp_path / "boom", **{"reward.names": ["accuracy", "boom"]})
    for _ in range(2):
        rec = trainer.train_step()
        assert rec["reward_errors/boom"] == 16 and rec["reward/boom"] == 0.0
    assert trainer.state.step == 2
    trainer.finish()


# -------------------------------------------------------------------- bad input
def write_tasks(path: Path, lengths: list[int]) -> Path:
    lines = [json.dumps({"prompt": "What is 2 + 2?" + " and" * n, "answer": "4"})
             for n in lengths]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_prompts_longer_than_the_context_are_skipped_and_counted(model_dir: Path,
                                                                 tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", [0, 0, 40, 0, 60, 0])
    out = tmp_path / "long"
    extra = {"data.tasks": [str(tasks)], "data.difficulty": 0, "train.steps": 1,
             "train.save_every": 0}
    assert main([*overrides(model_dir, out, **extra), "--quiet"]) == 0
    assert records(out)[0]["skipped_too_long"] == 2 and records(out)[0]["train_prompts"] == 4
    # nothing fits: a clear error, nothing written
    out = tmp_path / "none"
    extra["data.tasks"] = [str(write_tasks(tmp_path / "all_long.jsonl", [40, 60]))]
    with pytest.raises(ValueError, match="longer than the context"):
        build(model_dir, out, **extra)
    assert not out.exists()


def test_reference_with_another_tokenizer_is_refused(model_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    other = make_model_dir(tmp_path / "other", vocab=300, corpus_seed=1)
    out = tmp_path / "out"
    assert main([*overrides(model_dir, out, **{"model.ref_path": str(other)}), "--quiet"]) == 2
    assert "different tokenizer" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(("key", "value", "message"), [
    ("grpo.loss_type", "ppo", "grpo.loss_type"), ("grpo.group_size", 1, "grpo.group_size"),
    ("grpo.scale_rewards", "max", "grpo.scale_rewards"), ("reward.names", ["nope"], "nope"),
    ("train.batch_tokens", 128, "train.batch_tokens"), ("model.path", "/nonexistent", "model.path"),
    ("grpo.rollout_is_cap", 0.5, "grpo.rollout_is_cap"),
])
def test_bad_config_values_fail_with_the_field_name(model_dir: Path, tmp_path: Path, key: str,
                                                    value: object, message: str,
                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bad"
    assert main([*overrides(model_dir, out, **{key: value}), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_partial_sections_keep_the_grpo_defaults(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text('[optim]\nlr = 1e-4\n[train]\nseed = 3\n')
    cfg = load_config(GRPOConfig, tmp_path / "run.toml", ["--grpo.beta", "0"])
    assert (cfg.optim.lr, cfg.optim.schedule, cfg.optim.weight_decay) == (1e-4, "constant", 0.0)
    assert cfg.optim.bias_update_speed == 0.0
    assert (cfg.train.out_dir, cfg.train.steps, cfg.train.seed) == ("runs/grpo", 100, 3)
