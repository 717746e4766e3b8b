"""Model definitions: DeepSeek-V2/V3 (MLA + DeepSeekMoE + MTP) and dense Llama/Qwen2."""

from __future__ import annotations

from torch import nn

from nanoseek.config import ModelConfig


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised model for ``config.model_type``.

    Works under ``with torch.device("meta")`` (no memory) for counting and streaming loads.
    """
    if config.is_deepseek:
        from nanoseek.model.deepseek import DeepseekV3ForCausalLM

        return DeepseekV3ForCausalLM(config)
    from nanoseek.model.dense import DenseForCausalLM

    return DenseForCausalLM(config)


__all__ = ["build_model"]
