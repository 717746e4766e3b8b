"""``nanoseek sft``: packing with sample masking equals per-sample runs, the loss mask covers
exactly the assistant tokens, the packed loader (epochs, data parallel, resume), SFT lowers
the loss end to end (CLI, validation, resume), and bad input gives clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nanoseek import cli
from nanoseek.chat_template import render_segments
from nanoseek.checkpoint import load_pretrained
from nanoseek.config import get_preset
from nanoseek.data.tasks import chat_messages, get_task
from nanoseek.model import build_model
from nanoseek.rl.sample import split_completion
from nanoseek.tokenizer import train_tokenizer
from nanoseek.train.sft import forward_packed
from nanoseek.train.sft_data import (
    IGNORE_INDEX,
    PackedSFTLoader,
    Sample,
    encode_records,
    iter_eval_batches,
    make_batch,
    pack_rows,
    packed_attention_mask,
    read_chat_jsonl,
)

CONV_A = [{"role": "user", "content": "What is 2 + 2?"},
          {"role": "assistant", "content": "\\boxed{4}", "reasoning_content": "2+2=4"}]
CONV_B = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1 + 1?"},
          {"role": "assistant", "content": "2"}, {"role": "user", "content": "and 3 + 3?"},
          {"role": "assistant", "content": "6", "reasoning_content": "3+3"}]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    problems = get_task("arithmetic")(60, seed=1, split="train", difficulty=1)
    texts = [chat_messages(p)[0]["content"] + "\n" + p.solution for p in problems]
    (root / "c.txt").write_text("\n\n".join(texts) + "\nBe brief.")
    tok = train_tokenizer([root / "c.txt"], vocab_size=320)
    tok.save_pretrained(root / "tok")
    return tok


def sft_jsonl(path: Path, n: int, seed: int = 1) -> Path:
    """``n`` one-turn arithmetic conversations with worked solutions, as ``sample`` writes."""
    with path.open("w") as f:
        for p in get_task("arithmetic")(n, seed=seed, split="train", difficulty=1):
            reasoning, answer = split_completion(p.solution, False)
            f.write(json.dumps({"messages": [
                {"role": "user", "content": chat_messages(p)[0]["content"]},
                {"role": "assistant", "content": answer, "reasoning_content": reasoning}]}) + "\n")
    return path


def random_samples(lengths, vocab=300, seed=0):
    rng = np.random.default_rng(seed)
    return [Sample(rng.integers(5, vocab, n), np.r_[False, np.ones(n - 1, bool)])
            for n in lengths]


# ---------------------------------------------------------------------------------- packing
@pytest.mark.parametrize("preset", ["tiny", "tiny-qwen2", "tiny-llama"])
def test_packed_row_logits_equal_each_sample_alone(preset):
    torch.manual_seed(0)
    model = build_model(get_preset(preset)).eval()
    samples = random_samples([7, 12, 5])
    batch = make_batch(samples, [[0, 1, 2], [1]], seq_len=30, pad_id=2)
    with torch.no_grad():
        packed = forward_packed(model, batch)
        start = 0
        for s in samples:
            alone = model(torch.from_numpy(s.ids)[None]).logits[0]
            torch.testing.assert_close(packed[0, start:start + len(s)], alone,
                                       atol=2e-5, rtol=1e-4)
            start += len(s)
        torch.testing.assert_close(packed[1, :12], model(torch.from_numpy(samples[1].ids)[None])
                                   .logits[0], atol=2e-5, rtol=1e-4)
        # without the sample mask the second sample would see the first
        plain = model(batch["input_ids"][:1]).logits[0, 7:19]
        assert (plain - packed[0, 7:19]).abs().max() > 1e-3


def test_batch_fields_and_boundaries():
    samples = random_samples([4, 3])
    b = make_batch(samples, [[0, 1]], seq_len=9, pad_id=2)
    assert b["segment_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2]
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1]
    t = b["targets"][0].tolist()
    assert t[:3] == samples[0].ids[1:].tolist() and t[4:6] == samples[1].ids[1:].tolist()
    assert t[3] == t[6] == t[7] == t[8] == IGNORE_INDEX  # sample ends and padding
    m = packed_attention_mask(b["segment_ids"])[0, 0]
    assert m.shape == (9, 9) and m.diagonal().all()
    assert not m[4, :4].any() and m[5, 4] and not m[4, 5]


def test_loss_mask_covers_exactly_the_assistant_tokens(tokenizer):
    for last_only in (False, True):
        samples, _ = encode_records([{"messages": CONV_A}, {"messages": CONV_B}], tokenizer,
                                    200, last_turn_only=last_only)
        b = make_batch(samples, [[0, 1]], seq_len=150, pad_id=tokenizer.pad_id)
        trained = [i for i in b["targets"][0].tolist() if i != IGNORE_INDEX]
        expected = "".join(seg.text for conv in (CONV_A, CONV_B)
                           for seg in render_segments(conv, last_turn_only=last_only)
                           if seg.trainable)
        assert tokenizer.decode(trained) == expected
    assert "<think>\n2+2=4\n</think>\n\n\\boxed{4}" in expected and expected.endswith(
        "6<｜end▁of▁sentence｜>") and "1 + 1?" not in expected


def test_pack_rows_places_every_sample_once():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 40, 200)
    order = rng.permutation(200)
    rows = pack_rows(lengths, 50, order, window=8)
    assert sorted(i for row in rows for i in row) == list(range(200))
    assert all(sum(lengths[i] for i in row) <= 50 for row in rows)
    assert rows == pack_rows(lengths, 50, order, window=8)
    assert len(rows) < len(pack_rows(lengths, 50, order, window=1))  # first fit packs tighter
    with pytest.raises(ValueError, match="more than a row"):
        pack_rows([60], 50, [0])


def test_loader_epochs_data_parallel_and_resume():
    samples = random_samples(np.random.default_rng(1).integers(3, 20, 40))
    one = PackedSFTLoader(samples, 24, 4, pad_id=2, seed=5)
    ranks = [PackedSFTLoader(samples, 24, 2, pad_id=2, seed=5, rank=r, world_size=2)
             for r in range(2)]
    rows_per_epoch = len(one.rows_of_epoch(0))
    for _ in range(rows_per_epoch // 2):  # past an epoch boundary
        full = one.next_batch()["input_ids"]
        assert torch.equal(full, torch.cat([r.next_batch()["input_ids"] for r in ranks]))
    assert one.epoch >= 1
    state = one.state_dict()
    expected = [one.next_batch()["targets"] for _ in range(3)]
    fresh = PackedSFTLoader(samples, 24, 4, pad_id=2, seed=5)
    fresh.load_state_dict(json.loads(json.dumps(state)))
    assert all(torch.equal(fresh.next_batch()["targets"], e) for e in expected)
    same_lengths = random_samples([len(x) for x in samples], seed=9)  # other tokens
    for other in (PackedSFTLoader(samples[1:], 24, 4, pad_id=2, seed=5),
                  PackedSFTLoader(same_lengths, 24, 4, pad_id=2, seed=5),
                  PackedSFTLoader(samples, 32, 4, pad_id=2, seed=5),
                  PackedSFTLoader(samples, 24, 4, pad_id=2, seed=6),
                  PackedSFTLoader(samples, 24, 4, pad_id=2, seed=5, window=1)):
        with pytest.raises(ValueError, match="differ from the checkpoint"):
            other.load_state_dict(state)


def test_eval_batches_are_as_many_on_every_rank():
    """FSDP runs a collective per forward: a rank with one batch more would wait forever."""
    samples = random_samples([7] * 9)  # 3 per 24-token row: 3 rows, batches of 1
    per_rank = [list(iter_eval_batches(samples, 23, 1, pad_id=2, rank=r, world_size=2))
                for r in range(2)]
    assert [len(b) for b in per_rank] == [2, 2]
    real = [b for batches in per_rank for b in batches if (b["targets"] != IGNORE_INDEX).any()]
    alone = list(iter_eval_batches(samples, 23, 1, pad_id=2))
    assert len(real) == len(alone) == 3
    assert sum(int((b["targets"] != IGNORE_INDEX).sum()) for b in real) == 9 * 6


# ---------------------------------------------------------------------------------- end to end
def _args(tokenizer_dir, data, out, *extra):
    return ["--model.preset", "tiny-qwen2", "--data.train", str(data), "--data.tokenizer",
            str(tokenizer_dir), "--data.val_fraction", "0.2", "--train.out_dir", str(out),
            "--train.seq_len", "128", "--train.micro_batch", "4", "--train.precision", "fp32",
            "--train.peak_tflops", "1.0", "--optim.lr", "3e-3", "--optim.warmup_steps", "2",
            "--quiet", *extra]


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sft_cli_lowers_the_loss_and_resumes_exactly(tokenizer, tmp_path):
    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(tok_dir)
    data = sft_jsonl(tmp_path / "sft.jsonl", 40)
    out = tmp_path / "run"
    args = _args(tok_dir, data, out, "--train.steps", "12", "--train.eval_every", "6",
                 "--train.save_every", "6")
    assert cli.main(["sft", *args]) == 0
    recs = _metrics(out)
    train = [r["loss"] for r in recs if "loss" in r]
    val = [r["val_loss"] for r in recs if "val_loss" in r]
    assert len(train) == 12 and train[-1] < 0.75 * train[0]
    assert len(val) == 2 and val[1] < val[0]
    model = load_pretrained(out / "model")
    assert model.config.model_type == "qwen2" and model.config.eos_token_id == tokenizer.eos_id
    info = json.loads((out / "sft_data.json").read_text())
    assert info["train"]["samples"] + info["val"]["samples"] == 40
    # resume from step 6 of a copy: the same losses as the uninterrupted run
    import shutil

    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    shutil.rmtree(cut / "checkpoints" / "step_00000012")
    shutil.rmtree(cut / "model")
    assert cli.main(["sft", *_args(tok_dir, data, cut, "--train.steps", "12",
                                   "--train.eval_every", "6", "--train.save_every", "6"),
                     "--resume"]) == 0
    resumed = [r["loss"] for r in _metrics(cut) if "loss" in r]
    assert resumed == pytest.approx(train, rel=1e-5)


def test_epochs_set_the_number_of_steps(tokenizer, tmp_path):
    from nanoseek.train.config import load_config
    from nanoseek.train.sft import SFTConfig, load_samples, plan_run

    tokenizer.save_pretrained(tmp_path / "tok")
    data = sft_jsonl(tmp_path / "sft.jsonl", 30)
    args = _args(tmp_path / "tok", data, tmp_path / "o", "--sft.epochs", "2")
    cfg = load_config(SFTConfig, None, [a for a in args if a != "--quiet"])
    train, _, _ = load_samples(cfg, tokenizer)
    loader = PackedSFTLoader(train, 128, 4, pad_id=0)
    run = plan_run(cfg.train, loader, 2.0, world_size=1)
    assert run.steps == -(-2 * len(loader.rows_of_epoch(0)) // 4)


def test_errors_are_clear(tokenizer, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": CONV_A}) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        read_chat_jsonl(bad)
    (tmp_path / "nomsg.jsonl").write_text('{"text": "hi"}\n')
    with pytest.raises(ValueError, match=r"nomsg\.jsonl:1: expected an object with a .messages."):
        read_chat_jsonl(tmp_path / "nomsg.jsonl")
    tokenizer.save_pretrained(tmp_path / "tok")
    data = sft_jsonl(tmp_path / "sft.jsonl", 6)
    cases = [
        (["--data.val_fraction", "0.0", "--train.eval_every", "5"], "needs validation data"),
        (["--sft.kd_weight", "0.5"], "needs data.topk"),
        (["--train.seq_len", "8"], "no usable conversation"),
        (["--sft.kd_loss", "kl"], "kd.loss: 'kl' is unknown"),
        (["--data.overlong", "cut"], "data.overlong: 'cut' is unknown"),
    ]
    for extra, message in cases:
        out = tmp_path / f"o{len(message)}"
        assert cli.main(["sft", *_args(tmp_path / "tok", data, out, "--train.steps", "1"),
                         *extra]) == 2
        assert message in capsys.readouterr().err
        assert not (out / "model").exists()
