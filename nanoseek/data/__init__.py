"""Data: corpus preparation, token shards and loaders, verifiable task generators.

- ``prepare.py``: text / JSONL / Parquet / Arrow files → token shards + ``manifest.json``
  (``nanoseek data prepare``; ``prepare(...)`` in-process).
- ``manifest.py``: the manifest, ``load_manifest``, ``check_tokenizer``.
- ``loader.py``: ``PackedLoader`` (BOS-aligned best-fit packing, rank-sharded, resumable) and
  ``iter_batches`` (a finite, deterministic validation pass).
- ``tasks.py``: seeded verifiable reasoning tasks.

Names below are imported lazily, so importing a submodule (e.g. in tokenizer worker processes)
does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS = {
    "Manifest": "nanoseek.data.manifest",
    "load_manifest": "nanoseek.data.manifest",
    "check_tokenizer": "nanoseek.data.manifest",
    "Documents": "nanoseek.data.loader",
    "PackedLoader": "nanoseek.data.loader",
    "iter_batches": "nanoseek.data.loader",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nanoseek.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
