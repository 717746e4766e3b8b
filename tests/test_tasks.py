"""Task generators, splits, templates and task files (nanoseek.data.tasks)."""

import json
import re
import subprocess
import sys

import pytest

from nanoseek.data import tasks
from nanoseek.data.tasks import (
    CHAT_INSTRUCTION,
    TASKS,
    Problem,
    arithmetic,
    chat_messages,
    countdown,
    distinct_problems,
    get_task,
    load_task_file,
    r1_zero_prompt,
    render_prompt,
    solution_completion,
    split_of,
    word_problems,
)
from nanoseek.rl.countdown import countdown_value
from nanoseek.rl.rewards import format_reward

DIFFICULTIES = {"arithmetic": (1, 2, 3, 4), "countdown": (2, 3, 4, 5), "word_problems": (1, 2, 3)}


def _as_tuple(p: Problem) -> tuple:
    return p.prompt, p.answer, p.task, p.solution, sorted(p.meta.items(), key=str)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_deterministic_in_seed(name):
    gen = get_task(name)
    a, b = gen(50, seed=7), gen(50, seed=7)
    assert [_as_tuple(p) for p in a] == [_as_tuple(p) for p in b]
    assert [p.prompt for p in a] != [p.prompt for p in gen(50, seed=8)]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_train_and_test_are_disjoint(name):
    gen = get_task(name)
    train = {p.meta["key"] for seed in (0, 1) for p in gen(1500, seed=seed)}
    test = {p.meta["key"] for seed in (0, 2) for p in gen(300, seed=seed, split="test")}
    assert train.isdisjoint(test)
    assert len(test) > 50  # the test split is not degenerate
    assert all(split_of(name, k) == "test" for k in test)
    assert {p.meta["split"] for p in gen(5, seed=0, split="test")} == {"test"}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_solutions_pass_their_own_checks(name):
    for difficulty in DIFFICULTIES[name]:
        for p in get_task(name)(60, seed=difficulty, difficulty=difficulty):
            assert p.solution is not None and p.check(p.solution), p
            assert format_reward(p.solution, p) == 1.0, p
            assert p.solution.startswith("<think>\n")
            assert p.solution.endswith("\n</think>\n\n\\boxed{" + p.answer + "}")
            assert not p.check(p.solution.replace("\\boxed{" + p.answer, "\\boxed{1" + p.answer))


def _equations(solution: str) -> list[tuple[str, str]]:
    return re.findall(r"([0-9][0-9+\-*/]*[+\-*/][0-9]+)=([0-9]+)", solution)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_written_step_is_true(name):
    for p in get_task(name)(200, seed=3, difficulty=DIFFICULTIES[name][-1]):
        steps = _equations(p.solution)
        assert steps, p.solution
        for lhs, rhs in steps:  # e.g. "7+6+1=14", "3+10-8-1=4", "478*6+2=..."
            assert countdown_value(lhs, [int(x) for x in re.findall(r"\d+", lhs)]) == int(rhs)


def test_arithmetic_values_and_difficulty():
    for p in arithmetic(300, seed=0, difficulty=3):
        a, b, op = p.meta["a"], p.meta["b"], p.meta["op"]
        assert int(p.answer) == {"+": a + b, "-": a - b, "*": a * b}[op]
        assert p.prompt == f"What is {a} {op} {b}?"
        assert len(str(a)) == 3 and len(str(b)) == (2 if op == "*" else 3)
    assert {p.meta["op"] for p in arithmetic(50, seed=0, ops="+")} == {"+"}
    assert any(int(p.answer) < 0 for p in arithmetic(200, seed=0, ops="-"))


def test_addition_solution_format():
    p = next(p for p in arithmetic(500, seed=0, difficulty=3, ops="+")
             if p.meta["a"] + p.meta["b"] >= 1000)
    lines = p.solution.split("\n")
    assert lines[0] == "<think>" and lines[-3:-1] == ["</think>", ""]
    assert re.fullmatch(r"\d\+\d\+[01]=\d+, write \d carry [01] -> \d", lines[1])
    assert lines[-4] == f"write carry 1 -> {p.answer}"


def test_fallible_teacher_slips_carries_and_borrows():
    exact = arithmetic(600, seed=4, ops="+-")
    fallible = arithmetic(600, seed=4, ops="+-", slip_rate=0.3)
    assert [p.prompt for p in fallible] == [p.prompt for p in exact]  # same problems
    assert [p.answer for p in fallible] == [p.answer for p in exact]  # the truth is unchanged
    slipped = [p for p in fallible if p.meta.get("slipped")]
    assert 0.1 < len(slipped) / len(fallible) < 0.3  # ~60% of problems carry or borrow once
    for p, q in zip(fallible, exact, strict=True):
        assert p.check(p.solution) is not bool(p.meta.get("slipped"))
        if not p.meta.get("slipped"):
            assert p.solution == q.solution
        for lhs, rhs in _equations(p.solution):  # the teacher's sums stay right
            assert countdown_value(lhs, [int(x) for x in re.findall(r"\d+", lhs)]) == int(rhs)
    always = arithmetic(50, seed=0, difficulty=3, ops="+", slip_rate=1.0)
    for p in always:  # every carry forgotten: digit-wise sums mod 10
        a, b = (str(p.meta[k]) for k in "ab")
        no_carry = "".join(str((int(x) + int(y)) % 10) for x, y in zip(a, b, strict=True))
        assert p.solution.endswith(f"\\boxed{{{int(no_carry)}}}")
    with pytest.raises(ValueError, match="slip_rate"):
        arithmetic(3, slip_rate=1.5)


def test_countdown_problems():
    for difficulty in (3, 4):
        for p in countdown(200, seed=1, difficulty=difficulty):
            numbers, target = p.meta["numbers"], p.meta["target"]
            assert len(numbers) == difficulty and all(1 <= n <= 9 for n in numbers)
            assert 0 <= target <= 99 and str(target) in p.prompt and str(numbers) in p.prompt
            assert countdown_value(p.answer, numbers) == target
    assert all(n <= 25 for p in countdown(50, seed=0, max_number=25) for n in p.meta["numbers"])


def test_word_problems_cover_templates_and_scale():
    problems = word_problems(300, seed=0, difficulty=1)
    assert len({p.meta["template"] for p in problems}) == 6
    assert all(int(p.answer) >= 0 for p in problems)
    assert max(int(p.answer) for p in word_problems(50, seed=0, difficulty=3)) > 1000


@pytest.mark.parametrize("kwargs, field", [
    ({"split": "valid"}, "split"), ({"difficulty": 0}, "difficulty"), ({"n": -1}, "n"),
    ({"difficulty": 2.5}, "difficulty"),
])
def test_bad_generator_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        arithmetic(**{"n": 3, **kwargs})
    with pytest.raises(ValueError, match="ops"):
        arithmetic(3, ops="/")
    with pytest.raises(ValueError, match="task="):
        get_task("sudoku")


def test_small_problem_spaces_repeat_and_empty_splits_raise(monkeypatch):
    problems = arithmetic(100, difficulty=1, ops="+", split="test")  # drawn with replacement
    assert len({p.meta["key"] for p in problems}) < 20
    monkeypatch.setattr(tasks, "TEST_PERCENT", 0)
    with pytest.raises(ValueError, match="difficulty"):
        arithmetic(1, difficulty=1, split="test")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_distinct_problems_are_the_first_distinct_of_the_draw(name):
    drawn = get_task(name)(400, seed=3, split="test")
    seen, firsts = set(), []
    for p in drawn:
        if p.meta["key"] not in seen:
            seen.add(p.meta["key"])
            firsts.append(p)
    firsts = firsts[:60]
    picked = distinct_problems(name, 60, seed=3)
    assert len({p.meta["key"] for p in picked}) == 60
    assert [_as_tuple(p) for p in picked] == [_as_tuple(p) for p in firsts]


def test_distinct_problems_stop_at_the_size_of_the_split(caplog):
    keys = {p.meta["key"] for p in arithmetic(3000, difficulty=1, ops="+", split="test")}
    with caplog.at_level("WARNING"):
        picked = distinct_problems("arithmetic", 50, difficulty=1, ops="+")
    assert {p.meta["key"] for p in picked} == keys and len(picked) == len(keys) < 50
    assert "only" in caplog.text and "distinct test problems" in caplog.text


def test_prompt_templates():
    p = arithmetic(1, seed=0)[0]
    text = r1_zero_prompt(p)
    assert text.startswith("A conversation between User and Assistant. The user asks a question")
    assert "<think> </think>" in text and "\\boxed{}" in text
    assert text.endswith(f"User: {p.prompt}\nAssistant: ")
    assert r1_zero_prompt(p, think_prefilled=True) == text + "<think>\n"
    assert render_prompt(p) == p.prompt + "\n"
    assert p.text() == p.prompt + "\n" + p.solution
    assert p.text("r1_zero") == text + p.solution
    completion = solution_completion(p, think_prefilled=True)
    assert render_prompt(p, "plain", think_prefilled=True) + completion == p.text()
    assert format_reward(completion, p, think_prefilled=True) == 1.0
    assert p.check(completion)
    assert chat_messages(p) == [{"role": "user", "content": f"{p.prompt}\n{CHAT_INSTRUCTION}"}]
    assert chat_messages(p, with_solution=True)[1] == {"role": "assistant", "content": p.solution}
    with pytest.raises(ValueError, match="template"):
        render_prompt(p, "alpaca")
    with pytest.raises(ValueError, match="no solution"):
        Problem("q", "1", "file").text()


def test_solutions_fit_the_r1_chat_template():
    from nanoseek.chat_template import EOS_TOKEN, render_text

    for p in arithmetic(3, seed=0) + countdown(3, seed=0) + word_problems(3, seed=0):
        prompt = render_text(chat_messages(p), add_generation_prompt=True)  # ends in <think>\n
        completion = solution_completion(p, think_prefilled=True)
        assert render_text(chat_messages(p, with_solution=True)) == prompt + completion + EOS_TOKEN
        assert format_reward(completion, p, think_prefilled=True) == 1.0


def _write(tmp_path, lines):
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_task_file(tmp_path):
    gsm = {"question": "Tom has 3 bags of 4 apples. How many?",
           "answer": "3 bags of 4 is <<3*4=12>>12 apples.\n#### 1,200"}
    path = _write(tmp_path, [
        json.dumps({"prompt": "What is $\\frac{1}{2}+\\frac{1}{4}$?", "answer": "\\frac{3}{4}",
                    "source": "mine"}),
        "",
        json.dumps(gsm),
        json.dumps({"prompt": "2+2?", "answer": 4}),
        json.dumps({"prompt": "Reach 6 with [2, 3]", "answer": "2*3", "task": "countdown",
                    "numbers": [2, 3], "target": 6}),
    ])
    a, b, c, d = load_task_file(path)
    assert (a.answer, a.task, a.meta) == ("\\frac{3}{4}", "file", {"source": "mine"})
    assert a.check("<think>\nsum\n</think>\n\n\\boxed{0.75}")
    assert not a.check("\\boxed{0.7}")
    assert (b.prompt, b.answer) == (gsm["question"], "1200")
    assert b.solution == "<think>\n3 bags of 4 is 12 apples.\n</think>\n\n\\boxed{1200}"
    assert b.check(b.solution) and c.answer == "4" and c.check("\\boxed{4}")
    assert d.task == "countdown" and d.check("\\boxed{3*2}")


def test_generated_problems_round_trip_through_a_file(tmp_path):
    problems = arithmetic(5, seed=0) + countdown(5, seed=0) + word_problems(5, seed=0)
    path = _write(tmp_path, [json.dumps(p.to_record()) for p in problems])
    assert [_as_tuple(p) for p in load_task_file(path)] == [_as_tuple(p) for p in problems]


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "x", "answer": "1"', "not valid JSON"),
    ('["x", "1"]', "JSON object"),
    ('{"prompt": "x"}', "answer"),
    ('{"prompt": "x", "answer": "  "}', "answer"),
    ('{"text": "x", "answer": "1"}', "prompt"),
    ('{"question": "x", "answer": "it is 4"}', "####"),
    ('{"prompt": "x", "answer": "1", "solution": 3}', "solution"),
    ('{"prompt": "x", "answer": "1", "task": "countdown"}', "numbers"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    path = _write(tmp_path, ['{"prompt": "ok", "answer": "1"}', "", line])
    with pytest.raises(ValueError, match=message) as info:
        load_task_file(path)
    assert f"{path}:3:" in str(info.value)


def test_missing_or_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_task_file(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="empty"):
        load_task_file(_write(tmp_path, [""]))


def test_import_is_light():
    code = ("import sys, nanoseek.data.tasks, nanoseek.rl.rewards; "
            "print(sorted(m for m in ('torch', 'sympy', 'math_verify') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
