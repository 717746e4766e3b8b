"""The manifest of a prepared data folder: what was read, with which tokenizer, what was written.

``nanoseek.data.prepare`` writes ``manifest.json`` next to the token shards; the loader reads it,
and ``check_tokenizer`` guards training against a tokenizer other than the one the data was made
with. Layout of the folder and of the shards: see ``nanoseek.data.prepare``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nanoseek.tokenizer import Tokenizer

FORMAT = "nanoseek-tokens"
VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val")


@dataclass(frozen=True)
class ShardInfo:
    """One shard: ``tokens_file`` (.bin) and ``docs_file`` (.idx), names relative to the folder."""

    tokens_file: str
    docs_file: str
    documents: int
    tokens: int
    sha256: str  # of the .bin file


@dataclass(frozen=True)
class SplitInfo:
    """Document and token totals of one split and its shards, in order."""

    documents: int = 0
    tokens: int = 0
    shards: tuple[ShardInfo, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """What ``prepare`` read and wrote; stored as ``manifest.json`` in the data folder.

    ``sources`` holds one dict per input file (``path``, ``kind``, ``bytes``, ``mtime_ns``,
    ``documents``, ``tokens``), plus ``<extra_documents>`` when given. ``directory`` is where the
    manifest was loaded from or written to (not stored in the file).
    """

    dtype: str
    vocab_size: int
    bos_id: int
    tokenizer_fingerprint: str
    tokenizer_path: str | None
    text_field: str
    val_fraction: float
    shard_tokens: int
    sources: tuple[dict[str, Any], ...]
    splits: dict[str, SplitInfo]
    directory: Path | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``format`` and ``version`` first, no ``directory``)."""
        data = asdict(self)
        data.pop("directory")
        return {"format": FORMAT, "version": VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], directory: Path | None = None) -> Manifest:
        """Parse the JSON form; ``ValueError`` when it is not a nanoseek data manifest."""
        where = directory or "manifest"
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ValueError(f"{where} is not a {FORMAT} v{VERSION} manifest (format="
                             f"{data.get('format')!r}, version={data.get('version')!r}); re-run "
                             "`nanoseek data prepare`")
        fields = {k: v for k, v in data.items() if k not in ("format", "version")}
        try:
            fields["sources"] = tuple(fields["sources"])
            fields["splits"] = {
                name: SplitInfo(split["documents"], split["tokens"],
                                tuple(ShardInfo(**shard) for shard in split["shards"]))
                for name, split in fields["splits"].items()
            }
            return cls(**fields, directory=directory)
        except (KeyError, TypeError) as error:
            raise ValueError(f"{where} is incomplete or malformed ({error}); re-run "
                             "`nanoseek data prepare`") from error

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``directory/manifest.json`` (under a temporary name, then renamed)."""
        path = Path(directory) / MANIFEST_NAME
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{MANIFEST_NAME}.")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump(self.to_dict(), file, indent=2, ensure_ascii=False)
                file.write("\n")
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return path

    def split(self, name: str) -> SplitInfo:
        """The split ``name``; ``ValueError`` when it is unknown or has no documents."""
        info = self.splits.get(name)
        if info is None or info.documents == 0:
            hint = " (prepare with --val-fraction > 0)" if name == "val" else ""
            raise ValueError(f"split {name!r} of {self.directory} has no documents{hint}; "
                             f"splits with data: {[k for k, v in self.splits.items() if v.shards]}")
        return info


def load_manifest(data_dir: str | os.PathLike[str]) -> Manifest:
    """Read ``data_dir/manifest.json``; ``ValueError`` naming the folder when absent or bad."""
    directory = Path(data_dir)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ValueError(f"{directory} holds no {MANIFEST_NAME}: create it with "
                         f"`nanoseek data prepare --out {directory} ...`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return Manifest.from_dict(data, directory)


def check_tokenizer(manifest: Manifest | str | os.PathLike[str], tokenizer: Tokenizer) -> None:
    """Raise ``ValueError`` unless ``tokenizer`` is the one the data was prepared with."""
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    if tokenizer.fingerprint() == manifest.tokenizer_fingerprint:
        return
    made_with = f" (from {manifest.tokenizer_path})" if manifest.tokenizer_path else ""
    raise ValueError(
        f"the data in {manifest.directory} was tokenized with tokenizer "
        f"{manifest.tokenizer_fingerprint[:16]}{made_with}, vocab_size {manifest.vocab_size}, "
        f"but this tokenizer is {tokenizer.fingerprint()[:16]}, vocab_size "
        f"{tokenizer.vocab_size}: train with the data's tokenizer, or re-run "
        "`nanoseek data prepare --tokenizer DIR` with this one"
    )


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian ``uint16`` when every id fits (``vocab_size <= 65536``), else ``uint32``."""
    if not 0 < vocab_size <= 2**32:
        raise ValueError(f"vocab_size={vocab_size} must be in 1..2**32")
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


