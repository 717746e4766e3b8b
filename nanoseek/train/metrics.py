"""Run logging: JSONL metrics, a console line with a progress bar, optional TensorBoard, MFU
against a peak FLOP/s, and the PNG plots written at the end of a run.

Only the main rank logs. Files in the run folder:

* ``metrics.jsonl``: one record per logged step (``step``, ``loss``, ``lr``, ``tokens``,
  ``tokens_per_s``, ``mfu``, per-layer ``load_max_over_mean``, …) and per evaluation
  (``val_loss``, ``val_bpb``);
* ``expert_load.jsonl``: per logged step the load of every expert of every MoE layer,
  normalized so the mean is 1 (the heatmap's data);
* ``loss.png``, ``expert_load.png`` at the end.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

# Dense peak TFLOP/s of known accelerators (no sparsity), by name fragment and dtype.
KNOWN_PEAKS_TFLOPS = {
    "H200": {"bfloat16": 989.5, "float32": 67.0},
    "H100": {"bfloat16": 989.5, "float32": 67.0},
    "H800": {"bfloat16": 989.5, "float32": 67.0},
    "A100": {"bfloat16": 312.0, "float32": 19.5},
    "A10G": {"bfloat16": 70.0, "float32": 35.0},
    "L4": {"bfloat16": 121.0, "float32": 30.3},
}


# -------------------------------------------------------------------- peak FLOP/s
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 2048,
                         seconds: float = 0.5) -> float:
    """Best FLOP/s of an ``n × n @ n × n`` matmul on ``device`` over about ``seconds``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    best, start = math.inf, time.perf_counter()
    while time.perf_counter() - start < seconds or best == math.inf:
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops(device: torch.device, dtype: torch.dtype, override_tflops: float = 0.0,
               cache_file: Path | None = None) -> tuple[float, str]:
    """``(peak FLOP/s, where it comes from)`` for MFU.

    An explicit ``override_tflops``; else a known GPU's datasheet number; else a large
    matmul measured now (half a second) and the best rate ever measured on this machine,
    kept in ``~/.cache/nanoseek/peak_flops.json``: a busy machine measures low, and the peak
    is what the hardware can do, not what it did while shared.
    """
    if override_tflops > 0:
        return override_tflops * 1e12, "configured"
    name, key = _device_name(device), str(dtype).removeprefix("torch.")
    if device.type == "cuda":
        for fragment, peaks in KNOWN_PEAKS_TFLOPS.items():
            if fragment in name and key in peaks:
                return peaks[key] * 1e12, f"{fragment} datasheet"
    cache_file = cache_file or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / \
        "nanoseek" / "peak_flops.json"
    cache_key = f"{name}|{key}"
    cache: dict[str, float] = {}
    with contextlib.suppress(OSError, ValueError):
        cache = json.loads(cache_file.read_text())
    measured = measure_matmul_flops(device, dtype)
    if measured > cache.get(cache_key, 0.0):
        cache[cache_key] = measured
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(cache_file, json.dumps(cache, indent=1))
        except OSError:
            pass
    return cache[cache_key], f"measured matmul peak of {name}"


# -------------------------------------------------------------------- files
def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path`` and rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file (an incomplete last line, left by a crash, is skipped)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop records logged after ``last_step`` (a resumed run redoes those steps)."""
    if path.is_file():
        kept = [r for r in read_jsonl(path) if r.get("step", 0) <= last_step]
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def format_line(rec: dict[str, Any], total_steps: int, eta_s: float) -> str:
    """The console log line of one training record."""
    parts = [f"step {rec['step']}/{total_steps}", f"loss {rec['loss']:.4f}"]
    for key in ("lm_loss", "mtp_loss", "val_loss", "val_bpb"):
        if key in rec:
            parts.append(f"{key.removesuffix('_loss') or key} {rec[key]:.4f}")
    if "lr" in rec:
        parts.append(f"lr {rec['lr']:.2e}")
    if "tokens_per_s" in rec:
        parts.append(f"{rec['tokens_per_s']:,.0f} tok/s")
    if rec.get("mfu") is not None:
        parts.append(f"MFU {100 * rec['mfu']:.1f}%")
    if "load_max_over_mean_max" in rec:
        parts.append(f"load max/mean {rec['load_max_over_mean_max']:.2f}")
    parts.append(f"ETA {_fmt_duration(eta_s)}")
    return " | ".join(parts)


class RunLogger:
    """Metrics to JSONL (+ TensorBoard if asked and installed) and the console, main rank only.

    ``progress``: a rich progress bar when stdout is a terminal; plain lines otherwise.
    """

    def __init__(self, out_dir: Path, enabled: bool, total_steps: int, start_step: int,
                 progress: bool = True, tensorboard: bool = False, log_every: int = 1) -> None:
        self.out_dir, self.enabled = Path(out_dir), enabled
        self.total_steps, self.start_step, self.log_every = total_steps, start_step, log_every
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.load_path = self.out_dir / "expert_load.jsonl"
        self._t0 = time.perf_counter()
        self._bar = self._task = self._tb = None
        if not enabled:
            return
        if progress and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self._bar = Progress("[progress.description]{task.description}", BarColumn(),
                                 MofNCompleteColumn(), TimeRemainingColumn())
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step)
            self._bar.start()
        if tensorboard:
            self._tb = _tensorboard_writer(self.out_dir / "tensorboard")

    def eta(self, step: int) -> float:
        done = step - self.start_step
        if done <= 0:
            return math.inf
        return (time.perf_counter() - self._t0) / done * (self.total_steps - step)

    def log(self, rec: dict[str, Any], console: bool = True) -> None:
        """Append ``rec`` (needs ``step``) to metrics.jsonl, TensorBoard and the console."""
        if not self.enabled:
            return
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for key, value in rec.items():
                if isinstance(value, int | float) and key != "step":
                    self._tb.add_scalar(key, value, rec["step"])
        if self._bar is not None:
            self._bar.update(self._task, completed=rec["step"])
        if console and "loss" in rec:
            self.print(format_line(rec, self.total_steps, self.eta(rec["step"])))
        elif console:
            self.print(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                  for k, v in rec.items()))

    def log_expert_load(self, step: int, loads_LE: torch.Tensor, names: list[str]) -> None:
        """Append each MoE layer's expert loads (normalized to mean 1) to expert_load.jsonl."""
        if not self.enabled:
            return
        norm = loads_LE / loads_LE.mean(dim=1, keepdim=True).clamp(min=1e-9)
        rec = {"step": step, "layers": names,
               "load": [[round(float(v), 4) for v in row] for row in norm]}
        with self.load_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _tensorboard_writer(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("tensorboard is not installed; logging to metrics.jsonl only "
              "(pip install tensorboard)", file=sys.stderr)
        return None
    return SummaryWriter(str(path))


def load_stats(loads_LE: torch.Tensor, layer_ids: list[int]) -> dict[str, Any]:
    """Per-layer max/mean expert load and the worst layer's, for the log record."""
    mean = loads_LE.mean(dim=1).clamp(min=1e-9)
    ratio = (loads_LE.max(dim=1).values / mean).tolist()
    return {"load_max_over_mean": {str(i): round(r, 4) for i, r in zip(layer_ids, ratio,
                                                                        strict=True)},
            "load_max_over_mean_max": round(max(ratio), 4)}


# -------------------------------------------------------------------- plots
def plot_losses(metrics_path: Path, png: Path) -> Path | None:
    """Training (total, LM, MTP) and validation loss against step, plus the learning rate."""
    records = read_jsonl(metrics_path)
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_loss" in r]
    if not train:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6), layout="constrained")
    FigureCanvasAgg(fig)
    ax, ax_lr = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    steps = [r["step"] for r in train]
    for key, label in (("loss", "total"), ("lm_loss", "next token"), ("mtp_loss", "MTP")):
        if key in train[0]:
            ax.plot(steps, [r.get(key, math.nan) for r in train], label=label, lw=1)
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    ax.set_ylabel("loss (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    ax_lr.plot(steps, [r.get("lr", math.nan) for r in train], color="gray")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("step")
    fig.savefig(png, dpi=110)
    return png


def plot_expert_load(load_path: Path, png: Path) -> Path | None:
    """One heatmap per MoE layer: expert (rows) × logged step (columns), load / mean load."""
    records = read_jsonl(load_path)
    if not records:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = records[0]["layers"]
    steps = [r["step"] for r in records]
    cube = torch.tensor([r["load"] for r in records])  # [S, L, E]
    n = len(layers)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.2 * cols + 1.5, 2.8 * rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    vmax = max(2.0, float(cube.max()))
    image = None
    for j, layer in enumerate(layers):
        ax = axes[j // cols][j % cols]
        extent = (steps[0] - 0.5, steps[-1] + 0.5, cube.shape[2] - 0.5, -0.5)
        image = ax.imshow(cube[:, j, :].T.numpy(), aspect="auto", cmap="viridis", vmin=0,
                          vmax=vmax, extent=extent, interpolation="nearest")
        ax.set_title(str(layer), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("expert", fontsize=8)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, label="load / mean load")
    fig.suptitle("expert load over training (1 = balanced)")
    fig.savefig(png, dpi=110)
    return png
