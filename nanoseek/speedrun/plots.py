"""The speedrun report's PNG plots, drawn from the run folder's metrics (matplotlib, Agg).

``loss.png`` (pretraining with MTP and validation, SFT, the student's distillation),
``expert_load.png`` (the trainer's heatmap), ``balance.png`` (max / mean expert load per MoE
layer over pretraining), ``grpo.png`` (GRPO's reward and length curves) and ``accuracy.png``
(held-out accuracy per stage). A plot whose data is missing is skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from nanoseek.train.metrics import read_jsonl

LOSS_PANELS = (("pretrain", "pretraining (tiny DeepSeek-V3)"), ("sft", "cold-start SFT"),
               ("distill", "distillation (dense student)"))


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, png: Path) -> Path:
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(png)
    return png


def plot_losses(run_dir: Path, png: Path) -> Path | None:
    """One panel per training stage: training loss (and MTP / validation where logged)."""
    from nanoseek.speedrun.stages import distill_sft_dir

    dirs = {"pretrain": run_dir / "pretrain", "sft": run_dir / "sft",
            "distill": distill_sft_dir(run_dir)}
    panels = [(read_jsonl(dirs[d] / "metrics.jsonl"), title) for d, title in LOSS_PANELS]
    panels = [(m, t) for m, t in panels if any("loss" in r for r in m)]
    if not panels:
        return None
    fig = _figure((4.2 * len(panels), 3.6))
    for ax, (metrics, title) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels,
                                    strict=True):
        train = [r for r in metrics if "loss" in r]
        steps = [r["step"] for r in train]
        key = "lm_loss" if "lm_loss" in train[0] else "loss"
        ax.plot(steps, [r[key] for r in train], lw=1, label="next token" if key == "lm_loss"
                else "train")
        if "mtp_loss" in train[0]:
            ax.plot(steps, [r.get("mtp_loss", math.nan) for r in train], lw=1, label="MTP")
        val = [r for r in metrics if "val_loss" in r]
        if val:
            ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-",
                    label="validation")
        ax.set(title=title, xlabel="step", ylabel="loss (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, png)


def layer_label(layer: str, num_hidden_layers: int | None) -> str:
    """``"decoder layer 2"``, or ``"MTP module 1"`` for the layers past the main stack."""
    i = int(layer)
    if num_hidden_layers is not None and i >= num_hidden_layers:
        return f"MTP module {i - num_hidden_layers + 1}"
    return f"decoder layer {i}"


def plot_balance(metrics_path: Path, png: Path, num_hidden_layers: int | None = None
                 ) -> Path | None:
    """Max / mean tokens per routed expert of each MoE layer against the pretraining step."""
    rows = [r for r in read_jsonl(metrics_path) if "load_max_over_mean" in r]
    if not rows:
        return None
    fig = _figure((7, 3.6))
    ax = fig.subplots()
    for layer in rows[0]["load_max_over_mean"]:
        ax.plot([r["step"] for r in rows],
                [r["load_max_over_mean"].get(layer, math.nan) for r in rows],
                label=layer_label(layer, num_hidden_layers), lw=1)
    ax.axhline(1.0, color="gray", ls="--", lw=0.8)
    ax.set(title="expert load balance (1 = perfectly balanced)", xlabel="pretraining step",
           ylabel="max / mean expert load")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, png)


def plot_accuracy(run_dir: Path, png: Path) -> Path | None:
    """Greedy and pass@1 held-out accuracy of each stage's model, as bars."""
    names, greedy, pass1 = [], [], []
    for name in ("base", "sft", "rl", "student"):
        path = run_dir / "eval" / f"{name}.json"
        if path.is_file():
            m = json.loads(path.read_text())["metrics"]
            names.append(name)
            greedy.append(100 * (m.get("greedy") or 0.0))
            pass1.append(100 * (m.get("pass@1") or 0.0))
    if not names:
        return None
    fig = _figure((6, 3.6))
    ax = fig.subplots()
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], greedy, width=0.4, label="greedy")
    ax.bar([x + 0.2 for x in xs], pass1, width=0.4, label="pass@1 (T=0.6)")
    ax.set_xticks(list(xs), names)
    ax.set(title="held-out accuracy by stage", ylabel="% correct", ylim=(0, 100))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, png)


def _num_layers(config_json: Path) -> int | None:
    if not config_json.is_file():
        return None
    return json.loads(config_json.read_text()).get("num_hidden_layers")


def draw_plots(run_dir: Path) -> list[Path]:
    """Every plot whose data exists; returns the files written."""
    from nanoseek.rl.grpo_trainer import plot_grpo
    from nanoseek.train.metrics import plot_expert_load

    written = [
        plot_losses(run_dir, run_dir / "loss.png"),
        plot_expert_load(run_dir / "pretrain" / "expert_load.jsonl", run_dir / "expert_load.png"),
        plot_balance(run_dir / "pretrain" / "metrics.jsonl", run_dir / "balance.png",
                     _num_layers(run_dir / "pretrain" / "model" / "config.json")),
        plot_grpo(run_dir / "grpo" / "metrics.jsonl", run_dir / "grpo.png"),
        plot_accuracy(run_dir, run_dir / "accuracy.png"),
    ]
    return [p for p in written if p is not None]
