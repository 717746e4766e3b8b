"""Two CPU processes under torchrun (gloo, loopback) train like one process with the same
global batch, with DDP and with FSDP2, and an FSDP2 run resumes exactly after a kill."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanoseek.checkpoint import load_pretrained
from nanoseek.train.state import FAULT_ENV

sys.path.insert(0, str(Path(__file__).parent))
from test_train_run import REPO, losses, make_workspace, run_cli, write_config

pytestmark = pytest.mark.skipif(not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(config: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "nanoseek.train.pretrain", "--config", str(config), "--quiet", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def single(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, 2 micro-batches of 2 sequences per step (global batch 4 × 32 tokens)."""
    root = tmp_path_factory.mktemp("single")
    result = run_cli(write_config(root / "run.toml", data, root / "out"))
    assert result.returncode == 0, result.stderr
    return root / "out"


def _assert_same_run(got: Path, want: Path) -> None:
    a, b = losses(got), losses(want)
    assert [r[0] for r in a] == [r[0] for r in b]
    nan = float("nan")
    for ra, rb in zip(a, b, strict=True):
        got_values = [nan if v is None else v for v in ra[1:]]
        want_values = [nan if v is None else v for v in rb[1:]]
        assert got_values == pytest.approx(want_values, rel=1e-5, abs=1e-6, nan_ok=True)
    m_got, m_want = load_pretrained(got / "model"), load_pretrained(want / "model")
    for (name, x), y in zip(m_got.state_dict().items(), m_want.state_dict().values(),
                            strict=True):
        if name.endswith("e_score_correction_bias"):
            assert torch.equal(x, y), name  # counts all-reduced: the same sign updates
        else:
            torch.testing.assert_close(x, y, atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one(parallel: str, data: Path, single: Path,
                                 tmp_path: Path) -> None:
    config = write_config(tmp_path / "run.toml", data, tmp_path / "out", parallel=parallel,
                          batch_tokens=128)  # 2 ranks × 2 sequences × 32 tokens: no accumulation
    result = torchrun(config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world 2" in result.stdout
    ranks = {p.name for p in (tmp_path / "out/checkpoints/step_00000006/trainer").iterdir()}
    assert ranks == {"meta.json", "state.pt", "rank00000.pt", "rank00001.pt"}
    _assert_same_run(tmp_path / "out", single)


def test_fsdp_resume_after_kill(data: Path, single: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "run.toml", data, tmp_path / "out", parallel="fsdp")
    killed = torchrun(config, fault="after_step:3")
    assert killed.returncode != 0 and "Signal 9 (SIGKILL)" in killed.stderr
    resumed = torchrun(config, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume at step 2" in resumed.stdout
    _assert_same_run(tmp_path / "out", single)
