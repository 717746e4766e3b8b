"""nanoseek: the DeepSeek system (V3 model, R1 recipe, distillation, API) in small, tested
PyTorch.

Public names are imported lazily so that ``import nanoseek`` stays cheap::

    import nanoseek
    model = nanoseek.load_pretrained("path/to/hf_dir")
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nanoseek' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
