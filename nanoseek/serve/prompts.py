"""From a validated request to engine work: prompt token ids, ``SamplingParams``, thinking mode.

A ``Plan`` is one HTTP request's work: one or more ``Job`` (engine requests; ``/completions``
takes several prompts), each producing ``params.n`` choices, numbered ``job.first_choice + i``.

Thinking mode (chat only). The served name follows ``--reasoning`` (auto: on when the tokenizer
has single ``<think>`` / ``</think>`` tokens); DeepSeek's aliases pick the mode:
``deepseek-reasoner`` thinks, ``deepseek-chat`` does not; the V3.2-era
``thinking: {"type": "enabled" | "disabled"}`` field overrides both. Thinking renders the
generation prompt ending in ``<think>\\n``, so the answer is parsed starting in the reasoning
state. Prefix completion (last message ``{"role": "assistant", "prefix": true}``) continues the
given text without an end-of-turn token; in thinking mode the thought is closed first (with the
message's ``reasoning_content``, possibly empty) and the continuation is answer text.

``deepseek-reasoner`` also behaves as DeepSeek's reasoner does: ``temperature``, ``top_p`` and
the two penalties are ignored (the defaults apply), ``logprobs`` / ``top_logprobs`` are a 400,
and ``/completions`` (FIM) is ``deepseek-chat`` only. The served name keeps every knob, as a
local server's users expect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from nanoseek.chat_template import THINK_END
from nanoseek.infer.sampling import SamplingParams
from nanoseek.serve.errors import APIError
from nanoseek.serve.ledger import CHAT, REASONER
from nanoseek.serve.schemas import ChatCompletionRequest, CompletionRequest, Head, _Sampling
from nanoseek.tokenizer import Tokenizer

FIM_BEGIN, FIM_HOLE, FIM_END = "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"
DEFAULT_CHAT_MAX_TOKENS = 4096  # DeepSeek's default; the engine clips it to the context
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's legacy default


@dataclass(frozen=True)
class ModelInfo:
    """What request handling needs to know about the served model."""

    served_name: str
    tokenizer: Tokenizer
    max_model_len: int
    thinking_available: bool

    @property
    def model_ids(self) -> list[str]:
        """Names a request may give as ``model``."""
        return [self.served_name, CHAT] + ([REASONER] if self.thinking_available else [])

    @property
    def has_fim(self) -> bool:
        return all(_single_token(self.tokenizer, t) for t in (FIM_BEGIN, FIM_HOLE, FIM_END))


@dataclass
class Job:
    """One engine request: prompt ids, sampling, and the index of its first choice."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    first_choice: int = 0
    prompt_text: str = ""


@dataclass
class Plan:
    """One HTTP request's work and how to render its answer."""

    kind: Literal["chat", "completion"]
    head: Head
    jobs: list[Job]
    stream: bool = False
    include_usage: bool = False
    thinking: bool = False
    starts_in_reasoning: bool = False
    logprobs: int | None = None
    echo: bool = False
    endpoint: str = "/chat/completions"
    num_choices: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.num_choices = sum(j.params.n for j in self.jobs)


def check_model(name: str, info: ModelInfo) -> None:
    if name not in info.model_ids:
        raise APIError(400, f"model {name!r} does not exist on this server; use one of "
                       f"{', '.join(info.model_ids)}", param="model", code="model_not_found")


def resolve_thinking(request: ChatCompletionRequest, info: ModelInfo) -> bool:
    """Whether this chat request runs in thinking mode (see the module docstring)."""
    check_model(request.model, info)
    thinking = {REASONER: True, CHAT: False}.get(request.model, info.thinking_available)
    if request.thinking is not None:
        thinking = request.thinking.type == "enabled"
    if thinking and not info.thinking_available:
        raise APIError(400, "thinking mode is not available: the served model's tokenizer has "
                       "no <think> tokens or the server runs with --reasoning off; use "
                       f"{info.served_name!r} or {CHAT!r}", param="model")
    return thinking


def chat_plan(request: ChatCompletionRequest, info: ModelInfo, head: Head) -> Plan:
    """The ``Plan`` of a chat completion request (APIError for what cannot be served)."""
    thinking = resolve_thinking(request, info)
    reasoner = request.model == REASONER
    if reasoner and (request.logprobs or request.top_logprobs is not None):
        raise APIError(400, f"{REASONER} does not support logprobs or top_logprobs; use "
                       f"{info.served_name!r} for them", param="logprobs")
    ids, starts_in_reasoning = chat_prompt(request, info.tokenizer, thinking)
    check_length(len(ids), info, "messages")
    logprobs = (request.top_logprobs or 0) if request.logprobs else None
    max_tokens = request.max_completion_tokens or request.max_tokens or DEFAULT_CHAT_MAX_TOKENS
    params = sampling_params(request, max_tokens, logprobs, ignore_knobs=reasoner)
    return Plan("chat", head, [Job(f"{head.id}-0", ids, params)], stream=bool(request.stream),
                include_usage=request.include_usage, thinking=thinking,
                starts_in_reasoning=starts_in_reasoning, logprobs=logprobs)


def chat_prompt(request: ChatCompletionRequest, tokenizer: Tokenizer,
                thinking: bool) -> tuple[list[int], bool]:
    """Prompt ids of the conversation and whether the answer starts inside the thought."""
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in request.messages]
    last = request.messages[-1]
    try:
        if last.role == "assistant" and last.prefix:
            ids = tokenizer.render_chat(messages[:-1], add_generation_prompt=True,
                                        thinking=thinking).ids
            closed = f"{(last.reasoning_content or '').strip(chr(10))}\n{THINK_END}\n\n"
            ids += tokenizer.encode((closed if thinking else "") + messages[-1]["content"])
            return ids, False
        if last.role == "assistant":
            raise APIError(400, "the last message is from the assistant: end with a user "
                           "message, or set prefix = true on it to continue it",
                           param="messages")
        return tokenizer.render_chat(messages, add_generation_prompt=True,
                                     thinking=thinking).ids, thinking
    except ValueError as error:
        raise APIError(400, f"messages: {error}", param="messages") from None


def completion_plan(request: CompletionRequest, info: ModelInfo, head: Head) -> Plan:
    """The ``Plan`` of a legacy completion request: one job per prompt."""
    check_model(request.model, info)
    if request.model == REASONER:
        raise APIError(400, f"{REASONER} does not serve /completions (FIM); use {CHAT!r} or "
                       f"{info.served_name!r}", param="model")
    if request.suffix is not None and not info.has_fim:
        raise APIError(400, "suffix: fill-in-the-middle needs the tokenizer's FIM tokens "
                       f"({FIM_BEGIN}, {FIM_HOLE}, {FIM_END}), which this model does not have",
                       param="suffix")
    params = sampling_params(request, request.max_tokens or DEFAULT_COMPLETION_MAX_TOKENS,
                             request.logprobs)
    jobs = []
    for i, prompt in enumerate(request.prompts()):
        ids, text = completion_prompt(prompt, request.suffix, info)
        check_length(len(ids), info, "prompt")
        jobs.append(Job(f"{head.id}-{i}", ids, params, i * params.n, text))
    return Plan("completion", head, jobs, stream=bool(request.stream),
                include_usage=request.include_usage, logprobs=request.logprobs,
                echo=bool(request.echo), endpoint="/completions")


def completion_prompt(prompt: str | list[int], suffix: str | None,
                      info: ModelInfo) -> tuple[list[int], str]:
    """(ids, text) of one prompt: BOS + text, or FIM's prefix/suffix layout, or given ids."""
    tok = info.tokenizer
    if isinstance(prompt, list):
        bad = [t for t in prompt if not 0 <= t < tok.vocab_size]
        if bad:
            raise APIError(422, f"prompt: token ids must be in [0, {tok.vocab_size}), got "
                           f"{bad[0]}", param="prompt")
        return list(prompt), tok.decode(prompt)
    bos = [tok.bos_id] if tok.bos_id is not None else []
    if suffix is None:
        ids = bos + tok.encode(prompt)
    else:
        ids = bos + tok.encode(f"{FIM_BEGIN}{prompt}{FIM_HOLE}{suffix}{FIM_END}")
    if not ids:
        raise APIError(400, "prompt: empty, and the tokenizer has no BOS token to start from",
                       param="prompt")
    return ids, prompt


def check_length(num_tokens: int, info: ModelInfo, param: str) -> None:
    """400 with the numbers when a prompt leaves no room for a single output token."""
    if num_tokens >= info.max_model_len:
        raise APIError(400, f"This model's maximum context length is {info.max_model_len} "
                       f"tokens (prompt and output together). However, your {param} resulted "
                       f"in {num_tokens} tokens; shorten it to at most "
                       f"{info.max_model_len - 1} tokens.", param=param,
                       code="context_length_exceeded")


def sampling_params(request: _Sampling, max_tokens: int, logprobs: int | None,
                    ignore_knobs: bool = False) -> SamplingParams:
    """``SamplingParams`` from the request's fields (OpenAI defaults); 422 if the engine's
    sampler refuses a value. ``top_p = 0`` means greedy. ``ignore_knobs``: temperature, top_p
    and the penalties keep their defaults whatever was sent (DeepSeek's reasoner)."""
    if ignore_knobs:
        request = request.model_copy(update=dict.fromkeys(
            ("temperature", "top_p", "presence_penalty", "frequency_penalty")))
    temperature = 1.0 if request.temperature is None else request.temperature
    top_p = 1.0 if request.top_p is None else request.top_p
    if top_p == 0:
        temperature, top_p = 0.0, 1.0
    try:
        return SamplingParams(
            n=request.n or 1, temperature=temperature, top_p=top_p,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0, max_tokens=max_tokens,
            stop=request.stop_list(), seed=request.seed, logprobs=logprobs)
    except ValueError as error:
        raise APIError(422, str(error)) from None


def _single_token(tokenizer: Tokenizer, token: str) -> bool:
    token_id = tokenizer.token_to_id(token)
    return token_id is not None and tokenizer.encode(token) == [token_id]
