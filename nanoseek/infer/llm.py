"""``LLM``: the vLLM-shaped offline API over ``LLMEngine``.

    import nanoseek
    llm = nanoseek.LLM("path/to/hf_dir", dtype="bfloat16")
    params = nanoseek.SamplingParams(temperature=0.6, top_p=0.95, max_tokens=256)
    out = llm.generate(["The capital of France is"], params)[0].outputs[0].text
    out = llm.chat([{"role": "user", "content": "Hi"}], params)[0].outputs[0].text
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nanoseek.infer.engine import LLMEngine, RequestOutput
from nanoseek.infer.sampling import SamplingParams

Prompt = str | Seq[int]
Messages = Seq[Mapping[str, Any]]


class LLM:
    """A model + tokenizer + engine. ``model``: a HF-format model directory (loaded with
    ``load_pretrained``; its ``tokenizer.json`` too, when there) or a nanoseek model.

    ``dtype``: a torch dtype or its name (``"float32"``, ``"bfloat16"``, ``"float16"``); for a
    model object it is converted in place. ``tokenizer``: a ``Tokenizer``, a directory, or
    None (the model directory's, if any). Other keyword arguments go to ``LLMEngine``
    (``block_size``, ``num_blocks``, ``kv_cache_memory``, ``max_model_len``,
    ``max_num_seqs``, ``max_num_batched_tokens``, ``enable_prefix_caching``,
    ``num_speculative_tokens``, ``logprobs_mode``).
    """

    def __init__(self, model: str | Path | nn.Module, tokenizer=None,
                 dtype: torch.dtype | str | None = None,
                 device: torch.device | str | None = None, **engine_kwargs: Any) -> None:
        from nanoseek.tokenizer import Tokenizer

        if isinstance(model, str | Path):
            from nanoseek.checkpoint import load_pretrained

            path = Path(model)
            model = load_pretrained(path, dtype=dtype, device=device)
            if tokenizer is None and (path / "tokenizer.json").is_file():
                tokenizer = path
        else:
            model = _convert(model, dtype, device)
        if isinstance(tokenizer, str | Path):
            tokenizer = Tokenizer.from_pretrained(tokenizer)
        self.tokenizer = tokenizer
        self.engine = LLMEngine(model, tokenizer, **engine_kwargs)
        self._counter = 0

    @property
    def model(self) -> nn.Module:
        return self.engine.model

    # ---------------------------------------------------------------- generation
    def generate(self, prompts: Prompt | Seq[Prompt],
                 sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
                 ) -> list[RequestOutput]:
        """Complete each prompt (text or token ids); outputs in prompt order."""
        return self._run(_as_prompt_list(prompts), sampling_params)

    def chat(self, messages: Messages | Seq[Messages],
             sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
             thinking: bool = True) -> list[RequestOutput]:
        """Reply to one conversation (a list of ``{"role", "content"}`` dicts) or several.

        The R1 chat template is applied with a generation prompt (which opens a
        ``<think>`` block when ``thinking``)."""
        conversations = [messages] if messages and isinstance(messages[0], Mapping) else messages
        return self._run([self.chat_prompt(c, thinking) for c in conversations],  # type: ignore[arg-type]
                         sampling_params)

    def chat_prompt(self, messages: Messages, thinking: bool = True) -> list[int]:
        """Token ids of ``messages`` rendered with the chat template + generation prompt."""
        if self.tokenizer is None:
            raise ValueError("chat needs a tokenizer; pass tokenizer= to LLM")
        return self.tokenizer.render_chat(messages, add_generation_prompt=True,
                                          thinking=thinking).ids

    def stream(self, prompt: Prompt, sampling_params: SamplingParams | None = None
               ) -> Iterator[RequestOutput]:
        """Yield the incremental outputs of one request, step by step (the engine may run
        other queued requests meanwhile)."""
        request_id = self._next_id()
        self.engine.add_request(request_id, prompt, sampling_params)
        try:
            while True:
                for out in self.engine.step():
                    if out.request_id == request_id:
                        yield out
                        if out.finished:
                            return
        finally:
            if request_id in self.engine.requests:
                self.engine.abort(request_id)

    def _run(self, prompts: list[Prompt],
             params: SamplingParams | Seq[SamplingParams] | None) -> list[RequestOutput]:
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"sampling_params: got {len(params)} for {len(prompts)} prompts; "
                             "give one, or one per prompt")
        ids = []
        for prompt, p in zip(prompts, params, strict=True):
            ids.append(self._next_id())
            self.engine.add_request(ids[-1], prompt, p)
        final: dict[str, RequestOutput] = {}
        try:
            while self.engine.has_unfinished():
                for out in self.engine.step():
                    if out.finished:
                        final[out.request_id] = out
        except BaseException:  # a failed step: its requests must not stay half-computed in
            for request_id in ids:  # the engine, where the next generate would trip on them
                if request_id in self.engine.requests:
                    self.engine.abort(request_id)
            raise
        return [final[i] for i in ids]

    def _next_id(self) -> str:
        self._counter += 1
        return f"llm-{self._counter}"


def _as_prompt_list(prompts: Prompt | Seq[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(p, int) for p in prompts):
        return [prompts]  # one prompt of token ids
    return prompts  # type: ignore[return-value]


def _convert(model: nn.Module, dtype: torch.dtype | str | None,
             device: torch.device | str | None) -> nn.Module:
    if isinstance(dtype, str):
        from nanoseek.checkpoint import resolve_dtype

        dtype = resolve_dtype(dtype, {})
    if dtype is not None and model.lm_head.weight.dtype != dtype:
        model.to(dtype)
    if device is not None:
        model.to(device)
    return model
