"""nanoseek: the DeepSeek system (V3 model, R1 recipe, distillation, API) in small, tested
PyTorch.

Public names are imported lazily so that ``import nanoseek`` stays cheap::

    import nanoseek
    model = nanoseek.load_pretrained("path/to/hf_dir")
"""

from __future__ import annotations

from nanoseek._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "ModelConfig": "nanoseek.config",
    "get_preset": "nanoseek.config",
    "build_model": "nanoseek.model",
    "load_pretrained": "nanoseek.checkpoint",
    "save_pretrained": "nanoseek.checkpoint",
    "Tokenizer": "nanoseek.tokenizer",
    "train_tokenizer": "nanoseek.tokenizer",
    "LLM": "nanoseek.infer",
    "SamplingParams": "nanoseek.infer.sampling",
}


__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
