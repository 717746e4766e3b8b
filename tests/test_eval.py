"""``nanoseek.eval``: pass@k / maj@k estimators, aggregation, ``evaluate`` with a scripted
generator (exact accounting) and a tiny random model, and ``nanoseek eval`` in-process."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch

from nanoseek import cli
from nanoseek.checkpoint import save_pretrained
from nanoseek.config import get_preset
from nanoseek.data.tasks import Problem, get_task, render_prompt, solution_completion
from nanoseek.eval import (
    ProblemRecord,
    aggregate,
    answer_key,
    build_prompts,
    evaluate,
    majority_vote,
    normalize_answer,
    pass_at_k,
)
from nanoseek.eval.metrics import default_ks, length_summary
from nanoseek.infer import LLM
from nanoseek.model import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(arithmetic_tokenizer):
    return arithmetic_tokenizer


@pytest.fixture(scope="module")
def tiny_llm(tokenizer):
    torch.manual_seed(0)
    model = build_model(get_preset("tiny").replace(vocab_size=tokenizer.vocab_size))
    return LLM(model, tokenizer=tokenizer, max_model_len=96)


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(get_preset("tiny").replace(vocab_size=tokenizer.vocab_size))
    path = tmp_path_factory.mktemp("model")
    save_pretrained(model, path)
    tokenizer.save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------------
# a scripted generator: problem i's sample j is the reference solution when script says so


def _out(text: str) -> SimpleNamespace:
    return SimpleNamespace(text=text, token_ids=list(range(len(text.split()))),
                           finish_reason="stop")


class Scripted:
    """``generate`` with LLM's shape; ``script(problem, sample_index, params) -> text``."""

    def __init__(self, problems, script, tokenizer=None, template="plain", think=False):
        self.tokenizer, self.script, self.calls = tokenizer, script, []
        prompts = build_prompts(problems, template, tokenizer, think)
        self.by_prompt = {self._key(p): prob for p, prob in zip(prompts, problems, strict=True)}

    @staticmethod
    def _key(prompt):
        return prompt if isinstance(prompt, str) else tuple(prompt)

    def generate(self, prompts, params):
        self.calls.append((list(prompts), list(params)))
        return [SimpleNamespace(outputs=[_out(self.script(self.by_prompt[self._key(p)], j, sp))
                                         for j in range(sp.n)])
                for p, sp in zip(prompts, params, strict=True)]


WRONG = "<think>\nno idea\n</think>\n\n\\boxed{-12345}"


# ---------------------------------------------------------------------------------------------
# estimators


def test_pass_at_k_matches_brute_force_enumeration():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))
                hits = sum(any(i < c for i in s) for s in subsets)  # samples 0..c-1 are correct
                assert pass_at_k(n, c, k) == pytest.approx(hits / len(subsets), abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    n, c, k = 1000, 7, 500
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    assert pass_at_k(1000, 0, 1) == 0.0 and pass_at_k(1000, 1000, 1000) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    for bad in ((4, 5, 1), (4, 2, 0), (4, 2, 5), (4, -1, 1)):
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_majority_vote_and_ties():
    assert majority_vote(["1", "2", "1"], [True, False, True]) == ("1", 1.0)
    assert majority_vote(["2", "1", "1", "2"], [False, True, True, False]) == ("2", 0.5)
    assert majority_vote(["a", "b", "c"], [False, False, True]) == ("a", pytest.approx(1 / 3))
    assert majority_vote([None, None, "7"], [False, False, True]) == ("7", 1.0)  # no vote
    assert majority_vote([None, None], [False, False]) == (None, 0.0)
    with pytest.raises(ValueError):
        majority_vote(["1"], [])


def test_answer_normalization_groups_equal_answers():
    assert normalize_answer("1,234") == normalize_answer(" 1234 ") == normalize_answer("$1234$.")
    assert normalize_answer("3.50") == normalize_answer("7/2") == normalize_answer("3.5")
    assert normalize_answer("x + 1") == "x+1"
    countdown = Problem("use 3 4 5 for 17", "3*4+5", "countdown",
                        meta={"numbers": [3, 4, 5], "target": 17})
    assert answer_key("\\boxed{3*4+5}", countdown) == answer_key("\\boxed{5+4*3}", countdown)
    assert answer_key("\\boxed{3*9}", countdown) == normalize_answer("3*9")  # bad numbers
    assert answer_key("no answer here", countdown) is None


def test_default_ks_and_length_summary():
    assert default_ks(1) == [1] and default_ks(8) == [1, 2, 4, 8] and default_ks(6) == [1, 2, 4, 6]
    s = length_summary([1, 2, 3, 4, 10])
    assert s == {"count": 5, "mean": 4.0, "median": 3.0, "p90": pytest.approx(7.6), "max": 10}
    assert length_summary([])["mean"] is None


def _record(correct, keys, lengths, formatted=None, reasons=None, greedy=None):
    n = len(correct)
    return ProblemRecord("p", "1", "t", completions=[""] * n, answers=list(keys), keys=list(keys),
                         lengths=lengths, finish_reasons=reasons or ["stop"] * n,
                         correct=correct, formatted=formatted or [True] * n,
                         greedy_correct=greedy)


def test_aggregate_hand_made_records():
    records = [
        _record([True, False, False, False], ["1", "2", "2", None], [10, 20, 30, 40], greedy=True,
                formatted=[True, True, False, False], reasons=["stop", "stop", "length", "stop"]),
        _record([True, True, False, False], ["1", "1", "3", "4"], [5, 5, 5, 5], greedy=False),
        _record([False] * 4, ["9", "8", "9", "8"], [1, 1, 1, 1], greedy=None),
    ]
    m = aggregate(records)
    assert m["num_problems"] == 3 and m["samples"] == 4
    assert m["pass@1"] == pytest.approx((0.25 + 0.5 + 0) / 3)
    assert m["pass@2"] == pytest.approx((0.5 + (1 - 1 / 6) + 0) / 3)
    assert m["pass@4"] == pytest.approx(2 / 3)
    assert m["maj@4"] == pytest.approx((0 + 1 + 0) / 3)
    assert m["greedy"] == pytest.approx(0.5)  # the problem without a greedy run is left out
    assert m["format_rate"] == pytest.approx(10 / 12)
    assert m["truncated_rate"] == pytest.approx(1 / 12)
    assert m["mean_response_tokens"] == pytest.approx((100 + 20 + 4) / 12)
    assert aggregate(records, ks=[3])["pass@3"] == pytest.approx((0.75 + 1 + 0) / 3)
    with pytest.raises(ValueError, match="different sample counts"):
        aggregate([*records, _record([True], ["1"], [1])])
    with pytest.raises(ValueError, match="ks="):
        aggregate(records, ks=[5])
    empty = aggregate([], samples=4)
    assert empty["pass@1"] is None and empty["maj@4"] is None and empty["num_problems"] == 0


# ---------------------------------------------------------------------------------------------
# evaluate with a scripted generator: exact accounting


def test_evaluate_counts_correct_answers_exactly():
    problems = get_task("arithmetic")(4, seed=3, split="test")
    correct_per_problem = {p.prompt: c for p, c in zip(problems, [0, 1, 2, 4], strict=True)}

    def script(problem, j, params):
        if params.temperature == 0:  # greedy: right on the last two problems
            return problem.solution if correct_per_problem[problem.prompt] >= 2 else WRONG
        return problem.solution if j < correct_per_problem[problem.prompt] else WRONG

    gen = Scripted(problems, script)
    result = evaluate(gen, problems, samples=4, template="plain", reward_workers=0, seed=5)
    assert len(gen.calls) == 1  # one batched call: 4 sampled prompts (n=4) + 4 greedy (n=1)
    prompts, params = gen.calls[0]
    assert len(prompts) == 8 and [p.n for p in params] == [4] * 4 + [1] * 4
    assert [p.seed for p in params[:4]] == [5, 9, 13, 17]
    assert all(p.temperature == 0.6 and p.top_p == 0.95 for p in params[:4])
    assert result.pass_at_1 == pytest.approx((0 + 0.25 + 0.5 + 1) / 4)
    assert result.pass_at(4) == pytest.approx(3 / 4)
    assert result.pass_at(2) == pytest.approx((0 + 0.5 + (1 - 1 / 6) + 1) / 4)
    # maj@4: the wrong answer wins 4:0 and 3:1, ties 2:2 (half credit), correct wins 4:0
    assert result.maj_at_k == pytest.approx((0 + 0 + 0.5 + 1) / 4)
    assert result.greedy_accuracy == 0.5
    assert result.format_rate == 1.0
    assert [r.num_correct for r in result.records] == [0, 1, 2, 4]
    assert result.metrics["skipped_too_long"] == 0 and result.metrics["reward_errors"] == 0
    assert result.records[3].answers == [problems[3].answer] * 4
    md = result.to_markdown()
    assert "| pass@1 | 43.8% |" in md and "| maj@4 | 37.5% |" in md and "| greedy | 50.0% |" in md
    blob = json.loads(json.dumps(result.to_dict()))
    assert blob["metrics"]["pass@4"] == pytest.approx(0.75)
    assert blob["records"][2]["majority_score"] == 0.5 and "completions" in blob["records"][0]
    assert "completions" not in result.to_dict(completions=False)["records"][0]


def test_evaluate_chat_template_with_prefilled_think(tokenizer):
    problems = get_task("countdown")(3, seed=0, split="test")
    gen = Scripted(problems, lambda p, j, sp: solution_completion(p, think_prefilled=True),
                   tokenizer=tokenizer, template="chat", think=True)
    result = evaluate(gen, problems, samples=2, reward_workers=0, greedy=False)
    prompt_ids = gen.calls[0][0][0]
    assert tokenizer.decode(prompt_ids).endswith("<｜Assistant｜><think>\n")
    assert result.pass_at_1 == 1.0 and result.maj_at_k == 1.0 and result.format_rate == 1.0
    assert result.greedy_accuracy is None and result.config["think_prefilled"] is True
    # without the prefill the completion must open <think> itself: the format reward says no
    gen = Scripted(problems, lambda p, j, sp: solution_completion(p, think_prefilled=True),
                   tokenizer=tokenizer, template="chat", think=False)
    result = evaluate(gen, problems, samples=2, reward_workers=0, greedy=False,
                      think_prefilled=False)
    assert result.format_rate == 0.0 and result.pass_at_1 == 1.0


def test_evaluate_counts_reward_errors_and_checks_input():
    broken = Problem("Use the numbers", "1+2", "countdown")  # no numbers/target: reward raises
    gen = Scripted([broken], lambda p, j, sp: "<think>\nx\n</think>\n\\boxed{1+2}")
    result = evaluate(gen, [broken], samples=2, template="plain", reward_workers=0)
    assert result.pass_at_1 == 0.0 and result.metrics["reward_errors"] == 3
    with pytest.raises(ValueError, match="problems is empty"):
        evaluate(gen, [], samples=2)
    with pytest.raises(ValueError, match="samples"):
        evaluate(gen, [broken], samples=0)
    with pytest.raises(ValueError, match="template"):
        evaluate(gen, [broken], template="fancy")
    with pytest.raises(ValueError, match="needs a tokenizer"):
        evaluate(gen, [broken], template="chat")
    with pytest.raises(ValueError, match="generate"):
        evaluate(object(), [broken])


# ---------------------------------------------------------------------------------------------
# a real tiny model


def test_evaluate_tiny_random_model(tiny_llm):
    problems = get_task("arithmetic")(3, seed=0, split="test")
    long_one = Problem("what is " + "1 + " * 120 + "1?", "121", "arithmetic")
    for template in ("chat", "plain"):
        result = evaluate(tiny_llm, [*problems, long_one], samples=3, max_tokens=12,
                          template=template, reward_workers=0, seed=1)
        m = result.metrics
        assert m["num_problems"] == 3 and m["skipped_too_long"] == 1
        assert 0.0 <= m["pass@1"] <= m["pass@2"] <= m["pass@3"] <= 1.0
        assert 0 < m["mean_response_tokens"] <= 12
        assert all(len(r.completions) == 3 and max(r.lengths) <= 12 for r in result.records)
        again = evaluate(tiny_llm, problems, samples=3, max_tokens=12, template=template,
                         reward_workers=0, seed=1)
        assert [r.completions for r in again.records] == [r.completions for r in
                                                          result.records]  # seeded
    nothing = evaluate(tiny_llm, [long_one], samples=2, max_tokens=4)  # all skipped
    assert nothing.metrics["skipped_too_long"] == 1 and nothing.pass_at_1 is None
    assert "| pass@1 | n/a |" in nothing.to_markdown() and nothing.records == []


def test_plain_prompts_start_with_bos(tokenizer):
    problem = get_task("arithmetic")(1, seed=0)[0]
    ids = build_prompts([problem], "r1_zero", tokenizer)[0]
    assert ids[0] == tokenizer.bos_id
    assert tokenizer.decode(ids[1:]) == render_prompt(problem, "r1_zero")


# ---------------------------------------------------------------------------------------------
# the command line


def test_cli_eval_json_and_out_file(model_dir, tmp_path, capsys):
    out = tmp_path / "res" / "eval.json"
    argv = ["eval", "--model", str(model_dir), "--task", "arithmetic", "--num-problems", "2",
            "--samples", "2", "--max-tokens", "6", "--reward-workers", "0", "--json",
            "--out", str(out)]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["config"]["model"] == str(model_dir)
    assert printed["config"]["task"] == "arithmetic" and printed["config"]["samples"] == 2
    assert {"pass@1", "pass@2", "maj@2", "greedy", "format_rate"} <= printed["metrics"].keys()
    assert "completions" not in printed["records"][0]
    saved = json.loads(out.read_text())
    assert saved["metrics"] == printed["metrics"] and len(saved["records"][0]["completions"]) == 2
    assert cli.main(argv[:-3]) == 0  # markdown
    assert "| pass@1 |" in capsys.readouterr().out


def test_cli_eval_task_file_and_errors(model_dir, tmp_path, capsys):
    good = tmp_path / "tasks.jsonl"
    good.write_text('{"prompt": "What is 2 + 2?", "answer": "4"}\n'
                    '{"question": "Tom has 3 apples and buys 2. How many?", '
                    '"answer": "3+2=5\\n#### 5"}\n')
    base = ["eval", "--model", str(model_dir), "--samples", "1", "--max-tokens", "4",
            "--reward-workers", "0", "--no-greedy", "--json"]
    assert cli.main([*base, "--task", str(good)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["metrics"]["num_problems"] == 2 and printed["config"]["task"] == "tasks.jsonl"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "What is 2 + 2?", "answer": "4"}\n{"prompt": "oops"\n')
    assert cli.main([*base, "--task", str(bad)]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    assert cli.main([*base, "--task", "no_such_task"]) == 2
    assert "neither a built-in task" in capsys.readouterr().err
    assert cli.main([*base, "--task", str(good), "--difficulty", "3"]) == 2
    assert cli.main([*base, "--task", "arithmetic", "--samples", "0"]) == 2
    assert cli.main(["eval", "--model", str(tmp_path / "missing"), "--task", "arithmetic"]) == 2
    assert "not a directory" in capsys.readouterr().err
