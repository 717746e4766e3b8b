"""Tests for nanoseek.data.{prepare,manifest,loader} (CPU, a few seconds)."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanoseek import cli
from nanoseek.data.loader import (
    Documents,
    PackedLoader,
    _BestFitPacker,
    _DocStream,
    iter_batches,
)
from nanoseek.data.manifest import check_tokenizer, load_manifest, token_dtype
from nanoseek.data.prepare import main, prepare
from nanoseek.tokenizer import Tokenizer, train_tokenizer

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "one",
         "cat", "sleeps", "and", "two", "birds", "sing", "under", "three", "old", "trees"]
PER_FORMAT = 30  # documents per input format (txt, jsonl, parquet, arrow)


def make_texts() -> list[str]:
    """Unique documents of 3..60 words, a few long ones (more than a 32-token row)."""
    rng = random.Random(0)
    texts = []
    for i in range(4 * PER_FORMAT):
        count = 150 if i % 17 == 5 else rng.randint(3, 60)
        texts.append(f"doc {i}: " + " ".join(rng.choice(WORDS) for _ in range(count)))
    return texts


def write_arrow_dataset(directory: Path, texts: list[str], files: int = 2) -> Path:
    """What HF ``Dataset.save_to_disk`` writes: Arrow IPC *stream* files plus two JSON files."""
    directory.mkdir(parents=True)
    per_file = len(texts) // files
    for k in range(files):
        table = pa.table({"id": list(range(per_file)),
                          "text": texts[k * per_file:(k + 1) * per_file]})
        path = directory / f"data-{k:05d}-of-{files:05d}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=4):
                writer.write_batch(batch)
    (directory / "dataset_info.json").write_text(json.dumps({"features": {}}))
    names = [{"filename": f"data-{k:05d}-of-{files:05d}.arrow"} for k in range(files)]
    (directory / "state.json").write_text(json.dumps({"_data_files": names, "_split": "train"}))
    return directory


def write_corpus(directory: Path, texts: list[str]) -> Path:
    """a.txt (paragraphs), b.jsonl, c.parquet (2 row groups), hf/ (Arrow stream dataset)."""
    n = PER_FORMAT
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "a.txt").write_text("\n\n".join(texts[:n]) + "\n", encoding="utf-8")
    lines = [json.dumps({"text": t, "id": i}) for i, t in enumerate(texts[n:2 * n])]
    (directory / "b.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"text": texts[2 * n:3 * n]}), directory / "c.parquet",
                   row_group_size=n // 2)
    write_arrow_dataset(directory / "hf", texts[3 * n:])
    return directory


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return make_texts()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), texts)


@pytest.fixture(scope="module")
def tok(corpus: Path) -> Tokenizer:
    return train_tokenizer([corpus / "a.txt", corpus / "b.jsonl"], vocab_size=400)


@pytest.fixture(scope="module")
def tok_dir(tok: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tok.save_pretrained(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def data(corpus: Path, tok: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "shards"
    prepare([corpus], out, tok, val_fraction=0.1, shard_tokens=600)
    return out


def all_documents(data_dir: Path) -> dict[str, list[np.ndarray]]:
    return {split: [d.copy() for d in _iter(Documents(data_dir, split))]
            for split in ("train", "val")}


def _iter(documents: Documents):
    return (documents[i] for i in range(len(documents)))


def segments(tokens: torch.Tensor, doc_ids: torch.Tensor) -> list[list[list[int]]]:
    """Per row, the token lists of its documents (cut where doc_ids change)."""
    rows = []
    for row, ids in zip(tokens.tolist(), doc_ids.tolist(), strict=True):
        parts: list[list[int]] = []
        for token, doc in zip(row, ids, strict=True):
            if doc == len(parts):
                parts.append([])
            assert doc == len(parts) - 1, "doc ids must count up by one within a row"
            parts[-1].append(token)
        rows.append(parts)
    return rows


# ---- prepare -------------------------------------------------------------------------------


def test_prepare_reads_every_format(data: Path, texts: list[str], tok: Tokenizer) -> None:
    manifest = load_manifest(data)
    kinds = [(Path(s["path"]).name, s["kind"], s["documents"]) for s in manifest.sources]
    half = PER_FORMAT // 2
    assert kinds == [("a.txt", "text", PER_FORMAT), ("b.jsonl", "jsonl", PER_FORMAT),
                     ("c.parquet", "parquet", PER_FORMAT),
                     ("data-00000-of-00002.arrow", "arrow", half),
                     ("data-00001-of-00002.arrow", "arrow", half)]
    docs = all_documents(data)
    assert len(docs["val"]) == 12 and len(docs["train"]) == 108  # ceil(120 * 0.1) to val
    decoded = {tok.decode(d[1:].tolist()).strip() for split in docs.values() for d in split}
    assert decoded == set(texts)
    assert tok.decode(docs["val"][0][1:].tolist()).strip() == texts[0]  # document 0 is val
    for doc in docs["train"] + docs["val"]:
        assert doc[0] == tok.bos_id and tok.bos_id not in doc[1:]


def test_manifest_and_shards(data: Path, corpus: Path, tok: Tokenizer) -> None:
    manifest = load_manifest(data)
    assert manifest.dtype == "uint16" and manifest.bos_id == tok.bos_id
    assert manifest.tokenizer_fingerprint == tok.fingerprint()
    assert manifest.vocab_size == tok.vocab_size and manifest.val_fraction == 0.1
    for source in manifest.sources:
        path = Path(source["path"])
        assert source["bytes"] == path.stat().st_size
        assert source["mtime_ns"] == path.stat().st_mtime_ns
    assert sum(s["tokens"] for s in manifest.sources) == sum(
        split.tokens for split in manifest.splits.values())
    train = manifest.splits["train"]
    assert len(train.shards) > 2 and train.documents == sum(s.documents for s in train.shards)
    for shard in train.shards + manifest.splits["val"].shards:
        raw = (data / shard.tokens_file).read_bytes()
        assert len(raw) == 2 * shard.tokens and hashlib.sha256(raw).hexdigest() == shard.sha256
        offsets = np.fromfile(data / shard.docs_file, dtype="<i8")
        assert offsets[0] == 0 and offsets[-1] == shard.tokens
        assert len(offsets) == shard.documents + 1
        assert shard.tokens <= manifest.shard_tokens or shard.documents == 1
    assert not [p for p in data.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_saved_dataset_folders_read_only_their_listed_files(tmp_path: Path) -> None:
    """``map``/``shuffle`` after ``load_from_disk`` write ``cache-*.arrow`` beside the data
    files: the same rows again, which must not become a second copy of every document."""
    from nanoseek.data.sources import collect_sources

    folder = write_arrow_dataset(tmp_path / "hf", [f"doc {i}" for i in range(8)])
    shutil.copy(folder / "data-00000-of-00002.arrow", folder / "cache-2d0a802b78a30b76.arrow")
    names = [s.path.name for s in collect_sources([tmp_path])]
    assert names == ["data-00000-of-00002.arrow", "data-00001-of-00002.arrow"]
    (folder / "state.json").unlink()  # not a save_to_disk folder: every Arrow file is read
    assert len(collect_sources([tmp_path])) == 3


def test_token_dtype_by_vocab_size() -> None:
    assert token_dtype(400) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(129280) == np.uint32


def test_same_shards_whatever_the_worker_count(corpus: Path, tok: Tokenizer,
                                               tmp_path: Path) -> None:
    for workers in (1, 2):
        prepare([corpus], tmp_path / f"w{workers}", tok, workers=workers, shard_tokens=300)
    names = sorted(p.name for p in (tmp_path / "w1").iterdir())
    assert len(names) > 6 and names == sorted(p.name for p in (tmp_path / "w2").iterdir())
    for name in names:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()


def test_check_tokenizer(data: Path, tok: Tokenizer) -> None:
    check_tokenizer(load_manifest(data), tok)
    check_tokenizer(data, tok)
    other = Tokenizer(tok.backend, bos_token=tok.bos_token, eos_token=tok.eos_token,
                      chat_template="{{ messages }}")
    with pytest.raises(ValueError, match="re-run `nanoseek data prepare"):
        check_tokenizer(data, other)


def test_extra_documents_and_replacing_an_old_output(tok: Tokenizer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = prepare([], out, tok, val_fraction=0.5, extra_documents=iter(["one two", "three"]))
    assert first.sources[0]["path"] == "<extra_documents>"
    assert first.splits["val"].documents == 1 and first.splits["train"].documents == 1
    docs = (f"document {i}" for i in range(10))
    second = prepare([], out, tok, val_fraction=0.0, extra_documents=docs)
    assert load_manifest(out) == second and second.splits["train"].documents == 10
    assert not (out / "val-00000.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _bad_jsonl(root: Path) -> list[Path]:
    path = root / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": oops}\n')
    return [path]


def _no_field(root: Path) -> list[Path]:
    path = root / "nofield.jsonl"
    path.write_text('{"body": "fine"}\n')
    return [path]


def _parquet_without_column(root: Path) -> list[Path]:
    path = root / "t.parquet"
    pq.write_table(pa.table({"content": ["a", "b"]}), path)
    return [path]


def _empty(root: Path) -> list[Path]:
    (root / "empty").mkdir()
    (root / "empty" / "a.txt").write_text("\n\n")
    return [root / "empty"]


def _unsupported(root: Path) -> list[Path]:
    (root / "pics").mkdir()
    (root / "pics" / "x.png").write_bytes(b"\x89PNG")
    return [root / "pics"]


@pytest.mark.parametrize(("make_inputs", "message"), [
    (lambda root: [root / "missing.txt"], r"missing\.txt does not exist"),
    (_empty, r"no documents found in .*empty.*a\.txt"),
    (_unsupported, r"folder .*pics has no"),
    (_bad_jsonl, r"bad\.jsonl:2: invalid JSON"),
    (_no_field, r"nofield\.jsonl:1: no string field 'text'"),
    (_parquet_without_column, r"t\.parquet has no column 'text'"),
])
def test_bad_input_is_a_clear_error(make_inputs, message: str, tok: Tokenizer,
                                    tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path)
    before = sorted(tmp_path.iterdir())
    with pytest.raises(ValueError, match=message):
        prepare(inputs, tmp_path / "out", tok)
    assert sorted(tmp_path.iterdir()) == before  # no output, no temp folder


def test_bad_output_folder_is_a_clear_error(corpus: Path, tok: Tokenizer, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cannot write the output folder"):
        prepare([corpus], tmp_path / "file" / "out", tok)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"is not empty and holds no manifest\.json"):
        prepare([corpus], tmp_path / "mine", tok)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="val_fraction"):
        prepare([corpus], tmp_path / "out", tok, val_fraction=1.0)


def test_command_line(corpus: Path, tok_dir: Path, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "data"
    args = ["prepare", "--input", str(corpus / "a.txt"), str(corpus / "hf"), "--tokenizer",
            str(tok_dir), "--out", str(out), "--val-fraction", "0.2", "--workers", "1"]
    assert main(args) == 0
    assert load_manifest(out).tokenizer_path == str(tok_dir)
    assert "train:" in capsys.readouterr().out
    assert cli.main(["data", "info", "--data", str(out)]) == 0
    with pytest.raises(SystemExit) as raised:
        main(["prepare", "--input", str(tmp_path / "nope"), "--tokenizer", str(tok_dir),
              "--out", str(tmp_path / "x"), "--quiet"])
    assert raised.value.code == 2 and "does not exist" in capsys.readouterr().err


# ---- loader ---------------------------------------------------------------------------------


def test_packed_rows_start_with_bos_and_hold_document_prefixes(data: Path,
                                                               tok: Tokenizer) -> None:
    docs = [d.tolist() for d in all_documents(data)["train"]]
    whole = {tuple(d) for d in docs}
    loader = PackedLoader(data, seq_len=32, batch_size=4, buffer_docs=8)
    assert loader.tokens_per_batch == 128
    cropped = 0
    for _ in range(20):
        tokens, doc_ids = loader.next_batch_with_docs()
        assert tokens.shape == doc_ids.shape == (4, 33) and tokens.dtype == torch.long
        for row in segments(tokens, doc_ids):
            for number, part in enumerate(row):
                assert part[0] == tok.bos_id and tok.bos_id not in part[1:]
                if tuple(part) not in whole:  # only the last document of a row is cropped
                    assert number == len(row) - 1
                    assert any(d[:len(part)] == part for d in docs)
                    cropped += 1
    assert cropped > 0


def test_packing_emits_each_document_once(data: Path) -> None:
    lengths = Documents(data, "train").lengths
    capacity, buffer = 33, 8
    # one pass: every document once (cropped only at a row's end), lost only the last partial row
    stream = _DocStream(len(lengths), seed=0, shuffle=False, repeat=False)
    packer = _BestFitPacker(lengths, capacity, buffer, stream)
    emitted = []
    while (row := packer.next_row()) is not None:
        assert sum(taken for _, taken in row) == capacity
        assert all(taken == lengths[doc] for doc, taken in row[:-1])
        emitted += [doc for doc, _ in row]
    assert len(emitted) == len(set(emitted))
    assert sum(lengths[sorted(set(range(len(lengths))) - set(emitted))]) < capacity
    # endless: what entered the stream = what was emitted + what is buffered
    stream = _DocStream(len(lengths), seed=3, shuffle=True, repeat=True)
    packer = _BestFitPacker(lengths, capacity, buffer, stream)
    emitted = [doc for _ in range(300) for doc, _ in packer.next_row()]
    assert stream.epoch >= 2
    replay = _DocStream(len(lengths), seed=3, shuffle=True, repeat=True)
    entered = [replay.next() for _ in range(len(emitted) + buffer)]
    assert sorted(entered) == sorted(emitted + packer.buffer())


def test_ranks_split_the_global_batch(data: Path) -> None:
    kwargs = dict(seq_len=16, seed=7, buffer_docs=16)
    single = PackedLoader(data, batch_size=4, **kwargs)
    ranks = [PackedLoader(data, batch_size=2, rank=r, world_size=2, **kwargs) for r in (0, 1)]
    for _ in range(6):
        parts = [loader.next_batch() for loader in ranks]
        assert not torch.equal(parts[0], parts[1])
        assert torch.equal(torch.cat(parts), single.next_batch())
    assert ranks[0].state_dict() == ranks[1].state_dict() == single.state_dict()


def test_resume_yields_exactly_the_remaining_batches(data: Path) -> None:
    kwargs = dict(seq_len=32, batch_size=3, seed=1, buffer_docs=8)
    loader = PackedLoader(data, **kwargs)
    for _ in range(7):
        loader.next_batch()
    state = json.loads(json.dumps(loader.state_dict()))
    expected = [loader.next_batch_with_docs() for _ in range(30)]
    assert loader.epoch >= 1  # the run crossed an epoch boundary
    resumed = PackedLoader(data, **kwargs)
    resumed.load_state_dict(state)
    for tokens, doc_ids in expected:
        got_tokens, got_ids = resumed.next_batch_with_docs()
        assert torch.equal(got_tokens, tokens) and torch.equal(got_ids, doc_ids)
    assert resumed.state_dict() == loader.state_dict()
    other = PackedLoader(data, **{**kwargs, "seq_len": 16})
    with pytest.raises(ValueError, match="seq_len=32"):
        other.load_state_dict(state)


def test_validation_batches_are_finite_and_deterministic(data: Path) -> None:
    first = list(iter_batches(data, "val", seq_len=16, batch_size=4))
    again = list(iter_batches(data, "val", seq_len=16, batch_size=4))
    assert first and len(first) == len(again)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(b.shape[1] == 17 and 1 <= b.shape[0] <= 4 for b in first)
    assert all(b.shape[0] == 4 for b in first[:-1])
    per_rank = [list(iter_batches(data, "val", seq_len=16, batch_size=2, rank=r, world_size=2))
                for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) >= len(first) - 1
    joined = torch.cat([torch.cat(pair) for pair in zip(*per_rank, strict=True)])
    assert torch.equal(joined, torch.cat(first)[:len(joined)])


def test_loader_errors(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"holds no manifest\.json"):
        PackedLoader(tmp_path, seq_len=8, batch_size=1)
    with pytest.raises(ValueError, match="rank=2"):
        PackedLoader(data, seq_len=8, batch_size=1, rank=2, world_size=2)
    with pytest.raises(ValueError, match="split 'test'"):
        iter_batches(data, "test", seq_len=8, batch_size=1)
