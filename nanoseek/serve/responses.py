"""Engine outputs → OpenAI/DeepSeek responses: whole objects or SSE chunks.

``Collector`` folds the incremental ``RequestOutput`` of a ``Plan``'s jobs into per-choice
state (text split into reasoning and answer, token ids, log-probs, finish reason) and usage,
returning each step's per-choice ``Delta``. The renderers turn deltas into stream chunks and
the final state into a ``chat.completion`` / ``text_completion`` object. SSE framing is
``data: <one-line JSON>\\n\\n``; ``: keep-alive`` comment frames are ignored by SSE clients.

Chat stream order (per choice): a role chunk (``{"role": "assistant", "content": ""}``; in
thinking mode ``content: null, reasoning_content: ""`` as DeepSeek's reasoner sends), then
``reasoning_content`` deltas (``content: null``), then ``content`` deltas (``reasoning_content:
null`` in thinking mode), then ``delta: {}`` with the finish reason; after every choice, the
``choices: []`` usage chunk when ``stream_options.include_usage``, then ``data: [DONE]``. Every
chunk carries ``"finish_reason"`` and ``"usage": null`` explicitly.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

from nanoseek.serve.prompts import Plan
from nanoseek.serve.reasoning import ReasoningParser, count_reasoning_tokens
from nanoseek.serve.schemas import (
    Usage,
    chat_choice,
    chat_message,
    chunk_choice,
    text_choice,
)
from nanoseek.tokenizer import Tokenizer

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


def sse(payload: dict[str, Any]) -> bytes:
    """One SSE event holding ``payload`` as one-line JSON."""
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8") + b"\n\n"


@dataclass
class Delta:
    """What one engine step added to one choice."""

    index: int
    reasoning: str = ""
    content: str = ""
    logprobs: list[tuple[int, dict[int, float]]] = field(default_factory=list)
    finish_reason: str | None = None
    first: bool = False  # the choice's first delta (send the role chunk before it)
    text_offset: int = 0  # characters of the choice's log-prob tokens before this delta


@dataclass
class Choice:
    index: int
    parser: ReasoningParser | None
    reasoning: str = ""
    content: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[tuple[int, dict[int, float]]] = field(default_factory=list)
    finish_reason: str | None = None
    started: bool = False
    logprob_chars: int = 0  # characters of the tokens in ``logprobs``


class Collector:
    """Per-choice state and usage of one plan, fed with ``RequestOutput`` objects."""

    def __init__(self, plan: Plan, tokenizer: Tokenizer) -> None:
        self.plan, self.tokenizer = plan, tokenizer
        self.think_end_id = tokenizer.think_end_id
        self.choices = [Choice(i, ReasoningParser(plan.starts_in_reasoning)
                               if plan.thinking else None) for i in range(plan.num_choices)]
        self._first_choice = {j.request_id: j.first_choice for j in plan.jobs}
        self._prompt = {j.request_id: (len(j.prompt_ids), 0) for j in plan.jobs}
        self._seen: set[str] = set()

    def add(self, output: Any) -> list[Delta]:
        """Fold one ``RequestOutput``; return the deltas of the choices it changed."""
        self._seen.add(output.request_id)
        self._prompt[output.request_id] = (output.prompt_tokens, output.num_cached_tokens)
        base = self._first_choice[output.request_id]
        # the engine reports a finished completion again on every later step of its request
        # (n > 1): a choice that already has its finish reason gets no more deltas
        return [self._add_completion(self.choices[base + c.index], c) for c in output.outputs
                if (c.delta_text or c.delta_token_ids or c.finished)
                and self.choices[base + c.index].finish_reason is None]

    def _add_completion(self, choice: Choice, c: Any) -> Delta:
        delta = Delta(choice.index, first=not choice.started)
        choice.started = True
        if c.logprobs is not None:
            new = c.logprobs[len(choice.logprobs):]
            ids = c.token_ids[len(choice.logprobs):len(choice.logprobs) + len(new)]
            delta.logprobs = list(zip(ids, new, strict=True))
            choice.logprobs += delta.logprobs
            delta.text_offset = choice.logprob_chars
            choice.logprob_chars += sum(len(token_text(self.tokenizer, t)) for t in ids)
        choice.token_ids = c.token_ids  # a fresh list per output
        text = c.delta_text
        if choice.parser is None:
            delta.content = text
        else:
            delta.reasoning, delta.content = choice.parser.feed(text)
            if c.finished:
                reasoning, content = choice.parser.finish()
                delta.reasoning += reasoning
                delta.content += content
        choice.reasoning += delta.reasoning
        choice.content += delta.content
        if c.finished:
            choice.finish_reason = delta.finish_reason = c.finish_reason
        return delta

    def usage(self) -> Usage:
        """Token counts so far: prompts of the jobs the engine has started, every output."""
        prompts = [self._prompt[j] for j in self._seen]
        return Usage(
            prompt_tokens=sum(p for p, _ in prompts),
            cache_hit_tokens=sum(h for _, h in prompts),
            completion_tokens=sum(len(c.token_ids) for c in self.choices),
            reasoning_tokens=sum(count_reasoning_tokens(c.token_ids, self.think_end_id,
                                                        self.plan.starts_in_reasoning)
                                 for c in self.choices))

    @property
    def finish(self) -> str:
        """A one-word summary for the ledger: the first choice's finish reason or 'abort'."""
        return self.choices[0].finish_reason or "abort" if self.choices else "abort"

    # ------------------------------------------------------------------ rendering
    def chunks(self, delta: Delta) -> list[dict[str, Any]]:
        """The stream chunks (dicts) for one delta."""
        head, plan = self.plan.head, self.plan
        i, out = delta.index, []
        logprobs = (self._logprobs(delta.logprobs, delta.text_offset)
                    if plan.logprobs is not None else None)
        if plan.kind == "completion":
            text = delta.content
            if delta.first and plan.echo:
                text = plan.jobs[self._job_of(i)].prompt_text + text
            if text or delta.logprobs or delta.finish_reason:
                out.append(head.wrap([text_choice(i, text, delta.finish_reason, logprobs)]))
            return out
        if delta.first:
            role = ({"role": "assistant", "content": None, "reasoning_content": ""}
                    if plan.thinking else {"role": "assistant", "content": ""})
            out.append(head.wrap([chunk_choice(i, role)]))
        pieces = []
        if delta.reasoning:
            pieces.append({"content": None, "reasoning_content": delta.reasoning})
        if delta.content:
            pieces.append({"content": delta.content} | (
                {"reasoning_content": None} if plan.thinking else {}))
        if logprobs and not pieces:
            pieces.append({"content": ""})
        for k, piece in enumerate(pieces):
            out.append(head.wrap([chunk_choice(i, piece, logprobs=logprobs if k == 0 else None)]))
        if delta.finish_reason:
            out.append(head.wrap([chunk_choice(i, {}, delta.finish_reason)]))
        return out

    def usage_chunk(self) -> dict[str, Any]:
        return self.plan.head.wrap([], self.usage().to_dict())

    def response(self) -> dict[str, Any]:
        """The whole ``chat.completion`` / ``text_completion`` object."""
        plan, choices = self.plan, []
        for c in self.choices:
            lp = self._logprobs(c.logprobs) if plan.logprobs is not None else None
            if plan.kind == "chat":
                message = chat_message(c.content, c.reasoning, plan.thinking)
                choices.append(chat_choice(c.index, message, c.finish_reason, lp))
            else:
                prefix = plan.jobs[self._job_of(c.index)].prompt_text if plan.echo else ""
                choices.append(text_choice(c.index, prefix + c.content, c.finish_reason, lp))
        return plan.head.wrap(choices, self.usage().to_dict())

    def _job_of(self, choice_index: int) -> int:
        n = self.plan.jobs[0].params.n
        return choice_index // n

    def _logprobs(self, entries: list[tuple[int, dict[int, float]]], start: int = 0) -> Any:
        """Chat ``logprobs.content`` or a completion's ``logprobs`` object, whose
        ``text_offset`` counts from the choice's first token (``start`` of them before)."""
        k = self.plan.logprobs or 0
        if self.plan.kind == "chat":
            return [self._chat_logprob(t, e, k) for t, e in entries]
        tokens = [token_text(self.tokenizer, t) for t, _ in entries]
        offsets, pos = [], start
        for text in tokens:
            offsets.append(pos)
            pos += len(text)
        return {"tokens": tokens, "token_logprobs": [e[t] for t, e in entries],
                "top_logprobs": [{token_text(self.tokenizer, a): v for a, v in _top(e, k)}
                                 for _, e in entries] if k else None,
                "text_offset": offsets}

    def _chat_logprob(self, token: int, entry: dict[int, float], k: int) -> dict[str, Any]:
        def item(t: int, value: float) -> dict[str, Any]:
            return {"token": token_text(self.tokenizer, t), "logprob": value,
                    "bytes": list(token_bytes(self.tokenizer, t))}

        return item(token, entry[token]) | {"top_logprobs": [item(a, v) for a, v in
                                                             _top(entry, k)]}


def _top(entry: dict[int, float], k: int) -> list[tuple[int, float]]:
    """The ``k`` most likely tokens of an engine log-prob entry (sampled token + alternatives)."""
    return sorted(entry.items(), key=lambda kv: -kv[1])[:k]


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level BPE's printable-character → byte map (inverse of bytes_to_unicode)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = dict.fromkeys(printable), 0
    mapping = {chr(b): b for b in printable}
    for b in range(256):
        if b not in chars:
            mapping[chr(256 + extra)] = b
            extra += 1
    return mapping


def token_bytes(tokenizer: Tokenizer, token_id: int) -> bytes:
    """The raw bytes of one token (byte-level pieces mapped back; others as UTF-8)."""
    piece = tokenizer.id_to_token(token_id) or ""
    decoder = _byte_decoder()
    if piece and all(ch in decoder for ch in piece):
        return bytes(decoder[ch] for ch in piece)
    return piece.encode("utf-8")


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    """The text of one token; an incomplete UTF-8 piece as ``bytes:\\xNN…`` (OpenAI's form)."""
    raw = token_bytes(tokenizer, token_id)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
