"""The inputs of ``nanoseek data prepare``: source files and the work units they are read in.

``collect_sources`` expands files and folders into ``Source``s (text, JSONL, Parquet, Arrow).
``plan_units`` splits them into ``Unit``s (Parquet row groups, groups of Arrow record batches;
schemas are checked up front), ``read_units`` reads text and JSONL files here into units of
documents, and ``unit_texts`` yields the raw documents of one unit (in a worker process).
File formats: see ``nanoseek.data.prepare``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from nanoseek.tokenizer import JSONL_SUFFIXES, TEXT_SUFFIXES, iter_documents

KINDS = {**dict.fromkeys(TEXT_SUFFIXES, "text"), **dict.fromkeys(JSONL_SUFFIXES, "jsonl"),
         ".parquet": "parquet", ".arrow": "arrow"}
TEXT_UNIT_DOCS = 4096  # text/JSONL/extra documents are read here and sent to workers this many
TEXT_UNIT_BYTES = 2**22  # a guess at one such unit's size, to cap the worker count
UNIT_ROWS = 16384  # Arrow record batches are grouped into work units of at least this many rows


class Source(NamedTuple):
    """One input file and how to read it (``kind``: text, jsonl, parquet or arrow)."""

    path: Path
    kind: str


class Unit(NamedTuple):
    """A piece of work for one process: Parquet row groups or Arrow record batches
    ``start:stop`` of ``path``, or (kind "texts") the documents themselves."""

    source: int  # index into the sources list
    path: str
    kind: str
    start: int = 0
    stop: int = 0
    size: int = 0  # bytes, for the progress bar
    texts: tuple[str, ...] = ()


def collect_sources(inputs: Sequence[str | os.PathLike[str]]) -> list[Source]:
    """Expand files and folders into a sorted, de-duplicated list of readable sources."""
    sources: list[Source] = []
    for item in map(Path, inputs):
        if item.is_dir():
            listed = _saved_dataset_files(item)
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix in KINDS
                           and not any(part.startswith(".") for part in p.relative_to(item).parts)
                           and (p.parent not in listed or p in listed[p.parent]))
            if not found:
                raise ValueError(f"folder {item} has no {', '.join(KINDS)} files")
            sources += [Source(p, KINDS[p.suffix]) for p in found]
        elif item.is_file():
            if item.suffix not in KINDS:
                raise ValueError(f"{item}: unsupported file type {item.suffix!r}; use one of "
                                 f"{', '.join(KINDS)}")
            sources.append(Source(item, KINDS[item.suffix]))
        else:
            raise ValueError(f"input {item} does not exist")
    return list(dict.fromkeys(sources))


def _saved_dataset_files(folder: Path) -> dict[Path, set[Path]]:
    """For each folder under ``folder`` written by HF ``datasets``' ``save_to_disk`` (it has
    a ``state.json``), the data files it lists. Only those are read there: ``map``,
    ``filter`` or ``shuffle`` after ``load_from_disk`` add ``cache-*.arrow`` files beside
    them, which hold the same rows again."""
    listed: dict[Path, set[Path]] = {}
    for state in folder.rglob("state.json"):
        try:
            files = json.loads(state.read_text())["_data_files"]
            if files:
                listed[state.parent] = {state.parent / f["filename"] for f in files}
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a datasets folder after all: read it as any other
    return listed


def plan_units(sources: Sequence[Source], text_field: str) -> list[Unit]:
    """Parquet/Arrow ranges (schemas checked now, before any work) and one unit per text/JSONL
    file (split into "texts" units as it is read: ``read_units``)."""
    units: list[Unit] = []
    for index, (path, kind) in enumerate(sources):
        if kind == "parquet":
            units += _parquet_units(index, path, text_field)
        elif kind == "arrow":
            units += _arrow_units(index, path, text_field)
        else:
            units.append(Unit(index, str(path), kind, size=path.stat().st_size))
    return units


def _parquet_units(index: int, path: Path, text_field: str) -> list[Unit]:
    try:
        meta = pq.ParquetFile(path).metadata
        schema = meta.schema.to_arrow_schema()
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{path} is not a readable Parquet file: {error}") from error
    _check_column(schema, path, text_field)
    return [Unit(index, str(path), "parquet", g, g + 1, meta.row_group(g).total_byte_size)
            for g in range(meta.num_row_groups)]


def _arrow_units(index: int, path: Path, text_field: str) -> list[Unit]:
    schema, batches = _arrow_batches(path)
    _check_column(schema, path, text_field)
    units, start, stop, rows, size = [], 0, 0, 0, 0
    for stop, batch in enumerate(batches, start=1):
        rows, size = rows + batch.num_rows, size + batch.nbytes
        if rows >= UNIT_ROWS:
            units.append(Unit(index, str(path), "arrow", start, stop, size))
            start, rows, size = stop, 0, 0
    if rows:
        units.append(Unit(index, str(path), "arrow", start, stop, size))
    return units


def _arrow_batches(path: Path) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """Schema and record batches of an Arrow IPC stream (HF ``datasets``) or IPC file."""
    try:
        source = pa.memory_map(str(path))
        try:
            reader = pa.ipc.open_stream(source)
            return reader.schema, iter(reader)
        except pa.ArrowInvalid:
            file = pa.ipc.open_file(source)
            return file.schema, (file.get_batch(i) for i in range(file.num_record_batches))
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{path} is not an Arrow IPC stream or file: {error}") from error


def _check_column(schema: pa.Schema, path: Path, text_field: str) -> None:
    if text_field not in schema.names:
        raise ValueError(f"{path} has no column {text_field!r} (columns: {schema.names}); "
                         "set --text-field")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_string_view(kind)):
        raise ValueError(f"{path}: column {text_field!r} has type {kind}, expected strings")


def read_units(planned: Iterable[Unit], text_field: str, extra_source: int,
               extra_documents: Iterable[str] | None) -> Iterator[Unit]:
    """Work units in corpus order; text/JSONL files and extra documents are read here."""
    for unit in planned:
        if unit.kind in ("text", "jsonl"):
            documents = iter_documents([Path(unit.path)], text_field)
            yield from _text_units(unit.source, documents, unit.size)
        else:
            yield unit
    if extra_documents is not None:
        yield from _text_units(extra_source, _checked_strings(extra_documents), None)


def _text_units(source: int, documents: Iterable[str], size: int | None) -> Iterator[Unit]:
    """``TEXT_UNIT_DOCS`` documents per unit; the last unit of a file carries the rest of its
    ``size`` (bytes, for the progress bar; characters when ``size`` is None)."""
    documents = iter(documents)
    batch = tuple(islice(documents, TEXT_UNIT_DOCS))
    while batch:
        following = tuple(islice(documents, TEXT_UNIT_DOCS))
        part = sum(map(len, batch))
        if size is not None:
            part = min(part, size) if following else size
            size -= part
        yield Unit(source, "", "texts", size=part, texts=batch)
        batch = following


def _checked_strings(documents: Iterable[str]) -> Iterator[str]:
    for position, text in enumerate(documents):
        if not isinstance(text, str):
            raise ValueError(f"extra_documents[{position}] is a {type(text).__name__}, "
                             "not a string")
        yield text


def unit_texts(unit: Unit, text_field: str) -> Iterator[str | None]:
    """The raw documents of one unit, in file order."""
    if unit.kind == "texts":
        yield from unit.texts
    elif unit.kind == "parquet":
        batches = pq.ParquetFile(unit.path).iter_batches(
            row_groups=range(unit.start, unit.stop), columns=[text_field])
        for batch in batches:
            yield from batch.column(0).to_pylist()
    else:
        _, batches = _arrow_batches(Path(unit.path))
        for batch in islice(batches, unit.start, unit.stop):
            yield from batch.column(text_field).to_pylist()

