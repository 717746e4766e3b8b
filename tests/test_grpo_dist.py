"""GRPO under torchrun: two CPU processes (gloo) with the prompts split between them train
like one process with the same global batch, with DDP and with FSDP2 (whose rollout engine
holds a full-weight twin refilled after every update)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanoseek.checkpoint import load_pretrained

sys.path.insert(0, str(Path(__file__).parent))
from test_grpo_run import make_model_dir, overrides, steps

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.distributed.is_gloo_available(),
                                 reason="needs torch.distributed with gloo")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(model: Path, out: Path, nproc: int, parallel: str) -> None:
    args = [*overrides(model, out, **{"train.steps": 2, "train.save_every": 0,
                                      "train.parallel": parallel}), "--quiet"]
    launcher = [sys.executable, "-m", "nanoseek.rl.grpo"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                    str(nproc), "--master_addr", "127.0.0.1", "--master_port",
                    str(_free_port()), "-m", "nanoseek.rl.grpo"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([*launcher, *args], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("grpo_dist")
    model = make_model_dir(root / "policy")
    run(model, root / "single", 1, "ddp")
    return model, root / "single"


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_train_like_one(single: tuple[Path, Path], tmp_path: Path,
                                  parallel: str) -> None:
    model, want = single
    got = tmp_path / parallel
    run(model, got, 2, parallel)
    a, b = steps(want), steps(got)
    assert sorted(a) == sorted(b) == [1, 2]
    for step in (1, 2):
        for key in ("reward", "pass_rate", "length_mean", "length_max", "frac_zero_std",
                    "update_tokens", "loss", "kl", "entropy", "grad_norm"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-6), (step, key)
    wa, wb = load_pretrained(want / "model"), load_pretrained(got / "model")
    for (name, x), y in zip(wa.state_dict().items(), wb.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)
    assert json.loads((got / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2
