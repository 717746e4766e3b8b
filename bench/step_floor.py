"""The matmul floor of a training step: how much of each side's step is matrix multiplies.

A profiler cannot say this on a 2-core CPU: it adds microseconds to each of a ``small`` step's
~10,000 operator calls (a 1.8 s step reads 2.8 s under ``torch.profiler``), so its
percentages overstate the small operators and the grouped experts' thousands of little
matmuls. Here each side's step runs once under the profiler only to *record* its matrix
multiplies (``mm``, ``addmm``, ``bmm``, ``baddbmm``; the grouped experts' per-expert calls
included) and its attention kernels, with shapes and counts. Each distinct shape is then
timed alone (best of a few rounds, this process's threads) and the counts weight the sum:

* **matmul floor**: the step's matrix multiplies alone; **attention**: its fused attention
  kernels alone (forward and backward, as the step called them);
* **the rest**: the measured step minus both — element-wise work, norms, softmax and
  cross-entropy, routing, gathers, the optimizer, and the framework's own overhead;
* **ceiling**: transformers' measured step over nanoseek's floor — nanoseek's speed-up over
  transformers if everything but its matmuls and attention took no time at all.

``--perf`` measures the same thing in place: Linux ``perf`` samples each side's steps (a child
process training in a loop) and the samples are summed by the kind of C++ code they land in
(MKL's GEMM kernels, element-wise loops, the fused AdamW, the OpenMP runtime, ...).

Replayed operands keep the step's sizes and strides (a transposed weight stays transposed), but
they are hot in cache where the step's come from memory: the floor is a lower bound.

    python bench/step_floor.py --batch 8 --seq 256 --repeats 5 [--perf] [--compile]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from train import SIDES, alternate, emit, load_side, make_step, save_reference

from nanoseek.config import get_preset
from nanoseek.cost import train_flops_per_token
from nanoseek.cpu_memory import keep_freed_memory
from nanoseek.train.metrics import measure_matmul_flops

GEMMS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
ATTENTION = "aten::_scaled_dot_product_flash_attention_for_cpu"
Operand = tuple[tuple[int, ...], tuple[int, ...]]  # (sizes, strides)
Call = tuple[str, tuple[Operand, ...]]  # (op name, tensor operands)


# -------------------------------------------------------------------- record one step
def record_calls(step: Callable[[], float]) -> Counter[Call]:
    """The matmul and attention calls of one ``step()`` with their operands' sizes and strides
    (outermost only: an ``mm`` that an ``addmm`` makes is not counted twice), and how often
    each occurs. Read from the profiler's event tree, which keeps strides."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    calls: Counter[Call] = Counter()
    watched = (*GEMMS, ATTENTION, ATTENTION + "_backward")
    todo = list(prof.profiler.kineto_results.experimental_event_tree())
    while todo:
        event = todo.pop()
        name = getattr(event.extra_fields, "name", None)
        if name in watched:  # outermost: its children are not visited
            operands = tuple((tuple(t.sizes), tuple(t.strides))
                             for t in event.extra_fields.inputs if hasattr(t, "strides"))
            calls[(name, operands)] += 1
        else:
            todo.extend(event.children)
    return calls


# -------------------------------------------------------------------- replay each call
def _operand(sizes: tuple[int, ...], strides: tuple[int, ...]) -> torch.Tensor:
    """Random values laid out as the step had them (a transposed or expanded view stays one)."""
    extent = 1 + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True) if n > 0)
    return torch.randn(extent).as_strided(sizes, strides)


def _gemm(name: str, operands: tuple[Operand, ...]) -> Callable[[], object]:
    """The call on fresh operands of the step's layout (``out=`` kept where it passed one)."""
    t = [_operand(*o) for o in operands]
    ops = {"aten::mm": torch.mm, "aten::bmm": torch.bmm,
           "aten::addmm": torch.addmm, "aten::baddbmm": torch.baddbmm}
    if name not in ops:
        raise ValueError(f"not a matmul: {name}")
    fn, n_in = ops[name], 3 if name in ("aten::addmm", "aten::baddbmm") else 2
    if len(t) > n_in:  # compiled graphs write into buffers they planned
        return lambda: fn(*t[:n_in], out=t[n_in])
    return lambda: fn(*t)


def _attention(operands: tuple[Operand, ...]) -> Callable[[], object]:
    """Fused causal attention forward + backward on the step's ``q, k, v`` sizes."""
    q, k, v = (torch.randn(sizes, requires_grad=True) for sizes, _ in operands[:3])
    grad = torch.randn(*q.shape[:-1], v.shape[-1])

    def run() -> None:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        q.grad = k.grad = v.grad = None
        out.backward(grad)
    return run


def best_seconds(fn: Callable[[], object], calls: int, rounds: int) -> float:
    """Best over ``rounds`` of the mean time of ``calls`` back-to-back calls."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def floor_seconds(calls: Counter[Call], rounds: int) -> dict[str, float]:
    """Seconds of the step's matmuls (``gemm``) and attention kernels replayed alone."""
    out = {"gemm": 0.0, "attention": 0.0, "gemm_calls": 0, "attention_calls": 0}
    for (name, operands), count in calls.items():
        if name == ATTENTION:  # timed with its backward, so the backward event is skipped
            out["attention"] += count * best_seconds(_attention(operands), count, rounds)
            out["attention_calls"] += count
        elif name in GEMMS:
            out["gemm"] += count * best_seconds(_gemm(name, operands), count, rounds)
            out["gemm_calls"] += count
    return out


# -------------------------------------------------------------------- in place: perf samples
CATEGORIES = (  # (category, fragments of a symbol), first match wins
    ("matmul (MKL/oneDNN GEMM)", ("sgemm", "gblock_by_k", "brgemm", "brg_matmul", "gemm_")),
    ("attention kernels", ("flash_attention",)),
    ("optimizer (fused AdamW)", ("adam",)),
    ("softmax", ("softmax",)),
    ("compiled kernels (inductor)", ("kernel._omp_fn",)),  # torch.compile's fused loops
    ("element-wise", ("VectorizedLoop2d", "loop_2d_from_1d", "Sleef_", "serial_for_each",
                      "vectorized_loop")),
    ("index / scatter / gather / sort", ("index", "scatter", "gather", "sort")),
    ("reductions and norms", ("reduce", "_sum", "norm")),
    ("memory copies and allocation", ("memmove", "memcpy", "memset", "malloc", "_int_free")),
)


def categorize(symbol: str) -> str:
    """The kind of work a sampled C++ symbol does; raw addresses are mostly the OpenMP
    runtime (libgomp ships without symbols), the rest is "other"."""
    for name, fragments in CATEGORIES:
        if any(f in symbol for f in fragments):
            return name
    if symbol == "kernel":  # an inductor kernel run on one thread
        return "compiled kernels (inductor)"
    if symbol.startswith("0x"):
        return "unresolved (OpenMP runtime, ...)"
    return "other"


def parse_perf_report(text: str) -> dict[str, float]:
    """Percent of samples per category from ``perf report --sort sym --stdio -g none``."""
    shares: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0].endswith("%") and parts[1].startswith("["):
            kind = categorize(parts[2])
            shares[kind] = shares.get(kind, 0.0) + float(parts[0][:-1])
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def perf_shares(side: str, hf_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    """Sample ``side``'s training steps in a child process with ``perf record`` for
    ``args.perf_seconds`` (after its warm-up) and sum the samples per category."""
    cmd = [sys.executable, __file__, "--_loop", side, "--_hf-dir", str(hf_dir), "--preset",
           args.preset, "--batch", str(args.batch), "--seq", str(args.seq),
           *(["--compile"] if args.compile else [])]
    with tempfile.TemporaryDirectory() as tmp, subprocess.Popen(
            cmd, stdout=subprocess.PIPE, text=True) as child:
        try:
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{side}: the step loop did not start")
            data = Path(tmp) / "perf.data"
            subprocess.run(["perf", "record", "-q", "-F", "499", "-p", str(child.pid), "-o",
                            str(data), "--", "sleep", str(args.perf_seconds)],
                           check=True, capture_output=True)
        finally:
            child.kill()
        report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort",
                                 "sym", "--stdio", "-g", "none"],
                                check=True, capture_output=True, text=True).stdout
    return parse_perf_report(report)


def step_loop(side: str, hf_dir: Path, args: argparse.Namespace) -> None:
    """The child of ``perf_shares``: warm up, say ``ready``, train until killed."""
    model = load_side(side, hf_dir, False, args.compile)
    torch.manual_seed(1)
    step = make_step(side, model, torch.randint(0, model.config.vocab_size,
                                                (args.batch, args.seq + 1)), "fp32")
    for _ in range(args.warmup + 1):
        step()
    print("ready", flush=True)
    while True:
        step()


# -------------------------------------------------------------------- report
def run(args: argparse.Namespace, hf_dir: Path) -> dict:
    config = get_preset(args.preset)
    torch.manual_seed(1)
    data = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1))
    sides = (SIDES[0], SIDES[2])  # nanoseek (CE + balance) and transformers: the same work
    models = {s: load_side(s, hf_dir, False, args.compile) for s in sides}
    steps = {s: make_step(s, models[s], data, "fp32") for s in sides}
    times = alternate(steps, args.repeats, args.warmup)
    flops = train_flops_per_token(config, args.seq) * args.batch * args.seq
    peak = measure_matmul_flops(torch.device("cpu"), torch.float32)
    rows = {}
    for side in sides:
        step_s = statistics.median(times[side])
        floor = floor_seconds(record_calls(steps[side]), args.rounds)
        rest = step_s - floor["gemm"] - floor["attention"]
        rows[side] = {"step_s": step_s, **floor, "rest_s": rest,
                      "gemm_share": floor["gemm"] / step_s,
                      "gemm_tflops": flops / floor["gemm"] / 1e12,
                      "mfu": flops / step_s / peak}
    if args.perf:
        for side in sides:
            rows[side]["perf_percent"] = perf_shares(side, hf_dir, args)
    ns, hf = rows["nanoseek"], rows["transformers"]
    report = {"preset": args.preset, "batch": args.batch, "seq": args.seq,
              "compile": args.compile, "threads": torch.get_num_threads(),
              "peak_tflops": peak / 1e12, "step_gflop": flops / 1e9, "rows": rows,
              "speedup": hf["step_s"] / ns["step_s"],
              "ceiling": hf["step_s"] / (ns["gemm"] + ns["attention"])}
    if args.perf:  # the same ceiling from the in-place shares of matmul and attention
        kept = sum(ns["perf_percent"].get(k, 0.0) for k, _ in CATEGORIES[:2]) / 100
        report["ceiling_in_place"] = hf["step_s"] / (ns["step_s"] * kept)
    return report


def print_report(r: dict) -> None:
    print(f"\npreset {r['preset']}, batch {r['batch']} × seq {r['seq']}, fp32, "
          f"{r['threads']} threads, torch.compile {r['compile']}; {r['step_gflop']:.0f} GFLOP "
          f"a step; matmul peak {r['peak_tflops']:.3f} TFLOP/s")
    print(f"{'side':<13} {'step s':>7} {'matmuls s':>10} {'calls':>6} {'attention s':>12} "
          f"{'rest s':>7} {'matmul share':>13} {'MFU':>6}")
    for side, row in r["rows"].items():
        print(f"{side:<13} {row['step_s']:>7.3f} {row['gemm']:>10.3f} {row['gemm_calls']:>6} "
              f"{row['attention']:>12.3f} {row['rest_s']:>7.3f} "
              f"{100 * row['gemm_share']:>12.0f}% {100 * row['mfu']:>5.1f}%")
    print(f"nanoseek / transformers tokens/s: {r['speedup']:.2f}×; ceiling (transformers' step "
          f"over nanoseek's matmuls + attention alone): {r['ceiling']:.2f}×")
    if "ceiling_in_place" in r:
        print(f"ceiling from the in-place samples: {r['ceiling_in_place']:.2f}×")
    for side, row in r["rows"].items():
        if "perf_percent" in row:
            print(f"{side}, in place (perf samples, % of the step): " + ", ".join(
                f"{kind} {share:.1f}" for kind, share in row["perf_percent"].items()))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5, help="timed steps per side (medians)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="replay rounds per shape (best)")
    p.add_argument("--compile", action="store_true", help="torch.compile both sides")
    p.add_argument("--perf", action="store_true",
                   help="also sample each side's steps in place with Linux perf (linux-perf)")
    p.add_argument("--perf-seconds", type=float, default=15.0)
    p.add_argument("--json", type=Path, help="also write the JSON report here")
    p.add_argument("--_loop", dest="loop", help=argparse.SUPPRESS)
    p.add_argument("--_hf-dir", dest="hf_dir", type=Path, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    keep_freed_memory()
    if args.loop:
        step_loop(args.loop, args.hf_dir, args)
        return 0
    if args.perf and shutil.which("perf") is None:
        raise SystemExit("--perf: no `perf` on PATH (Debian/Ubuntu: apt install linux-perf)")
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = Path(tmp) / "hf"
        save_reference(args.preset, hf_dir)
        report = run(args, hf_dir)
    emit(report, print_report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
