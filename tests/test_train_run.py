"""End to end ``nanoseek pretrain``: exact resume after a kill (also inside a save), NaN stop,
checkpoint layout and loadability, and clear errors for bad input."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanoseek.checkpoint import load_pretrained
from nanoseek.config import get_preset
from nanoseek.model import build_model
from nanoseek.train.config import OptimConfig, RunConfig
from nanoseek.train.loop import NonFiniteLossError, Trainer
from nanoseek.train.losses import IGNORE_INDEX
from nanoseek.train.optim import lr_at
from nanoseek.train.pretrain import main
from nanoseek.train.state import FAULT_ENV, list_checkpoints

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while",
         "experts", "route", "tokens", "and", "the", "model", "learns", "to", "predict", "what",
         "comes", "next")


# -------------------------------------------------------------------- helpers
def make_workspace(root: Path, vocab_size: int = 300) -> Path:
    """A corpus, a tokenizer and a prepared data folder under ``root``; returns the data dir."""
    from nanoseek.data.prepare import prepare
    from nanoseek.tokenizer import train_tokenizer

    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 80))) for _ in range(300)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.txt").write_text("\n\n".join(docs))
    tok = train_tokenizer([root / "corpus.txt"], vocab_size=vocab_size)
    tok.save_pretrained(root / f"tok{vocab_size}")
    prepare([root / "corpus.txt"], root / "data", root / f"tok{vocab_size}", val_fraction=0.05)
    return root / "data"


def write_config(path: Path, data: Path, out: Path, **train: object) -> Path:
    """A tiny pretraining config (6 steps, 2 micro-batches per step)."""
    settings = {"out_dir": str(out), "seq_len": 32, "micro_batch": 2, "batch_tokens": 128,
                "steps": 6, "save_every": 2, "keep_last": 2, "eval_every": 3,
                "eval_batches": 2, "precision": "fp32", "peak_tflops": 1.0, **train}
    lines = ["[model]", 'preset = "tiny"', "[data]", f'dir = "{data}"', "[optim]", "lr = 3e-3",
             "warmup_steps = 2", "bias_update_speed = 0.01", "[train]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(config: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run([sys.executable, "-m", "nanoseek.train.pretrain", "--config",
                           str(config), "--quiet", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def losses(out: Path) -> list[tuple]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("loss"), r.get("lm_loss"), r.get("mtp_loss"),
             r.get("balance_loss"), r.get("val_loss"), r.get("val_bpb")) for r in records]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run (same settings as the interrupted ones)."""
    root = tmp_path_factory.mktemp("reference")
    result = run_cli(write_config(root / "run.toml", data, root / "out"))
    assert result.returncode == 0, result.stderr
    return root / "out"


# -------------------------------------------------------------------- resume
@pytest.mark.parametrize("fault", ["after_step:3", "in_save:4"])
def test_resume_after_kill_matches_uninterrupted(fault: str, data: Path, reference: Path,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = write_config(tmp_path / "run.toml", data, out)
    killed = run_cli(config, fault=fault)
    assert killed.returncode == -signal.SIGKILL
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [2]
    if fault.startswith("in_save"):
        assert (out / "checkpoints" / ".step_00000004.tmp").is_dir()  # the half-written save
    resumed = run_cli(config, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resume at step 2" in resumed.stdout
    assert losses(out) == losses(reference)
    assert not list((out / "checkpoints").glob(".step_*"))
    got, want = load_pretrained(out / "model"), load_pretrained(reference / "model")
    for (name, a), b in zip(got.state_dict().items(), want.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # weights and balance biases bit for bit


def test_run_outputs(reference: Path) -> None:
    assert [s for s, _ in list_checkpoints(reference / "checkpoints")] == [4, 6]  # keep_last 2
    ckpt = reference / "checkpoints" / "step_00000006"
    assert {p.name for p in (ckpt / "trainer").iterdir()} == {"meta.json", "state.pt",
                                                              "rank00000.pt"}
    assert (ckpt / "model" / "tokenizer.json").is_file()
    for name in ("loss.png", "expert_load.png", "pretrain_config.json", "expert_load.jsonl"):
        assert (reference / name).stat().st_size > 0, name
    records = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().split("\n")
               if line]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    cfg = OptimConfig(lr=3e-3, warmup_steps=2)
    assert [r["lr"] for r in train] == pytest.approx([lr_at(s, 6, cfg) for s in range(6)])
    assert train[-1]["loss"] < train[0]["loss"]
    assert {"mfu", "tokens_per_s", "load_max_over_mean", "grad_norm"} <= set(train[0])
    assert set(train[0]["load_max_over_mean"]) == {"1", "2", "3"}
    val = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in val] == [3, 6] and all(0 < r["val_bpb"] < 10 for r in val)
    model = load_pretrained(reference / "model")
    bias = model.model.layers[1].mlp.gate.e_score_correction_bias
    assert bias.abs().sum() > 0  # the balance bias moved and was saved


def test_compiled_run_matches_eager(data: Path, reference: Path, tmp_path: Path) -> None:
    """``train.compile``: the whole model compiled (experts eager) follows the eager run's
    loss trajectory within float tolerance, and saves the same parameter names."""
    out = tmp_path / "out"
    result = run_cli(write_config(tmp_path / "run.toml", data, out, steps=3, eval_every=0,
                                  compile=True))
    assert result.returncode == 0, result.stderr
    got = [v for r in losses(out) if r[1] is not None for v in r[1:5]]
    want = [v for r in losses(reference) if r[1] is not None for v in r[1:5]][:12]
    assert len(got) == 12
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert load_pretrained(out / "model").state_dict().keys() == \
        load_pretrained(reference / "model").state_dict().keys()


def test_exported_model_loads_in_transformers(reference: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(reference / "model").eval()
    ours = load_pretrained(reference / "model")
    ids = torch.randint(0, ours.config.vocab_size, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids).logits, atol=1e-4, rtol=1e-4)


# -------------------------------------------------------------------- NaN stop
class _Tokens:
    """A resumable batch source of random tokens."""

    def __init__(self) -> None:
        self.gen, self.count = torch.Generator().manual_seed(0), 0

    def next_batch(self) -> torch.Tensor:
        self.count += 1
        return torch.randint(0, 512, (2, 17), generator=self.gen)

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    from nanoseek.train.losses import LMLoss

    lm = LMLoss()
    calls = []

    def loss_fn(model, batch, progress):
        loss, metrics = lm(model, batch, progress)
        calls.append(progress)
        return (loss * float("nan") if len(calls) == 3 else loss), metrics

    torch.manual_seed(0)
    model = build_model(get_preset("tiny"))
    run = RunConfig(out_dir=str(tmp_path / "out"), seq_len=16, micro_batch=2, steps=5,
                    save_every=1, precision="fp32", progress=False)
    trainer = Trainer(model, OptimConfig(lr=1e-3), run, loss_fn, _Tokens())
    for _ in range(2):
        trainer.train_step()
        trainer.save()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match=r"step 3: loss nan.*last good checkpoint is "
                                                 r".*step_00000002"):
        trainer.fit()
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name  # weights untouched by the bad step
    assert [s for s, _ in list_checkpoints(tmp_path / "out" / "checkpoints")] == [1, 2]
    assert load_pretrained(tmp_path / "out" / "checkpoints" / "step_00000002" / "model")


def test_resuming_from_an_earlier_checkpoint_sets_the_later_ones_aside(tmp_path: Path) -> None:
    """Back to step 1 (say, before a loss spike): the old run's step 3 must neither be
    ``--resume latest`` nor push the new run's checkpoints out of keep-last-N."""
    from nanoseek.train.losses import LMLoss
    from nanoseek.train.state import latest_checkpoint

    run = RunConfig(out_dir=str(tmp_path / "out"), seq_len=16, micro_batch=2, steps=4,
                    keep_last=2, precision="fp32", progress=False)
    root = tmp_path / "out" / "checkpoints"
    torch.manual_seed(0)
    first = Trainer(build_model(get_preset("tiny")), OptimConfig(lr=1e-3), run, LMLoss(),
                    _Tokens())
    for step in (1, 2, 3):
        first.train_step()
        if step != 2:
            first.save()
    assert [s for s, _ in list_checkpoints(root)] == [1, 3]
    again = Trainer(build_model(get_preset("tiny")), OptimConfig(lr=1e-3), run, LMLoss(),
                    _Tokens(), resume_from=root / "step_00000001")
    assert [s for s, _ in list_checkpoints(root)] == [1, 3]  # nothing moves before a save
    again.train_step()
    again.save()  # step 2 of the new run
    assert [s for s, _ in list_checkpoints(root)] == [1, 2]  # keep-last-2 kept the new one
    assert latest_checkpoint(root) == root / "step_00000002"
    assert (root / "abandoned" / "step_00000003" / "trainer" / "meta.json").is_file()


class _Masked(_Tokens):
    """SFT-like dict batches whose micro-batches hold 7 and 1 target tokens in turn."""

    def next_batch(self) -> dict[str, torch.Tensor]:
        tokens = torch.randint(0, 512, (1, 9), generator=self.gen)
        targets = tokens[:, 1:].clone()
        targets[:, (1 if self.count % 2 else 7):] = IGNORE_INDEX
        self.count += 1
        return {"input_ids": tokens[:, :-1], "targets": targets}


def test_micro_batches_weigh_by_their_target_tokens(tmp_path: Path) -> None:
    """The step's gradient is that of the mean over all its target tokens (7 + 1 here), not
    the mean of the two micro-batches' means."""
    import copy

    from nanoseek.train.loop import micro_batch_weights
    from nanoseek.train.losses import cross_entropy

    def loss_fn(model, batch, progress):
        return cross_entropy(model(batch["input_ids"]).logits, batch["targets"]), {}

    torch.manual_seed(0)
    model = build_model(get_preset("tiny"))
    reference = copy.deepcopy(model)
    run = RunConfig(out_dir=str(tmp_path / "out"), seq_len=8, micro_batch=1, batch_tokens=16,
                    steps=1, precision="fp32", progress=False)
    trainer = Trainer(model, OptimConfig(lr=1e-3, grad_clip=0.0), run, loss_fn, _Masked())
    grads: dict[str, torch.Tensor] = {}
    trainer.optimizer.step = lambda *a, **k: grads.update(
        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    record = trainer.train_step()
    source = _Masked()  # the trainer's two micro-batches, again
    both = [source.next_batch(), source.next_batch()]
    joined = {k: torch.cat([b[k] for b in both]) for k in both[0]}
    loss = loss_fn(reference, joined, 0.0)[0]
    loss.backward()
    assert record["loss"] == pytest.approx(loss.item(), rel=1e-5)
    for name, p in reference.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6)
    assert micro_batch_weights(both, world_size=1) == [7 / 8, 1 / 8]
    assert micro_batch_weights([torch.zeros(2, 3)] * 4, world_size=2) == [0.25] * 4


# -------------------------------------------------------------------- bad input
def _expect_error(capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_bad_inputs(data: Path, reference: Path, tmp_path: Path,
                    capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path / "run.toml", data, tmp_path / "out")
    base = ["--config", str(config), "--quiet"]
    _expect_error(capsys, [*base, "--data.dir", str(tmp_path / "nope")], "does not exist")
    (tmp_path / "empty").mkdir()
    _expect_error(capsys, [*base, "--data.dir", str(tmp_path / "empty")], "manifest.json")
    other = make_workspace(tmp_path / "other", vocab_size=280)
    _expect_error(capsys, [*base, "--data.tokenizer", str(other.parent / "tok280")],
                  "was tokenized with tokenizer")
    _expect_error(capsys, [*base, "--model.overrides.vocab_size", "100"],
                  "the tokenizer has 300 ids but the model only 100")
    _expect_error(capsys, [*base, "--model.overrides.max_position_embeddings", "16"],
                  "train.seq_len: 32 exceeds the model's position range")
    (tmp_path / "file").write_text("x")
    _expect_error(capsys, [*base, "--train.out_dir", str(tmp_path / "file" / "out")],
                  "train.out_dir: cannot write")
    _expect_error(capsys, [*base, "--train.out_dir", str(reference)], "already holds "
                  "checkpoints; pass --resume")
    _expect_error(capsys, [*base, "--resume"], "no checkpoint under")
    _expect_error(capsys, [*base, "--resume", str(reference / "model")],
                  "looks like a model directory")
    _expect_error(capsys, [*base, "--train.batch_tokens", "100"], "train.batch_tokens: 100")


def test_corrupt_or_mismatched_checkpoint(data: Path, reference: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    config = write_config(tmp_path / "run.toml", data, out, steps=8)
    ckpt = out / "checkpoints" / "step_00000006"
    base = ["--config", str(config), "--quiet", "--resume"]
    state = (ckpt / "trainer" / "state.pt").read_bytes()
    (ckpt / "trainer" / "state.pt").write_bytes(state[:100])
    _expect_error(capsys, base, "state.pt is corrupt")
    (ckpt / "trainer" / "state.pt").write_bytes(state)
    meta = json.loads((ckpt / "trainer" / "meta.json").read_text())
    (ckpt / "trainer" / "meta.json").write_text(json.dumps({**meta, "world_size": 4}))
    _expect_error(capsys, base, "written by 4 processes, this run has 1")
    (ckpt / "trainer" / "meta.json").write_text(json.dumps({**meta, "format": "other"}))
    _expect_error(capsys, base, "has format 'other'")
    (ckpt / "trainer" / "meta.json").write_text(json.dumps(meta))
    weights = ckpt / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    _expect_error(capsys, base, "--resume: cannot read the model")
    _expect_error(capsys, [*base[:-1], "--model.overrides.num_hidden_layers", "2", "--resume",
                           str(out / "checkpoints" / "step_00000004")],
                  "different config.json")
    assert (out / "checkpoints" / "step_00000004" / "trainer" / "state.pt").is_file()


def test_peak_flops_keeps_the_best_measurement(tmp_path: Path, monkeypatch) -> None:
    from nanoseek.train import metrics

    cache = tmp_path / "peak.json"
    readings = iter([2e11, 1e11, 3e11])  # a busy machine measures low in between
    monkeypatch.setattr(metrics, "measure_matmul_flops", lambda device, dtype: next(readings))
    cpu = torch.device("cpu")
    peaks = [metrics.peak_flops(cpu, torch.float32, cache_file=cache)[0] for _ in range(3)]
    assert peaks == [2e11, 2e11, 3e11]
    assert metrics.peak_flops(cpu, torch.float32, override_tflops=0.5)[0] == 5e11
