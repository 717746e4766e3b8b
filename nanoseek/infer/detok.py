"""Streaming detokenization: text deltas that are whole characters and never half a stop string.

Byte-level BPE can split one character (an emoji, a CJK ideograph) across several tokens, and
some decoders (SentencePiece's Metaspace) change a token's text depending on what precedes it.
So, as vLLM and TGI do, ``IncrementalDetokenizer`` decodes a short sliding window of tokens: the
text of ``ids[prefix_offset:]`` minus the text of ``ids[prefix_offset:read_offset]`` is the new
text, emitted only when it does not end in U+FFFD (an incomplete UTF-8 sequence). The window
then slides forward. Emitted deltas concatenate to ``tokenizer.decode(output_ids)``.

Stop strings are matched on that text: the longest suffix that is a prefix of some stop string
is held back until it is known not to complete one; when one completes (the earliest to end,
then the longest), the text after it is dropped, the stop string itself too unless
``include_stop_str_in_output``, and the detokenizer is ``stopped``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

PROMPT_CONTEXT_TOKENS = 5
"""Prompt tokens decoded as left context of the first output tokens (vLLM uses 5)."""
REPLACEMENT_CHARACTER = "\ufffd"


class Decoder(Protocol):
    """What the detokenizer needs of a tokenizer (``nanoseek.tokenizer.Tokenizer`` has it)."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...


class IncrementalDetokenizer:
    """Turn a stream of generated token ids into safe text deltas for one sequence.

    ``add(ids)`` returns the new text that is safe to show; ``finish()`` flushes what is held
    (an incomplete character at the very end is then shown as U+FFFD, as a full decode would).
    After a stop string matches, ``stopped`` is True, ``stop_reason`` is that string and further
    ``add`` calls return "". ``text`` is everything emitted so far.
    """

    def __init__(
        self,
        tokenizer: Decoder,
        prompt_ids: Sequence[int] | None = None,
        skip_special_tokens: bool = True,
        stop: str | Sequence[str] = (),
        include_stop_str_in_output: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.stop = [stop] if isinstance(stop, str) else list(stop)
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must hold non-empty strings, got {self.stop!r}")
        self.include_stop_str_in_output = include_stop_str_in_output
        self.text = ""
        self.stopped = False
        self.stop_reason: str | None = None
        self._finished = False
        self._ids = self._prompt_context(list(prompt_ids or []))
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._held = ""  # decoded text held back because it may start a stop string
        self._max_hold = max((len(s) - 1 for s in self.stop), default=0)

    def add(self, token_ids: Sequence[int]) -> str:
        """Append generated ``token_ids``; return the text newly safe to emit (maybe "")."""
        if self._finished:
            raise RuntimeError("add() called after finish()")
        if self.stopped or not token_ids:
            return ""
        self._ids.extend(token_ids)
        return self._emit(self._window_delta(force=False), final=False)

    def finish(self) -> str:
        """Flush held text at the end of the sequence; return it (maybe "")."""
        if self._finished or self.stopped:
            self._finished = True
            return ""
        self._finished = True
        return self._emit(self._window_delta(force=True), final=True)

    def _prompt_context(self, prompt_ids: list[int]) -> list[int]:
        """The last prompt tokens, without a trailing incomplete character."""
        context = prompt_ids[-PROMPT_CONTEXT_TOKENS:]
        while context and self._decode(context).endswith(REPLACEMENT_CHARACTER):
            context.pop()
        return context

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _window_delta(self, force: bool) -> str:
        """New text of the window; slide it when the text is complete (or ``force``)."""
        prefix_text = self._decode(self._ids[self._prefix_offset:self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset:])
        complete = not full_text.endswith(REPLACEMENT_CHARACTER)
        if len(full_text) <= len(prefix_text) or not (complete or force):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return full_text[len(prefix_text):]

    def _emit(self, new_text: str, final: bool) -> str:
        """Cut ``held + new_text`` at a stop string or hold back a possible stop prefix."""
        pending = self._held + new_text
        match = self._find_stop(pending)
        if match is not None:
            start, stop = match
            out = pending[:start + len(stop) if self.include_stop_str_in_output else start]
            self._held, self.stopped, self.stop_reason = "", True, stop
        else:
            hold = 0 if final else self._stop_prefix_length(pending)
            out, self._held = pending[:len(pending) - hold], pending[len(pending) - hold:]
        self.text += out
        return out

    def _find_stop(self, text: str) -> tuple[int, str] | None:
        """(start, stop string) of the stop occurrence ending first (then longest), or None."""
        best: tuple[int, int, str] | None = None
        for stop in self.stop:
            start = text.find(stop)
            if start >= 0 and (best is None or (start + len(stop), start) < best[:2]):
                best = (start + len(stop), start, stop)
        return None if best is None else (best[1], best[2])

    def _stop_prefix_length(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        for length in range(min(self._max_hold, len(text)), 0, -1):
            suffix = text[-length:]
            if any(stop.startswith(suffix) for stop in self.stop):
                return length
        return 0
