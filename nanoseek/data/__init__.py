"""Data: corpus preparation, token shards and loaders, verifiable task generators.

- ``prepare.py``: text / JSONL / Parquet / Arrow files → token shards + ``manifest.json``
  (``nanoseek data prepare``; ``prepare(...)`` in-process), reading with ``sources.py`` and
  tokenizing and writing shards with ``shards.py``.
- ``manifest.py``: the manifest, ``load_manifest``, ``check_tokenizer``.
- ``loader.py``: ``PackedLoader`` (BOS-aligned best-fit packing, rank-sharded, resumable) and
  ``iter_batches`` (a finite, deterministic validation pass).
- ``tasks.py``: seeded verifiable reasoning tasks.

Names below are imported lazily, so importing a submodule (e.g. in tokenizer worker processes)
does not pull in torch.
"""

from __future__ import annotations

from nanoseek._lazy import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    "Manifest": "nanoseek.data.manifest",
    "load_manifest": "nanoseek.data.manifest",
    "check_tokenizer": "nanoseek.data.manifest",
    "Documents": "nanoseek.data.loader",
    "PackedLoader": "nanoseek.data.loader",
    "iter_batches": "nanoseek.data.loader",
}


__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
