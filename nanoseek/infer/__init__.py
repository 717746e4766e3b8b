"""Inference: a vLLM-shaped ``LLM`` API over a continuous-batching engine with a paged latent
(MLA) or GQA KV cache, prefix caching and MTP speculative decoding.

Files: ``cache`` (paged storage, block manager, prefix cache), ``scheduler`` (sequences,
waiting/running queues, chunked prefill, preemption), ``runner`` (batch layouts, forwards, the
no-cache reference), ``engine`` (``LLMEngine``: add_request / step / abort), ``speculative``
(MTP draft + verify), ``sampling`` and ``detok`` (per-request sampling, streaming text),
``llm`` (``LLM.generate`` / ``LLM.chat``).
"""

from __future__ import annotations

from nanoseek.infer.engine import CompletionOutput, LLMEngine, RequestOutput
from nanoseek.infer.llm import LLM
from nanoseek.infer.sampling import SamplingParams

__all__ = ["LLM", "CompletionOutput", "LLMEngine", "RequestOutput", "SamplingParams"]
