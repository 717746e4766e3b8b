"""Request bodies of the OpenAI/DeepSeek API, validated; response objects, built.

Requests are pydantic models parsed straight from the raw body (``model_validate_json``) in
strict mode: a JSON string is not a number, NaN and infinities are refused, unknown fields are
ignored (OpenAI and DeepSeek add fields over time). Cross-field rules that pydantic cannot say
(``stream_options`` needs ``stream``, ``top_logprobs`` needs ``logprobs``, a ``prefix``
message must be the last) are checked by ``check()`` and raise ``APIError``.

Responses are plain dicts in the exact wire shapes (see /work/shared/reference/serving.md §1.3,
§2): ``chat.completion``, ``chat.completion.chunk``, ``text_completion``, and ``usage`` with
DeepSeek's ``prompt_cache_hit_tokens`` / ``prompt_cache_miss_tokens`` beside OpenAI's
``prompt_tokens_details.cached_tokens`` and ``completion_tokens_details.reasoning_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nanoseek.infer.sampling import MAX_LOGPROBS
from nanoseek.serve.errors import APIError, from_validation_error

MAX_N = 16
"""Most samples per request (``n`` times the number of prompts for ``/completions``)."""
MAX_STOP = 16
"""Most stop strings (DeepSeek's limit)."""
MAX_TOKENS_LIMIT = 2**31 - 1
SEED_RANGE = (-(2**63), 2**64 - 1)


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class ContentPart(_Body):
    """One part of a multi-part ``content`` (only ``{"type": "text", "text": ...}`` is served)."""

    type: str
    text: str | None = None


class ChatMessage(_Body):
    """A message. ``developer`` is OpenAI's new name for ``system``; ``prefix`` marks the last
    assistant message as a prefix to continue (DeepSeek's chat prefix completion)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    prefix: bool | None = None
    reasoning_content: str | None = None

    def text(self) -> str:
        """The content as one string (text parts joined); APIError for non-text parts."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise APIError(422, f"content part of type {part.type!r} is not supported: "
                               "this server takes text only", param="messages")
            parts.append(part.text)
        return "".join(parts)


class StreamOptions(_Body):
    include_usage: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object"]


class Thinking(_Body):
    """DeepSeek's ``thinking: {"type": "enabled" | "disabled"}`` (V3.2 era) switch."""

    type: Literal["enabled", "disabled"]


Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
StopField = str | Annotated[list[str], Field(max_length=MAX_STOP)] | None
Seed = Annotated[int, Field(ge=SEED_RANGE[0], le=SEED_RANGE[1])]


class _Sampling(_Body):
    """Fields shared by chat and legacy completions."""

    model: str
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    stop: StopField = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    seed: Seed | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    user: str | None = None

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if any(not s for s in stops):
            raise APIError(422, "stop: stop strings must not be empty", param="stop")
        return stops

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def check(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "stream_options should be set along with stream = true",
                           param="stream_options")


class ChatCompletionRequest(_Sampling):
    """``POST /chat/completions``."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    thinking: Thinking | None = None

    def check(self) -> None:
        super().check()
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs = true", param="top_logprobs")
        if self.tools:
            raise APIError(400, "tools: function calling is not supported by this server",
                           param="tools")
        for i, message in enumerate(self.messages):
            if message.role == "tool":
                raise APIError(400, f"messages.{i}: role 'tool' is not supported (this "
                               "server has no function calling)", param="messages")
            if message.prefix and (i != len(self.messages) - 1 or message.role != "assistant"):
                raise APIError(400, f"messages.{i}: prefix = true is allowed only on the last "
                               "message, which must be from the assistant", param="messages")
        if self.response_format and self.response_format.type == "json_object" and not any(
                "json" in m.text().lower() for m in self.messages):
            raise APIError(400, "'messages' must contain the word 'json' in some form to use "
                           "response_format of type 'json_object'", param="response_format")


class CompletionRequest(_Sampling):
    """``POST /completions`` (legacy text completion, FIM with ``suffix``)."""

    prompt: str | list[int] | list[str] | list[list[int]]
    suffix: str | None = None
    echo: bool | None = None
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    best_of: Annotated[int, Field(ge=1, le=MAX_N)] | None = None

    def prompts(self) -> list[str | list[int]]:
        """The prompts as a list: one string, or one token-id list, or several of either."""
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]  # type: ignore[list-item]
        return list(p)  # type: ignore[arg-type]

    def check(self) -> None:
        super().check()
        prompts = self.prompts()
        if not prompts:
            raise APIError(422, "prompt: give at least one prompt", param="prompt")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise APIError(422, "best_of: only best_of = n is supported", param="best_of")
        if len(prompts) * (self.n or 1) > MAX_N:
            raise APIError(422, f"prompt: {len(prompts)} prompts x n = {self.n or 1} exceeds "
                           f"{MAX_N} choices per request", param="prompt")
        if self.echo and self.logprobs is not None:
            raise APIError(422, "echo with logprobs needs prompt log-probs, which this server "
                           "does not compute; drop one of them", param="echo")


RequestT = TypeVar("RequestT", bound=_Sampling)


def parse_body(model: type[RequestT], raw: bytes) -> RequestT:
    """Validate ``raw`` JSON as ``model`` and run its cross-field checks; APIError if bad."""
    try:
        request = model.model_validate_json(raw)
    except ValidationError as error:
        raise from_validation_error(error) from None
    request.check()
    return request


# ------------------------------------------------------------------------------ responses
@dataclass
class Usage:
    """Token counts of one request. ``cache_hit`` comes from the engine's prefix cache."""

    prompt_tokens: int = 0
    cache_hit_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def cache_miss_tokens(self) -> int:
        return self.prompt_tokens - self.cache_hit_tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_cache_hit_tokens": self.cache_hit_tokens,
            "prompt_cache_miss_tokens": self.cache_miss_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cache_hit_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }


@dataclass(frozen=True)
class Head:
    """What every object and chunk of one response repeats."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str

    def wrap(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None
             ) -> dict[str, Any]:
        return {"id": self.id, "object": self.object, "created": self.created,
                "model": self.model, "system_fingerprint": self.system_fingerprint,
                "choices": choices, "usage": usage}


def chat_message(content: str, reasoning: str | None, thinking: bool) -> dict[str, Any]:
    """``message`` of a chat choice; ``reasoning_content`` only in thinking mode (DeepSeek)."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["reasoning_content"] = reasoning
    return message


def chat_choice(index: int, message: dict[str, Any], finish_reason: str | None,
                logprobs: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {"index": index, "message": message,
            "logprobs": None if logprobs is None else {"content": logprobs},
            "finish_reason": finish_reason}


def chunk_choice(index: int, delta: dict[str, Any], finish_reason: str | None = None,
                 logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One choice of a ``chat.completion.chunk``; ``finish_reason`` is always present."""
    return {"index": index, "delta": delta,
            "logprobs": None if logprobs is None else {"content": logprobs},
            "finish_reason": finish_reason}


def text_choice(index: int, text: str, finish_reason: str | None,
                logprobs: dict[str, Any] | None) -> dict[str, Any]:
    """One choice of a ``text_completion`` (streamed or not: the same shape)."""
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def models_list(ids: list[str], created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(i, created) for i in ids]}


def model_card(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "nanoseek"}
