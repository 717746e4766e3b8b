"""Reward components on adversarial strings, and RewardSet's error / timeout handling."""

import math
import threading
import time

import numpy as np
import pytest

from nanoseek.data.tasks import Problem, countdown
from nanoseek.rl import rewards
from nanoseek.rl.countdown import CountdownError, check_countdown, countdown_value
from nanoseek.rl.reward_workers import call_component
from nanoseek.rl.rewards import (
    REWARDS,
    RewardSet,
    accuracy,
    answers_equal,
    countdown_reward,
    extract_answer,
    format_reward,
    language_consistency,
    overlong_penalty,
)

NUM = Problem("What is 6 * 7?", "42", "arithmetic")
CD = Problem("Reach 24 with [3, 8, 1]", "3*8*1", "countdown", {"numbers": [3, 8, 1], "target": 24})


@pytest.mark.parametrize("completion, answer", [
    ("", None),
    ("The answer is 42.", None),
    ("\\boxed{42}", "42"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
    ("\\boxed{12", None),  # unbalanced
    ("}}}\\boxed{{x}}", "{x}"),
    ("\\boxed{1}\\boxed{2}", "2"),  # injection: the last box wins
    ("\\boxed{1} or maybe \\boxed{2}", "2"),
    ("\\boxed{\\boxed{3}}", "3"),
    ("\\boxed {5}", "5"),
    ("\\boxed{ }", None),
    ("<answer> 7 </answer>", "7"),
    ("<answer>\\boxed{3}</answer>", "3"),
    ("<answer>7</answer> then \\boxed{4}", "4"),
    ("\\boxed{4} then <answer>7</answer>", "7"),
    ("<answer>1</answer><answer>2", "1"),  # an unclosed tag is ignored
    ("<answer></answer>", None),
    ("<think>so \\boxed{5}</think>\n\nno answer", None),  # boxes inside the thinking don't count
    ("<think><answer>5</answer></think>", None),
    ("<think>still thinking \\boxed{5}", None),  # unfinished thinking
    ("<think>a</think>\\boxed{1}</think>\\boxed{2}", "2"),
    ("reasoning</think>\n\n\\boxed{9}", "9"),  # prompt pre-filled <think>
])
def test_extract_answer(completion, answer):
    assert extract_answer(completion) == answer


def test_extraction_is_linear_on_hostile_strings():
    start = time.perf_counter()
    for text in ("\\boxed{" * 200_000, "<answer>" * 200_000, "{" * 10**6 + "\\boxed{1}",
                 "x" * 10**6, "</think>" * 100_000):
        extract_answer(text)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("pred, gold, equal", [
    ("42", "42", True), ("42.0", "42", True), ("+42", "42", True), ("042", "42", True),
    ("$42$", "42", True), ("42.", "42", True), ("1,234", "1234", True), ("1 234", "1234", True),
    ("-3.50", "-3.5", True), ("3/4", "0.75", True), ("43", "42", False), ("-42", "42", False),
    ("4 2", "42", True), ("1,2", "12", False),
    ("٤٢", "42", False), ("４２", "42", False),  # only ASCII digits are digits
    ("\\frac{84}{2}", "42", True), ("\\frac{1}{2}", "0.5", True),
    ("\\dfrac{3}{4}", "\\frac34", True), (".5", "0.50", True), ("-0", "0", True),
    ("x = 42", "42", True), ("\\text{forty-two}", "42", False),
])
def test_answers_equal(pred, gold, equal):
    assert answers_equal(pred, gold) is equal


def test_huge_numbers_are_compared_without_int_conversion():
    big = "1" + "0" * 5000
    start = time.perf_counter()
    assert answers_equal(big, big)
    assert not answers_equal("9" * 20_000, "42")  # too long to be an answer
    assert not answers_equal("2" + "0" * 5000, big)
    assert answers_equal("1." + "0" * 300, "1") and answers_equal("-" + big, "-" + big + ".0")
    assert time.perf_counter() - start < 5


def test_accuracy_dispatches_on_task():
    assert accuracy("<think>6*7</think>\n\n\\boxed{42}", NUM) == 1.0
    assert accuracy("\\boxed{41}", NUM) == 0.0
    assert accuracy("", NUM) == 0.0
    assert accuracy("<answer>(8*3)*1</answer>", CD) == 1.0
    assert accuracy("<answer>24</answer>", CD) == 0.0  # the target itself is not an equation
    with pytest.raises(ValueError, match="cannot be parsed"):
        accuracy("\\boxed{1}", Problem("?", "\\frac{", "file"))


def test_accuracy_in_a_thread_does_not_need_signals():
    out = []
    thread = threading.Thread(target=lambda: out.append(accuracy("\\boxed{\\frac{84}{2}}", NUM)))
    thread.start()
    thread.join()
    assert out == [1.0]


@pytest.mark.parametrize("expr, value", [
    ("3*8*1", 24), ("(3 * 8) / 1", 24), ("8*3-1", 23), ("1-3+8", 6), ("(1+3)*8", 32),
    ("8/(3-1)", 4), ("8/3*1", None), ("3 × 8 ÷ 1", 24), ("3*8*1 = 24", 24), ("((((3))))*8*1", 24),
])
def test_countdown_value(expr, value):
    numbers = [3, 8, 1]
    if value is None:
        assert countdown_value(expr, numbers) * 3 == 8
    else:
        assert countdown_value(expr, numbers) == value


def test_countdown_fractional_intermediates_are_allowed():
    assert check_countdown("(8/3)*3", [8, 3, 3], 8)
    assert check_countdown("6/(1-3/4)", [6, 1, 3, 4], 24)


@pytest.mark.parametrize("expr, reason", [
    ("3*8", "must use"),  # a number missing
    ("3*8*1*1", "must use"),  # a number reused
    ("3*8*11", "must use"),  # digits glued together
    ("24", "must use"),
    ("8/(1-1)*3", "must use"),
    ("3*8/(1-1)", "must use"),
    ("-3+8*1", "expected a number"),  # no unary minus
    ("3**8*1", "expected a number"),  # no power
    ("3^8*1", "unexpected character"),
    ("3.0*8*1", "unexpected character"),
    ("03*8*1", "leading zeros"),
    ("3*8*1)", "unexpected"),
    ("(3*8*1", "unbalanced"),
    ("3 8 1", "unexpected"),
    ("__import__('os').system('true')", "unexpected character"),
    ("(" * 5000 + "3*8*1" + ")" * 5000, "nested deeper"),
    ("3*8*1" + "9" * 30, "leading zeros|19 digits"),
    ("٣*8*1", "unexpected character"),
])
def test_countdown_rejects(expr, reason):
    with pytest.raises(CountdownError, match=reason):
        countdown_value(expr, [3, 8, 1])


def test_countdown_division_by_zero():
    with pytest.raises(CountdownError, match="division by zero"):
        countdown_value("3/(1-1)", [3, 1, 1])
    assert not check_countdown("3/(1-1)", [3, 1, 1], 0)


def test_countdown_reward_is_graded_like_tinyzero():
    assert countdown_reward("<think>x</think><answer>8*3*1</answer>", CD) == 1.0
    assert countdown_reward("<answer>8*3+1</answer>", CD) == rewards.COUNTDOWN_FORMAT_SCORE
    assert countdown_reward("<answer>8*3</answer>", CD) == rewards.COUNTDOWN_FORMAT_SCORE
    assert countdown_reward("8*3*1", CD) == 0.0
    with pytest.raises(ValueError, match="numbers"):
        countdown_reward("\\boxed{1}", NUM)
    for p in countdown(20, seed=0, difficulty=4):
        assert countdown_reward(p.solution, p) == 1.0


@pytest.mark.parametrize("completion, prefilled, score", [
    ("<think>\n6*7=42\n</think>\n\n\\boxed{42}", False, 1.0),
    ("  \n<think>a\nb\nc</think><answer>42</answer> trailing words", False, 1.0),
    ("<think>6*7</think>\n\n\\boxed{41}", False, 1.0),  # format only, not correctness
    ("\\boxed{42}", False, 0.0),
    ("<think>6*7</think>", False, 0.0),  # no answer after the thinking
    ("<think>6*7</think> the answer is 42", False, 0.0),
    ("<think>\\boxed{42}</think>", False, 0.0),
    ("<think> \n </think>\\boxed{42}", False, 0.0),  # empty thinking
    ("So <think>6*7</think>\\boxed{42}", False, 0.0),  # not at the start
    ("<think>a</think><think>b</think>\\boxed{42}", False, 0.0),
    ("<think>a</think>\\boxed{42}</think>", False, 0.0),
    ("<think>a<think>b</think>\\boxed{42}", False, 0.0),
    ("<think>a</think>\\boxed{42", False, 0.0),
    ("", False, 0.0),
    ("6*7=42\n</think>\n\n\\boxed{42}", True, 1.0),
    ("<think>6*7=42\n</think>\n\n\\boxed{42}", True, 0.0),  # a second opening tag
    ("6*7=42 \\boxed{42}", True, 0.0),
])
def test_format_reward(completion, prefilled, score):
    assert format_reward(completion, NUM, think_prefilled=prefilled) == score


def test_overlong_penalty():
    def f(n):
        return overlong_penalty("", NUM, max_len=100, cache_len=20, length=n)

    assert [f(0), f(80), f(90), f(100), f(101), f(10**6)] == [0.0, 0.0, -0.5, -1.0, -1.0, -1.0]
    assert overlong_penalty("x" * 90, NUM, max_len=100, cache_len=20) == -0.5  # characters
    assert overlong_penalty("x" * 101, NUM, max_len=100, cache_len=0) == -1.0
    with pytest.raises(ValueError, match="cache_len"):
        overlong_penalty("", NUM, max_len=10, cache_len=20)


def test_language_consistency():
    assert language_consistency("<think>six times seven</think>\\boxed{42}", NUM) == 1.0
    assert language_consistency("12 + 30 = 42", NUM) == 1.0  # no letters
    assert language_consistency("abcd六七", NUM) == pytest.approx(4 / 6)
    assert language_consistency("六七は四十二", NUM, script="cjk") == 1.0
    assert language_consistency("шесть", Problem("?", "6", "file", {"script": "cyrillic"})) == 1.0
    with pytest.raises(ValueError, match="script"):
        language_consistency("a", NUM, script="klingon")


def test_call_turns_failures_into_counted_errors():
    assert call_component(lambda c, p: 1, "", NUM, {}) == ("ok", 1.0)
    assert call_component(lambda c, p: math.nan, "", NUM, {})[0] == "error"
    assert call_component(lambda c, p: 1 / 0, "", NUM, {})[0] == "error"


def test_reward_set_inline_weights_and_errors(caplog):
    bad_gold = Problem("?", "\\frac{", "file")
    with RewardSet(["accuracy", "format", "overlong", "countdown"], weights=[1.0, 0.5, 1.0, 2.0],
                   options={"overlong": {"max_len": 10, "cache_len": 4}}, workers=0) as rs:
        batch = rs.score(["<think>x</think>\\boxed{42}", "\\boxed{1}", "<answer>8*3*1</answer>"],
                         [NUM, bad_gold, CD], lengths=[3, 8, 20])
    np.testing.assert_array_equal(batch.components["accuracy"], [1, 0, 1])
    np.testing.assert_array_equal(batch.components["format"], [1, 0, 0])
    np.testing.assert_array_equal(batch.components["overlong"], [0, -0.5, -1])
    np.testing.assert_array_equal(batch.components["countdown"], [0, 0, 1])
    np.testing.assert_allclose(batch.total, [1.5, -0.5, 2.0])
    assert batch.errors == {"accuracy": 1, "format": 0, "overlong": 0, "countdown": 2}
    assert batch.timeouts == dict.fromkeys(batch.errors, 0)
    assert any("cannot be parsed" in m for m in batch.messages)
    assert "3 of 12 calls failed" in caplog.text
    metrics = batch.metrics()
    assert metrics["reward/total"] == pytest.approx(1.0) and metrics["reward_errors/countdown"] == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"names": []}, "non-empty"),
    ({"names": ["accuracy", "accuracy"]}, "repeats"),
    ({"names": ["helpfulness"]}, "unknown"),
    ({"names": ["accuracy"], "weights": [1, 2]}, "weights"),
    ({"names": ["overlong"]}, "max_len"),
    ({"names": ["format"], "options": {"format": {"prefill": True}}}, "not an option"),
    ({"names": ["format"], "options": {"accuracy": {}}}, "not in names"),
    ({"names": ["format"], "timeout_s": 0}, "timeout_s"),
])
def test_reward_set_validates_its_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RewardSet(**kwargs)


def test_registry_components_are_pure_functions():
    assert set(REWARDS) == {"accuracy", "format", "countdown", "overlong", "language"}
    assert all(callable(f) and f.__module__ == rewards.__name__ for f in REWARDS.values())


def test_workers_time_out_pathological_math_and_recover():
    hostile = ["\\boxed{9^{9^{9^{9}}}}", "\\boxed{" + "(" * 400 + "1" + ")" * 400 + "}"]
    completions = [hostile[0], "\\boxed{42}", hostile[1], "\\boxed{\\frac{84}{2}}", "\\boxed{4}"]
    with RewardSet(["accuracy", "format"], timeout_s=1.0, workers=2) as rs:
        rs.score(["\\boxed{42}"], [NUM])  # start the workers
        start = time.perf_counter()
        batch = rs.score(completions, [NUM] * len(completions))
        elapsed = time.perf_counter() - start
        again = rs.score(["\\boxed{42}"] * 4, [NUM] * 4)
    np.testing.assert_array_equal(batch.components["accuracy"], [0, 1, 0, 1, 0])
    assert batch.timeouts["accuracy"] == 2 and batch.errors["accuracy"] == 0
    assert batch.timeouts["format"] == 0
    assert elapsed < 6, elapsed  # ~1 s per hostile item (two workers) plus restarts in ms
    np.testing.assert_array_equal(again.components["accuracy"], [1, 1, 1, 1])
