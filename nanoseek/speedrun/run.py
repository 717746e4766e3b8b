"""``nanoseek speedrun``: the whole DeepSeek story at toy scale, one resumable command.

    nanoseek speedrun                      # the cpu preset → runs/speedrun/ (~12 min, 2 cores)
    nanoseek speedrun --preset ci --out /tmp/mini
    nanoseek speedrun --from grpo          # redo GRPO and every later stage
    torchrun --nproc_per_node 8 -m nanoseek.speedrun.run --preset gpu

Stages (``nanoseek.speedrun.stages``): corpus → tokenizer → data → pretrain → sft → grpo →
sample → distill → eval → speed → report. A stage that finishes writes its marker
``RUN/.stages/NAME.json`` (atomically, after its outputs are complete: time, CPU time, load
average, a summary). A re-run skips stages with a marker unless ``--force`` / ``--from``; once
a stage runs, every later stage runs too. A stage that was interrupted resumes where it can
(the trainers from their last checkpoint, rejection sampling from its commit log, eval per
model). The progress display shows the stage, its bar, and the overall ETA: the preset's
expected stage times scaled by how fast the finished stages actually ran on this machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nanoseek.speedrun.presets import STAGE_NAMES, Preset, get_preset
from nanoseek.speedrun.stages import (
    ALL_RANKS,
    MODELS,
    OUTPUTS,
    STAGE_FUNCS,
    Context,
    distill_sft_dir,
)

DEFAULT_OUT = "runs/speedrun"
MARKERS = ".stages"
TRAIN_LOGS = {"pretrain": ("pretrain", "pretrain"), "sft": ("sft", "sft"),
              "grpo": ("grpo", "grpo"), "distill": ("", "distill")}
"""stage -> (folder whose metrics.jsonl counts its steps, preset section with train.steps)."""


# -------------------------------------------------------------------- markers
def marker_path(run_dir: Path, stage: str) -> Path:
    return run_dir / MARKERS / f"{stage}.json"


def read_marker(run_dir: Path, stage: str) -> dict[str, Any] | None:
    """The stage's marker, or None if it has not finished (or the marker is unreadable)."""
    try:
        return json.loads(marker_path(run_dir, stage).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_marker(run_dir: Path, stage: str, record: dict[str, Any]) -> None:
    """Write the marker to a temporary name and rename it into place."""
    from nanoseek.eval.run import write_json_atomic

    write_json_atomic(marker_path(run_dir, stage), record)


def check_run_dir(run_dir: Path, preset: Preset) -> None:
    """``ValueError`` when ``run_dir`` holds a run of another preset (stages would mix)."""
    record = run_dir / "speedrun.json"
    if not record.is_file():
        return
    old = json.loads(record.read_text()).get("preset", {}).get("name")
    if old and old != preset.name and any((run_dir / MARKERS).glob("*.json")):
        raise ValueError(f"--out {run_dir}: holds a speedrun of preset {old!r}, not "
                         f"{preset.name!r}; pass --force to start over there, or another --out")


def environment() -> dict[str, Any]:
    """Versions, CPU and GPU of this machine (for the report)."""
    import torch

    from nanoseek.train.metrics import _device_name

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "cpu": _device_name(torch.device("cpu")),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": gpu, "gpu_count": torch.cuda.device_count() if gpu else 0}


# -------------------------------------------------------------------- ETA and progress
@dataclass
class Clock:
    """Expected seconds per stage, scaled by how fast this machine has been so far: the ratio
    actual / expected over the stages finished in this invocation, with ``prior_s`` seconds of
    pseudo-count on both sides so that a few short stages barely move it (clamped to
    [0.2, 5])."""

    preset: Preset
    actual: float = 0.0
    expected: float = 0.0
    prior_s: float = 60.0

    @property
    def scale(self) -> float:
        ratio = (self.actual + self.prior_s) / (self.expected + self.prior_s)
        return min(5.0, max(0.2, ratio))

    def finished(self, stage: str, seconds: float) -> None:
        self.actual += seconds
        self.expected += self.preset.expected(stage)

    def remaining(self, stage: str, elapsed: float, fraction: float | None) -> float:
        """Seconds left in ``stage``: from its measured fraction when there is one."""
        if fraction is not None and fraction >= 0.02:
            return elapsed * (1 - fraction) / fraction
        return max(self.preset.expected(stage) * self.scale - elapsed, 0.0)

    def eta(self, stage: str, elapsed: float, fraction: float | None,
            later: Sequence[str]) -> float:
        return (self.remaining(stage, elapsed, fraction)
                + sum(self.preset.expected(s) for s in later) * self.scale)


def stage_fraction(run_dir: Path, preset: Preset, stage: str) -> float | None:
    """Steps done / steps planned of a training stage (from the tail of its metrics.jsonl)."""
    if stage not in TRAIN_LOGS:
        return None
    folder, section = TRAIN_LOGS[stage]
    total = getattr(preset, section).get("train.steps")
    path = (run_dir / folder if folder else distill_sft_dir(run_dir)) / "metrics.jsonl"
    if not total or not path.is_file():
        return None
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 4096))
        lines = f.read().decode("utf-8", "replace").splitlines()
    for line in reversed(lines):
        try:
            return min(1.0, json.loads(line)["step"] / total)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return None


def fmt_s(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Display:
    """Two bars (the stage, the whole run) with the overall ETA on a terminal; plain lines at
    each stage's start and end otherwise. Stage output (trainer log lines) scrolls above."""

    def __init__(self, run_dir: Path, preset: Preset, clock: Clock, live: bool) -> None:
        self.run_dir, self.preset, self.clock, self.live = run_dir, preset, clock, live

    @contextmanager
    def stage(self, index: int, stage: str, later: Sequence[str]) -> Iterator[None]:
        """Show ``stage`` while its body runs."""
        expected = self.preset.expected(stage) * self.clock.scale
        eta = self.clock.eta(stage, 0.0, None, later)
        print(f"── [{index + 1}/{len(STAGE_NAMES)}] {stage}: expected {fmt_s(expected)}, "
              f"whole run ETA {fmt_s(eta)}", flush=True)
        stop, thread = threading.Event(), None
        if self.live:
            thread = threading.Thread(target=self._refresh, args=(stage, later, stop),
                                      daemon=True)
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                thread.join()

    def _refresh(self, stage: str, later: Sequence[str], stop: threading.Event) -> None:
        """Redraw both bars twice a second until ``stop`` is set."""
        from rich.progress import BarColumn, Progress, TextColumn

        start, done_before = time.perf_counter(), self.clock.actual
        with Progress(TextColumn("{task.description:>10}"), BarColumn(),
                      TextColumn("{task.percentage:>3.0f}%"), TextColumn("{task.fields[note]}"),
                      transient=True) as bars:
            mine = bars.add_task(stage, total=1.0, note="")
            whole = bars.add_task("speedrun", total=1.0, note="")
            while not stop.wait(0.5):
                elapsed = time.perf_counter() - start
                fraction = stage_fraction(self.run_dir, self.preset, stage)
                left = self.clock.remaining(stage, elapsed, fraction)
                eta = self.clock.eta(stage, elapsed, fraction, later)
                shown = fraction if fraction is not None else elapsed / max(elapsed + left, 1e-9)
                note = "" if fraction is not None else " (from expected time)"
                bars.update(mine, completed=shown,
                            note=f"{fmt_s(elapsed)} elapsed, ~{fmt_s(left)} left{note}")
                spent = done_before + elapsed
                bars.update(whole, completed=spent / max(spent + eta, 1e-9),
                            note=f"ETA {fmt_s(eta)}")


# -------------------------------------------------------------------- the runner
@dataclass
class Plan:
    """Which stages run (the rest are skipped: done in an earlier invocation)."""

    run: list[str] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)


def make_plan(run_dir: Path, force: bool, start: str | None) -> Plan:
    """Skip finished stages up to the first one that must run; run it and all after it.
    ``report`` always runs (it only reads)."""
    plan, running = Plan(), force
    for stage in STAGE_NAMES:
        running = running or stage == start or read_marker(run_dir, stage) is None
        running = running or stage == "report"
        (plan.run if running else plan.skip).append(stage)
    return plan


def clear_stage(run_dir: Path, stage: str, fresh: bool) -> None:
    """Drop the marker; with ``fresh``, also the stage's outputs (a forced rerun)."""
    marker_path(run_dir, stage).unlink(missing_ok=True)
    if not fresh:
        return
    for rel in OUTPUTS[stage]:
        path = run_dir / rel
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def run_stage(ctx: Context, stage: str) -> dict[str, Any]:
    """Run one stage (all ranks or rank 0 only) and return its marker record."""
    from nanoseek.distributed import barrier, broadcast_object

    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0, c0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    summary, error = None, None
    if stage in ALL_RANKS or ctx.info.is_main:
        try:
            summary = STAGE_FUNCS[stage](ctx)
        except Exception as e:  # reported on every rank, then raised
            error = e
    if stage not in ALL_RANKS:
        message = broadcast_object(f"{type(error).__name__}: {error}" if error else None)
        if message and error is None:
            raise RuntimeError(f"stage {stage} failed on rank 0: {message}")
    if error is not None:
        raise error
    barrier()
    return {"stage": stage, "status": "done", "seconds": round(time.perf_counter() - t0, 2),
            "cpu_seconds": round(time.process_time() - c0, 2), "started": started,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "preset": ctx.preset.name, "summary": summary or {}}


def run_speedrun(preset: Preset, run_dir: Path, force: bool = False, start: str | None = None,
                 live: bool | None = None, argv: Sequence[str] = ()) -> dict[str, Any]:
    """Run (or resume) every stage of ``preset`` in ``run_dir``; returns the markers."""
    import torch

    from nanoseek.distributed import barrier, init_distributed

    if start is not None and start not in STAGE_NAMES:
        raise ValueError(f"--from {start!r}: not a stage; choose one of {', '.join(STAGE_NAMES)}")
    if not force:
        check_run_dir(run_dir, preset)
    if preset.threads:
        torch.set_num_threads(preset.threads)
    info = init_distributed(preset.device)
    ctx = Context(preset, run_dir, info)
    plan = make_plan(run_dir, force, start)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stage in plan.run:
            clear_stage(run_dir, stage, fresh=force or stage == start or
                        STAGE_NAMES.index(stage) > STAGE_NAMES.index(plan.run[0]))
        from nanoseek.eval.run import write_json_atomic

        write_json_atomic(run_dir / "speedrun.json", {
            "preset": preset.to_dict(), "environment": environment(),
            "command": ["nanoseek", "speedrun", *argv], "world_size": info.world_size,
            "started": datetime.now(UTC).isoformat(timespec="seconds")})
    barrier()  # outputs cleared before any rank starts a stage
    clock = Clock(preset)
    show = info.is_main and (sys.stdout.isatty() if live is None else live)
    display = Display(run_dir, preset, clock, show)
    for stage in plan.skip:
        if info.is_main:
            print(f"── {stage}: done in an earlier run, skipped (--force or --from {stage} "
                  "to redo)", flush=True)
    for stage in plan.run:
        index = STAGE_NAMES.index(stage)
        with display.stage(index, stage, plan.run[plan.run.index(stage) + 1:]):
            record = run_stage(ctx, stage)
        clock.finished(stage, record["seconds"])
        if info.is_main:
            write_marker(run_dir, stage, record)
            print(f"   {stage} done in {fmt_s(record['seconds'])}: "
                  f"{json.dumps(record['summary'], default=str)[:200]}", flush=True)
    return {s: read_marker(run_dir, s) for s in STAGE_NAMES}


def commands(run_dir: Path) -> list[str]:
    """Shell commands to talk to or serve each model of the run."""
    lines = []
    for name, (model_dir, _) in MODELS.items():
        path = run_dir / model_dir
        lines.append(f"# {name}: {path}")
        lines.append(f"nanoseek chat --model {path}")
        lines.append(f"nanoseek serve --model {path} --port 8000")
    return lines


def default_out(preset: str) -> str:
    return DEFAULT_OUT if preset == "cpu" else f"{DEFAULT_OUT}-{preset}"


def _parser() -> argparse.ArgumentParser:
    from nanoseek.speedrun.presets import PRESETS

    p = argparse.ArgumentParser(prog="nanoseek speedrun", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                   help="stage sizes: cpu (default, ~12 min on 2 cores), ci (minutes), gpu")
    p.add_argument("--out", default=None,
                   help=f"run folder (default {DEFAULT_OUT} for cpu, {DEFAULT_OUT}-PRESET)")
    p.add_argument("--force", action="store_true", help="redo every stage from scratch")
    p.add_argument("--from", dest="start", choices=STAGE_NAMES, default=None,
                   help="redo this stage and every later one")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no live progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nanoseek speedrun``; returns the exit code."""
    from dataclasses import replace

    from nanoseek.distributed import destroy_distributed

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    preset = get_preset(args.preset)
    if args.threads is not None:
        preset = replace(preset, threads=args.threads)
    run_dir = Path(args.out or default_out(args.preset))
    try:
        run_speedrun(preset, run_dir, args.force, args.start, False if args.quiet else None,
                     argv)
    except ValueError as e:
        print(f"nanoseek speedrun: error: {e}", file=sys.stderr)
        return 2
    finally:
        destroy_distributed()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"\nreport: {run_dir / 'report.md'}\n\nTalk to or serve the models:")
        print("\n".join(commands(run_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
