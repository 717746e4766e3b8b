"""``nanoseek generate`` and ``nanoseek chat``: run in-process on a tiny saved model, with
stdin lines fed to the chat."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest
import torch

from nanoseek import cli
from nanoseek.chat import ChatSession, ReasoningSplitter
from nanoseek.checkpoint import save_pretrained
from nanoseek.config import get_preset
from nanoseek.model import build_model
from nanoseek.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random DeepSeek-V3 (with MTP) and a trained tokenizer in one HF directory."""
    corpus = tmp_path_factory.mktemp("corpus")
    (corpus / "c.txt").write_text("the quick brown fox jumps over the lazy dog.\n\n" * 30)
    tok = train_tokenizer([corpus], vocab_size=300)
    torch.manual_seed(0)
    model = build_model(get_preset("tiny").replace(vocab_size=tok.vocab_size))
    path = tmp_path_factory.mktemp("model")
    save_pretrained(model, path)
    tok.save_pretrained(path)
    return path


pytestmark = pytest.mark.usefixtures("one_thread")


def test_generate_json(model_dir, capsys):
    argv = ["generate", "--model", str(model_dir), "--prompt", "the quick", "--max-tokens", "5",
            "--temperature", "0", "--json"]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["token_ids"]) <= 5 and result["finish_reason"] in ("stop", "length")
    assert result["prompt_tokens"] > 0 and result["tokens_per_second"] > 0
    assert cli.main(argv) == 0  # deterministic at temperature 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == result["token_ids"]


def test_generate_streams_text_and_reports_errors(model_dir, capsys):
    argv = ["generate", "--model", str(model_dir), "--prompt", "the lazy dog", "--chat",
            "--max-tokens", "4", "--seed", "1", "--speculative", "1"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "tok/s" in captured.err and "finish:" in captured.err
    too_long = "fox " * 3000
    assert cli.main(["generate", "--model", str(model_dir), "--prompt", too_long]) == 2
    assert "max_model_len" in capsys.readouterr().err


def test_chat_session_over_stdin(model_dir, monkeypatch, capsys):
    first = "the quick brown fox jumps over the lazy dog " * 3
    lines = f"{first}\n/help\nand again\n/reset\nthe fox\n/exit\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert cli.main(["chat", "--model", str(model_dir), "--max-tokens", "6", "--seed", "0",
                     "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert out.count("tok/s") == 3 and "(new conversation)" in out and "/reset" in out
    # the second turn reused the first turn's full blocks (up to its <think>) from the cache
    cached = [int(part.split("(")[1].split()[0]) for part in out.split("prompt ")[1:]]
    assert cached[0] == 0 and cached[1] > 0


def test_reasoning_splitter_handles_split_tags():
    splitter = ReasoningSplitter(in_reasoning=True)
    pieces = []
    for delta in ["Let me", " think.\n</th", "ink>\n\nThe answer", " is 4."]:
        pieces += splitter.feed(delta)
    pieces += splitter.flush()
    reasoning = "".join(t for k, t in pieces if k == "reasoning")
    answer = "".join(t for k, t in pieces if k == "answer")
    assert reasoning == "Let me think.\n" and answer == "The answer is 4."
    plain = ReasoningSplitter(in_reasoning=False)
    got = plain.feed("<think>hm</think>ok, not <think> here") + plain.flush()
    assert got == [("reasoning", "hm"), ("answer", "ok, not <think> here")]


class _StubLLM:
    """Streams a scripted reply and records the conversations it was given."""

    def __init__(self, reply: str) -> None:
        self.reply, self.prompts = reply, []

    def chat_prompt(self, messages, thinking=True):
        self.prompts.append([dict(m) for m in messages])
        return [1, 2, 3]

    def stream(self, prompt, params):
        for i in range(0, len(self.reply), 3):
            delta = self.reply[i : i + 3]
            yield SimpleNamespace(outputs=[SimpleNamespace(delta_text=delta, token_ids=[0] * i,
                                                           finish_reason="stop")],
                                  prompt_tokens=3, num_cached_tokens=0)


def test_history_drops_reasoning():
    llm = _StubLLM("step one, step two\n</think>\n\nFour.")
    session = ChatSession(llm, params=None, system="be brief")
    shown = []
    stats = session.reply("2+2?", lambda kind, text: shown.append((kind, text)))
    assert stats["answer"] == "Four." and stats["reasoning"] == "step one, step two\n"
    session.reply("and 3+3?", lambda kind, text: None)
    assert llm.prompts[1] == [{"role": "system", "content": "be brief"},
                              {"role": "user", "content": "2+2?"},
                              {"role": "assistant", "content": "Four."},
                              {"role": "user", "content": "and 3+3?"}]
    session.reset()
    assert session.messages == [{"role": "system", "content": "be brief"}]
