"""``nanoseek chat``: an interactive terminal chat with streaming output.

    nanoseek chat --model out/r1 [--hide-reasoning] [--no-thinking] [--system TEXT]

The reasoning (``<think>…</think>``) streams dimmed, apart from the answer (``--hide-reasoning``
shows only how long it was). Turns accumulate in the history with the reasoning dropped, as
DeepSeek's API requires; the prefix cache reuses the history's KV blocks between turns.
Commands: ``/reset`` (new conversation), ``/exit`` (or Ctrl-D), ``/help``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from nanoseek.chat_template import THINK_END, THINK_START
from nanoseek.generate import add_model_args, load_llm, sampling_params

DIM, RESET = "\x1b[2m", "\x1b[0m"
HELP = "commands: /reset (new conversation), /exit (quit), /help"


class ReasoningSplitter:
    """Split streamed text into ``("reasoning" | "answer", text)`` pieces at ``</think>``.

    Starts inside the reasoning when the prompt opened a ``<think>`` block. A partial tag at
    the end of a delta is held back until the next one decides it.
    """

    def __init__(self, in_reasoning: bool) -> None:
        self.in_reasoning = in_reasoning
        self._held = ""
        self._answer_started = False

    def feed(self, delta: str) -> list[tuple[str, str]]:
        text, self._held = self._held + delta, ""
        pieces: list[tuple[str, str]] = []
        while text:
            tag = THINK_END if self.in_reasoning else THINK_START
            at = text.find(tag)
            if not self.in_reasoning and (self._answer_started or text.lstrip()[:1] not in
                                          ("", "<")):
                at = -1  # an answer only switches to reasoning if it opens with <think>
            if at >= 0:
                self._emit(pieces, text[:at])
                self.in_reasoning = not self.in_reasoning
                text = text[at + len(tag):]
                continue
            keep = _partial_suffix(text, tag)
            self._emit(pieces, text[: len(text) - keep])
            self._held = text[len(text) - keep :]
            break
        return pieces

    def flush(self) -> list[tuple[str, str]]:
        pieces: list[tuple[str, str]] = []
        self._emit(pieces, self._held)
        self._held = ""
        return pieces

    def _emit(self, pieces: list[tuple[str, str]], text: str) -> None:
        if not self.in_reasoning and not self._answer_started:
            text = text.lstrip("\n")
            self._answer_started = bool(text.strip())
        if text:
            pieces.append(("reasoning" if self.in_reasoning else "answer", text))


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ChatSession:
    """A conversation with a model: history (answers only), one streamed reply per turn."""

    def __init__(self, llm, params, thinking: bool = True, system: str | None = None) -> None:
        self.llm, self.params, self.thinking, self.system = llm, params, thinking, system
        self.messages: list[dict[str, Any]] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, user_text: str,
              show: Callable[[str, str], None]) -> dict[str, Any]:
        """Stream the reply to ``user_text`` through ``show(kind, text)``; returns stats."""
        self.messages.append({"role": "user", "content": user_text})
        prompt = self.llm.chat_prompt(self.messages, thinking=self.thinking)
        splitter = ReasoningSplitter(in_reasoning=self.thinking)
        parts = {"reasoning": "", "answer": ""}
        start = time.perf_counter()
        for out in self.llm.stream(prompt, self.params):
            for kind, text in splitter.feed(out.outputs[0].delta_text):
                parts[kind] += text
                show(kind, text)
        for kind, text in splitter.flush():
            parts[kind] += text
            show(kind, text)
        seconds = time.perf_counter() - start
        answer = parts["answer"].strip()
        self.messages.append({"role": "assistant", "content": answer})
        tokens = len(out.outputs[0].token_ids)
        return {"reasoning": parts["reasoning"], "answer": answer, "tokens": tokens,
                "seconds": seconds, "tokens_per_second": tokens / seconds if seconds else 0.0,
                "prompt_tokens": out.prompt_tokens, "cached_tokens": out.num_cached_tokens,
                "finish_reason": out.outputs[0].finish_reason}


class _Printer:
    """Terminal output: reasoning dimmed (or summarized), answer plain."""

    def __init__(self, hide_reasoning: bool, color: bool) -> None:
        self.hide, self.color = hide_reasoning, color
        self.kind: str | None = None
        self.reasoning_chars = 0

    def __call__(self, kind: str, text: str) -> None:
        if kind != self.kind:
            self._switch(kind)
        if kind == "reasoning":
            self.reasoning_chars += len(text)
            if self.hide:
                return
            text = f"{DIM}{text}{RESET}" if self.color else text
        sys.stdout.write(text)
        sys.stdout.flush()

    def _switch(self, kind: str) -> None:
        if self.kind == "reasoning" and self.hide:
            sys.stdout.write(f"(thought for {self.reasoning_chars} characters)")
        if kind == "reasoning":
            sys.stdout.write("(thinking…) " if self.hide else "")
            if not self.hide and self.color:
                sys.stdout.write(f"{DIM}thinking:{RESET}\n")
        elif self.kind == "reasoning":
            sys.stdout.write("\n\n")
        self.kind = kind


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanoseek chat", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.set_defaults(max_tokens=1024)
    parser.add_argument("--system", default=None, help="a system message")
    parser.add_argument("--no-thinking", action="store_true",
                        help="do not open a <think> block in the reply")
    parser.add_argument("--hide-reasoning", action="store_true",
                        help="show only the length of the reasoning, not its text")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    llm = load_llm(args)
    session = ChatSession(llm, sampling_params(args), thinking=not args.no_thinking,
                          system=args.system)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print(f"nanoseek chat — {args.model}. {HELP}")
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            session.reset()
            print("(new conversation)")
            continue
        if line == "/help" or line.startswith("/"):
            print(HELP)
            continue
        printer = _Printer(args.hide_reasoning, color)
        try:
            stats = session.reply(line, printer)
        except ValueError as error:  # e.g. the conversation outgrew the context
            session.messages.pop()
            print(f"\n(error: {error}; /reset to start over)")
            continue
        note = (f"[{stats['tokens']} tokens, {stats['tokens_per_second']:.1f} tok/s, prompt "
                f"{stats['prompt_tokens']} tokens ({stats['cached_tokens']} cached), "
                f"finish: {stats['finish_reason']}]")
        print(f"\n{DIM}{note}{RESET}" if color else f"\n{note}")


if __name__ == "__main__":
    sys.exit(main())
