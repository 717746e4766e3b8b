"""Split a thinking model's answer into ``reasoning_content`` and ``content`` at ``</think>``.

DeepSeek-R1's generation prompt already ends with ``<think>\\n`` (``render_chat(...,
thinking=True)``), so the model writes only the thought, then ``</think>``, then the answer:
the parser starts in the reasoning state (vLLM's DeepSeek-R1 parser does the same; parsers that
wait for an opening tag put the whole thought into ``content``: vllm#12999). Streaming-safe:

* a text that may be the start of ``</think>`` is held back until the next piece decides it;
* the newlines that R1 writes around the tags (``…\\n</think>\\n\\n answer``) are dropped: the
  reasoning's trailing ones and the answer's leading ones;
* the reasoning's leading newlines, and one ``<think>`` the model writes again at the very start
  (with the newlines after it), are dropped.

When no ``</think>`` comes before the end (the answer was cut by ``max_tokens``, or the model
never closed its thought), everything is reasoning, streamed or not, so a streamed and a
non-streamed answer always split the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from nanoseek.chat_template import THINK_END, THINK_START


class ReasoningParser:
    """Feed text deltas, get ``(reasoning_delta, content_delta)`` pairs.

    ``in_reasoning=False`` starts in the answer (e.g. a prefix completion whose prompt already
    closed the thought); then the parser passes text through unchanged.
    """

    def __init__(self, in_reasoning: bool = True) -> None:
        self.in_reasoning = in_reasoning
        self._held = ""
        self._at_start = in_reasoning  # leading newlines and a re-emitted "<think>" are dropped
        self._think_dropped = False
        self._answer_started = not in_reasoning  # leading newlines of the answer are dropped
        self.reasoning = ""
        self.content = ""

    def feed(self, text: str) -> tuple[str, str]:
        """Consume ``text``; return the reasoning and content that are now certain."""
        return self._step(text, final=False)

    def finish(self) -> tuple[str, str]:
        """Flush what is held at the end of the output."""
        return self._step("", final=True)

    def _step(self, text: str, final: bool) -> tuple[str, str]:
        if not self.in_reasoning:
            return "", self._answer(text)
        pending = self._held + text
        if self._at_start:
            pending = pending.lstrip("\n")
            if not self._think_dropped and pending.startswith(THINK_START):
                pending, self._think_dropped = pending[len(THINK_START):].lstrip("\n"), True
            if not final and (not pending or (not self._think_dropped
                                              and THINK_START.startswith(pending))):
                self._held = pending  # only newlines so far, or may become "<think>": wait
                return "", ""
            self._at_start = False
        end = pending.find(THINK_END)
        if end >= 0:
            self._held, self.in_reasoning = "", False
            reasoning = pending[:end].rstrip("\n")
            self.reasoning += reasoning
            return reasoning, self._answer(pending[end + len(THINK_END):])
        hold = 0 if final else _held_suffix(pending)
        reasoning, self._held = pending[: len(pending) - hold], pending[len(pending) - hold:]
        self.reasoning += reasoning
        return reasoning, ""

    def _answer(self, text: str) -> str:
        if not self._answer_started:
            text = text.lstrip("\n")
            self._answer_started = bool(text)
        self.content += text
        return text


def _held_suffix(text: str) -> int:
    """Length of the suffix to hold: trailing newlines plus a proper prefix of ``</think>``."""
    partial = 0
    for length in range(min(len(THINK_END) - 1, len(text)), 0, -1):
        if THINK_END.startswith(text[-length:]):
            partial = length
            break
    body = text[: len(text) - partial]
    return partial + len(body) - len(body.rstrip("\n"))


def count_reasoning_tokens(token_ids: Sequence[int], think_end_id: int | None,
                           starts_in_reasoning: bool) -> int:
    """Output tokens of the thought: up to and including ``</think>`` (all of them when it never
    came); 0 when the output did not start inside a thought. Token-exact, as
    ``completion_tokens_details.reasoning_tokens`` wants."""
    if not starts_in_reasoning:
        return 0
    if think_end_id is not None and think_end_id in token_ids:
        return list(token_ids).index(think_end_id) + 1
    return len(token_ids)
