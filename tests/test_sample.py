"""``nanoseek.rl.sample``: rejection sampling into SFT JSONL with a scripted generator (exact
counts, resume, torn files, zero kept) and ``nanoseek sample`` on a tiny random model."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch

from nanoseek import cli
from nanoseek.checkpoint import save_pretrained
from nanoseek.config import get_preset
from nanoseek.data.tasks import Problem, get_task, solution_completion
from nanoseek.eval.run import Completion, build_prompts
from nanoseek.infer import LLM
from nanoseek.model import build_model
from nanoseek.rl.sample import (
    SampleStats,
    progress_path,
    prompt_key,
    read_appended_jsonl,
    rejection_sample,
    select_traces,
    split_completion,
    stats_path,
)

WRONG = "\nno idea\n</think>\n\n\\boxed{-12345}"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(arithmetic_tokenizer):
    return arithmetic_tokenizer


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(get_preset("tiny").replace(vocab_size=tokenizer.vocab_size))
    path = tmp_path_factory.mktemp("model")
    save_pretrained(model, path)
    tokenizer.save_pretrained(path)
    return path


class Scripted:
    """LLM-shaped generator over the chat template (think prefilled): sample ``j`` of a problem
    is ``script(problem, j)``; records every prompt it was asked to complete."""

    def __init__(self, problems, tokenizer, script):
        self.tokenizer, self.script, self.seen = tokenizer, script, []
        prompts = build_prompts(problems, "chat", tokenizer)
        self.by_ids = {tuple(ids): p for ids, p in zip(prompts, problems, strict=True)}

    def generate(self, prompts, params):
        out = []
        for ids, sp in zip(prompts, params, strict=True):
            problem = self.by_ids[tuple(ids)]
            self.seen.append(problem.prompt)
            texts = [self.script(problem, j) for j in range(sp.n)]
            out.append(SimpleNamespace(outputs=[
                SimpleNamespace(text=t, token_ids=[1] * len(t), finish_reason="stop")
                for t in texts]))
        return out


def _good(problem: Problem, j: int = 0) -> str:
    return solution_completion(problem, think_prefilled=True)


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# pieces


def test_split_completion_and_select_traces():
    assert split_completion("a\nb\n</think>\n\n\\boxed{3}", True) == ("a\nb", "\\boxed{3}")
    assert split_completion("<think>\nr\n</think>\n\\boxed{3}\n", False) == ("r", "\\boxed{3}")
    assert split_completion("\\boxed{3}", True) == ("", "\\boxed{3}")
    a, b, c = (Completion("x  y", 5, "stop"), Completion("x y", 3, "stop"),
               Completion("z", 4, "stop"))
    assert select_traces([a, b, c]) == ([a, c], 1)  # b repeats a up to whitespace
    assert select_traces([a, b, c], "shortest") == ([c], 2)
    assert select_traces([], "shortest") == ([], 0)


def test_prompt_key_is_stable_and_task_specific():
    p = Problem("What is 1 + 1?", "2", "arithmetic")
    assert prompt_key(p) == prompt_key(Problem("What is 1 + 1?", "3", "arithmetic"))
    assert prompt_key(p) != prompt_key(Problem("What is 1 + 1?", "2", "file"))


# ---------------------------------------------------------------------------------------------
# rejection_sample with a scripted generator


def test_writes_sft_jsonl_that_render_chat_accepts(tokenizer, tmp_path):
    problems = get_task("arithmetic")(4, seed=2, split="train")

    def script(problem, j):  # problem 0: all wrong; others: 2 equal good + 1 good variant
        if problem is problems[0] or j == 3:
            return WRONG
        return _good(problem) + ("\n" if j == 2 else "")

    gen = Scripted(problems, tokenizer, script)
    out = tmp_path / "sft" / "traces.jsonl"
    stats = rejection_sample(gen, problems, k=4, out_path=out, reward_workers=0, batch_size=3)
    records = _read(out)
    assert stats.samples == 16 and stats.verified == 9 and stats.correct == 9
    assert stats.kept == 3 and stats.duplicates == 6 and stats.prompts_with_kept == 3
    assert stats.pass_rate == pytest.approx(9 / 16) and len(records) == 3
    for record, problem in zip(records, problems[1:], strict=True):
        assert record["task"] == "arithmetic" and record["answer"] == problem.answer
        user, assistant = record["messages"]
        assert user == {"role": "user", "content": problem.prompt + "\n"
                        "Please reason step by step, and put your final answer within \\boxed{}."}
        assert assistant["content"] == f"\\boxed{{{problem.answer}}}"
        text = tokenizer.decode(tokenizer.render_chat(record["messages"]).ids)
        assert text.endswith(f"<｜Assistant｜>{problem.solution}<｜end▁of▁sentence｜>")
    saved = json.loads(stats_path(out).read_text())
    assert saved["kept"] == 3 and saved["pass_rate"] == pytest.approx(9 / 16)
    assert saved["response_tokens"]["count"] == 16 and saved["kept_response_tokens"]["count"] == 3
    assert set(saved["response_tokens"]) == {"count", "mean", "median", "p90", "max"}
    shortest = rejection_sample(gen, problems, k=4, out_path=tmp_path / "short.jsonl",
                                reward_workers=0, keep="shortest")
    assert shortest.kept == 3 and shortest.duplicates == 6
    assert "pass rate 56.2%" in stats.summary()


def test_resumes_without_duplicates(tokenizer, tmp_path):
    problems = get_task("word_problems")(6, seed=0, split="train")
    gen = Scripted(problems, tokenizer, _good)
    out = tmp_path / "traces.jsonl"
    first = rejection_sample(gen, problems[:3], k=2, out_path=out, reward_workers=0)
    assert first.kept == 3 and len(gen.seen) == 3
    gen.seen.clear()
    second = rejection_sample(gen, problems + problems[:1], k=2, out_path=out, reward_workers=0)
    assert sorted(gen.seen) == sorted(p.prompt for p in problems[3:])
    assert second.resumed == 4 and second.kept == 6 and second.prompts == 6  # totals of both
    keys = [r["prompt_key"] for r in _read(out)]
    assert len(keys) == len(set(keys)) == 6
    gen.seen.clear()
    third = rejection_sample(gen, problems, k=2, out_path=out, reward_workers=0)
    assert gen.seen == [] and third.resumed == 6 and third.kept == 6


def test_resume_repairs_a_crashed_run(tokenizer, tmp_path, caplog):
    problems = get_task("arithmetic")(4, seed=4, split="train")
    gen = Scripted(problems, tokenizer, _good)
    out = tmp_path / "traces.jsonl"
    rejection_sample(gen, problems[:2], k=1, out_path=out, reward_workers=0)
    orphan = {**_read(out)[0], "prompt_key": prompt_key(problems[2])}
    with out.open("a") as f:  # a batch whose log line never came, then a torn append
        f.write(json.dumps(orphan) + "\n" + '{"messages": [{"ro')
    with progress_path(out).open("a") as f:
        f.write('{"keys": ["abc')
    gen.seen.clear()
    with caplog.at_level(logging.WARNING, logger="nanoseek.rl.sample"):
        stats = rejection_sample(gen, problems, k=1, out_path=out, reward_workers=0)
    assert "torn last line" in caplog.text and "did not finish" in caplog.text
    assert sorted(gen.seen) == sorted(p.prompt for p in problems[2:])
    keys = [r["prompt_key"] for r in _read(out)]
    assert sorted(keys) == sorted(prompt_key(p) for p in problems) and stats.kept == 4
    assert len(read_appended_jsonl(progress_path(out))) == 2


def test_bad_output_file_is_refused(tokenizer, tmp_path):
    problems = get_task("arithmetic")(2, seed=0, split="train")
    gen = Scripted(problems, tokenizer, _good)
    out = tmp_path / "other.jsonl"
    out.write_text('{"text": "not ours"}\n{"text": "b"}\n')
    with pytest.raises(ValueError, match="prompt_key"):
        rejection_sample(gen, problems, k=1, out_path=out, reward_workers=0)
    out.write_text('not json\n{"text": "b"}\n')
    with pytest.raises(ValueError, match=f"{out}:1"):
        rejection_sample(gen, problems, k=1, out_path=out, reward_workers=0)
    with pytest.raises(ValueError, match="keep"):
        rejection_sample(gen, problems, k=1, out_path=tmp_path / "x.jsonl", keep="best")


def test_zero_kept_traces_warn_and_leave_a_valid_empty_file(tokenizer, tmp_path, caplog):
    problems = get_task("arithmetic")(3, seed=0, split="train")
    gen = Scripted(problems, tokenizer, lambda p, j: WRONG)
    out = tmp_path / "none.jsonl"
    with caplog.at_level(logging.WARNING, logger="nanoseek.rl.sample"):
        stats = rejection_sample(gen, problems, k=2, out_path=out, reward_workers=0)
    assert stats.kept == 0 and stats.samples == 6 and stats.formatted == 6 and stats.correct == 0
    assert out.exists() and out.read_text() == ""
    assert "kept no traces: 0 of 6 samples verified" in caplog.text
    assert json.loads(stats_path(out).read_text())["kept_response_tokens"]["mean"] is None


def test_reward_errors_are_counted_in_worker_processes(tokenizer, tmp_path):
    broken = Problem("Use the numbers", "1+2", "countdown")  # the accuracy reward raises
    good = get_task("arithmetic")(1, seed=0, split="train")[0]
    gen = Scripted([broken, good], tokenizer,
                   lambda p, j: _good(p) if p is good else "x\n</think>\n\\boxed{1+2}")
    stats = rejection_sample(gen, [broken, good], k=2, out_path=tmp_path / "t.jsonl",
                             reward_workers=1, batch_size=1)
    assert stats.reward_errors == 2 and stats.kept == 1 and stats.verified == 2


# ---------------------------------------------------------------------------------------------
# a real tiny model and the command line


def test_tiny_model_skips_long_prompts(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = build_model(get_preset("tiny").replace(vocab_size=tokenizer.vocab_size))
    llm = LLM(model, tokenizer=tokenizer, max_model_len=96)
    problems = [*get_task("arithmetic")(2, seed=0, split="train"),
                Problem("what is " + "1 + " * 120 + "1?", "121", "arithmetic")]
    stats = rejection_sample(llm, problems, k=2, out_path=tmp_path / "t.jsonl", max_tokens=8,
                             reward_workers=0)
    assert isinstance(stats, SampleStats)
    assert stats.prompts == 3 and stats.skipped_too_long == 1 and stats.samples == 4
    assert all(0 < n <= 8 for n in stats.lengths)


def test_cli_sample(model_dir, tmp_path, capsys):
    out = tmp_path / "traces.jsonl"
    argv = ["sample", "--model", str(model_dir), "--task", "arithmetic", "--num-problems", "3",
            "--samples", "2", "--max-tokens", "6", "--reward-workers", "0", "--out", str(out),
            "--json", "--quiet"]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["prompts"] == 3 and printed["samples"] == 6
    assert out.exists() and len(out.read_text().splitlines()) == printed["kept"]
    assert json.loads(stats_path(out).read_text())["samples"] == 6
    assert cli.main(argv[:-2]) == 0  # resumed: nothing left to do
    assert "3 done before (resume)" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "2+2?", "answer": "4"}\n[1, 2]\n')
    assert cli.main([*argv[:4], str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
