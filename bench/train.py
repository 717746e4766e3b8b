"""Training throughput of nanoseek vs transformers' DeepseekV3ForCausalLM, side by side.

Same preset (``small`` by default), same weights (the transformers model is loaded from the
nanoseek model saved as an HF directory), same batch and sequence length, same AdamW (fused), same
machine and process. One timed "step" is forward + backward + clip + optimizer step. Sides
alternate (the order flips every repeat) and the medians are reported (the best time too:
on a shared machine it is the steadier number).

Rows:

* ``nanoseek``: next-token loss + balance loss + balance-bias update (what the trainer does,
  MTP off, so the work matches transformers, which drops the MTP layer);
* ``nanoseek+mtp``: the full V3 objective with the MTP module;
* ``transformers``: ``DeepseekV3ForCausalLM`` with its default experts (``grouped_mm``) and
  SDPA attention, cross-entropy loss.

Each precision runs as its own block: ``fp32``, and ``bf16`` (autocast with fp32 master
weights, used where the device has native bf16). Also: the MoE layer alone (grouped experts vs
the reference loop ``nanoseek.model.moe.moe_reference``), MFU against this machine's measured
matmul peak, and the peak memory of each side (one subprocess per side, peak RSS on CPU).

    python bench/train.py --quick          # < 2 minutes
    python bench/train.py --repeats 7 --batch 4 --seq 512 --activation-checkpointing
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.checkpoint import save_pretrained
from nanoseek.config import get_preset
from nanoseek.cost import train_flops_per_token
from nanoseek.cpu_memory import keep_freed_memory
from nanoseek.model import build_model
from nanoseek.train.loop import apply_activation_checkpointing, compile_model, resolve_precision
from nanoseek.train.losses import LMLoss
from nanoseek.train.metrics import measure_matmul_flops
from nanoseek.train.optim import ExpertBalancer

SIDES = ("nanoseek", "nanoseek+mtp", "transformers")


# -------------------------------------------------------------------- models and steps
def save_reference(preset: str, hf_dir: Path) -> None:
    """The nanoseek model of ``preset`` (seed 0) as an HF directory, for both sides."""
    torch.manual_seed(0)
    save_pretrained(build_model(get_preset(preset)), hf_dir)


def load_side(side: str, hf_dir: Path, checkpointing: bool, compiled: bool = False
              ) -> nn.Module:
    """The nanoseek or the transformers model, both from ``hf_dir`` (same weights);
    ``compiled``: compiled (nanoseek as ``train.compile`` does it, transformers
    with ``model.compile()``)."""
    if side != "transformers":
        from nanoseek.checkpoint import load_pretrained

        model = load_pretrained(hf_dir, dtype=torch.float32).train()
        if checkpointing:
            apply_activation_checkpointing(model)
        if compiled:
            compile_model(model)
        return model
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    if checkpointing:
        model.gradient_checkpointing_enable()
    if compiled:
        model.compile()
    return model.train()


def make_step(side: str, model: nn.Module, batch: torch.Tensor, precision: str) -> Callable:
    """A closure running one training step of ``side``; returns the loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    if side == "transformers":
        def loss_fn() -> torch.Tensor:
            logits = model(batch[:, :-1]).logits
            return F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())
    else:
        lm = LMLoss(mtp=side == "nanoseek+mtp", balance_alpha=1e-4)
        balancer = ExpertBalancer(model)

        def loss_fn() -> torch.Tensor:
            with balancer.recording():
                return lm(model, batch, 0.0)[0]

    def step() -> float:
        with autocast:
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if side != "transformers":
            balancer.step(0.001)
        return float(loss.detach())

    return step


def alternate(fns: dict[str, Callable], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each fn, sides interleaved, order flipped every repeat."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


# -------------------------------------------------------------------- MoE layer alone
def bench_moe(preset: str, tokens: int, repeats: int, precision: str) -> dict[str, float]:
    """Forward + backward ms of one DeepseekMoE layer: grouped experts vs the reference loop."""
    from nanoseek.model.moe import DeepseekMoE

    config = get_preset(preset)
    torch.manual_seed(0)
    moe = DeepseekMoE(config, layer_idx=1)
    for p in moe.parameters():
        nn.init.normal_(p, 0, 0.02)
    x = torch.randn(1, tokens, config.hidden_size)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def run(reference: bool) -> Callable:
        def fn() -> None:
            with autocast:
                y, _ = moe(x, reference=reference)
            y.float().square().mean().backward()
            moe.zero_grad(set_to_none=True)
        return fn

    with torch.no_grad(), autocast:
        err = (moe(x)[0] - moe(x, reference=True)[0]).abs().max().item()
    times = alternate({"grouped": run(False), "reference": run(True)}, repeats, 1)
    g, r = statistics.median(times["grouped"]), statistics.median(times["reference"])
    return {"tokens": tokens, "grouped_ms": 1e3 * g, "reference_ms": 1e3 * r,
            "speedup": r / g, "max_abs_diff": err}


# -------------------------------------------------------------------- memory (subprocess)
def _status_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in MiB. (Not
    ``ru_maxrss``: Linux carries the parent's peak into a forked-and-exec'd child.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_probe(side: str, hf_dir: Path, batch: int, seq: int, precision: str,
                 checkpointing: bool) -> dict[str, float]:
    """Run 3 steps of ``side`` in this (fresh) process: peak RSS, and its growth over the
    resident size before the first step (when only the weights are allocated)."""
    model = load_side(side, hf_dir, checkpointing)
    data = torch.randint(0, model.config.vocab_size, (batch, seq + 1))
    step = make_step(side, model, data, precision)
    before = _status_mb("VmRSS")
    for _ in range(3):
        step()
    peak = _status_mb("VmHWM")
    return {"rss_before_mb": round(before, 1), "peak_rss_mb": round(peak, 1),
            "train_growth_mb": round(peak - before, 1)}


def run_memory(args: argparse.Namespace, hf_dir: Path, precision: str) -> dict[str, dict]:
    """``memory_probe`` of each side, each in a fresh process."""
    out = {}
    for side in SIDES[::2] if args.quick else SIDES:
        cmd = [sys.executable, __file__, "--_memory-probe", side, "--_hf-dir", str(hf_dir),
               "--batch", str(args.batch), "--seq", str(args.seq), "--_precision", precision]
        if args.activation_checkpointing:
            cmd.append("--activation-checkpointing")
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            out[side] = {"error": result.stderr.strip().splitlines()[-1:]}
            continue
        out[side] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


# -------------------------------------------------------------------- the report
def run_throughput(args: argparse.Namespace, hf_dir: Path, precisions: list[str]) -> dict:
    config = get_preset(args.preset)
    batch_tokens = args.batch * args.seq
    flops = {"nanoseek": train_flops_per_token(config, args.seq),
             "transformers": train_flops_per_token(config, args.seq),
             "nanoseek+mtp": train_flops_per_token(config, args.seq, include_mtp=True)}
    models = {side: load_side(side, hf_dir, args.activation_checkpointing, args.compile)
              for side in ("nanoseek", "transformers")}
    hf_experts = getattr(models["transformers"].config, "_experts_implementation", "?")
    torch.manual_seed(1)
    data = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1))
    results = {}
    for precision in precisions:
        peak = measure_matmul_flops(torch.device("cpu"), torch.bfloat16 if precision == "bf16"
                                    else torch.float32)
        steps = {side: make_step(side, models["transformers" if side == "transformers"
                                               else "nanoseek"], data, precision)
                 for side in SIDES}
        times = alternate(steps, args.repeats, args.warmup)
        rows = {}
        for side in SIDES:
            med = statistics.median(times[side])
            tps = batch_tokens / med
            rows[side] = {"step_s": med, "best_step_s": min(times[side]), "tokens_per_s": tps,
                          "mfu": tps * flops[side] / peak, "all_step_s": times[side]}
        rows["speedup_vs_transformers"] = (rows["nanoseek"]["tokens_per_s"]
                                           / rows["transformers"]["tokens_per_s"])
        results[precision] = {"peak_tflops": peak / 1e12, "rows": rows}
    return {"hf_experts_implementation": hf_experts, "precisions": results}


def print_table(report: dict) -> None:
    print(f"\npreset {report['preset']}, batch {report['batch']} × seq {report['seq']}, "
          f"{report['threads']} threads, repeats {report['repeats']} (medians), "
          f"activation checkpointing {report['activation_checkpointing']}, "
          f"torch.compile {report['compile']}")
    print(f"transformers experts implementation: {report['hf_experts_implementation']}")
    print(f"{'precision':<9} {'side':<14} {'step s':>8} {'best s':>8} {'tokens/s':>10} {'MFU':>7} "
          f"{'peak RSS MiB':>13} {'train +MiB':>11}")
    for precision, block in report["precisions"].items():
        mem = report.get("memory", {}).get(precision, {})
        for side in SIDES:
            row = block["rows"][side]
            m = mem.get(side, {})
            print(f"{precision:<9} {side:<14} {row['step_s']:>8.3f} {row['best_step_s']:>8.3f} "
                  f"{row['tokens_per_s']:>10,.0f} "
                  f"{100 * row['mfu']:>6.1f}% {m.get('peak_rss_mb', float('nan')):>13.0f} "
                  f"{m.get('train_growth_mb', float('nan')):>11.0f}")
        print(f"{precision:<9} nanoseek / transformers tokens/s: "
              f"{block['rows']['speedup_vs_transformers']:.2f}×  "
              f"(matmul peak {block['peak_tflops']:.3f} TFLOP/s)")
    if "bf16_over_fp32" in report:
        print(f"nanoseek bf16 / fp32 tokens/s: {report['bf16_over_fp32']:.2f}×")
    for precision, moe in report.get("moe", {}).items():
        print(f"MoE layer ({precision}, {moe['tokens']} tokens, fwd+bwd): grouped "
              f"{moe['grouped_ms']:.1f} ms vs reference loop {moe['reference_ms']:.1f} ms = "
              f"{moe['speedup']:.2f}× (max diff {moe['max_abs_diff']:.1e})")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precision", default="both", choices=("fp32", "bf16", "both"))
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile both sides (nanoseek's routed experts stay eager)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--quick", action="store_true",
                   help="batch 1 × 128, 3 repeats, fewer memory probes (< 2 min on an idle "
                        "2-core CPU)")
    p.add_argument("--json", type=Path, help="also write the JSON report here")
    p.add_argument("--_memory-probe", dest="memory_probe", help=argparse.SUPPRESS)
    p.add_argument("--_precision", dest="probe_precision", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--_hf-dir", dest="hf_dir", type=Path, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    keep_freed_memory()  # as nanoseek's trainer does on CPU; both sides run under it
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.hf_dir, args.batch, args.seq,
                                      args.probe_precision, args.activation_checkpointing)))
        return 0
    if args.quick:
        args.batch, args.seq, args.repeats, args.warmup = 1, 128, 3, 1
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    if "bf16" in precisions and resolve_precision("auto", torch.device("cpu")) != "bf16":
        print("note: `precision = auto` picks fp32 on this CPU (no AMX); bf16 runs anyway")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = Path(tmp) / "hf"
        save_reference(args.preset, hf_dir)
        report = {"preset": args.preset, "batch": args.batch, "seq": args.seq,
                  "repeats": args.repeats, "threads": torch.get_num_threads(),
                  "activation_checkpointing": args.activation_checkpointing,
                  "compile": args.compile, **run_throughput(args, hf_dir, precisions)}
        if len(precisions) == 2:
            rows = report["precisions"]
            report["bf16_over_fp32"] = (rows["bf16"]["rows"]["nanoseek"]["tokens_per_s"]
                                        / rows["fp32"]["rows"]["nanoseek"]["tokens_per_s"])
        report["moe"] = {p: bench_moe(args.preset, args.batch * args.seq, args.repeats, p)
                         for p in precisions}
        if not args.no_memory:
            report["memory"] = {p: run_memory(args, hf_dir, p)
                                for p in precisions[:1 if args.quick else 2]}
    report["wall_s"] = time.perf_counter() - t0
    emit(report, print_table, args.json)
    return 0


def emit(report: dict, print_table: Callable[[dict], None], json_path: Path | None) -> None:
    """The human table, the JSON report on one line, and the JSON file if asked for."""
    print_table(report)
    print(json.dumps(report))
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
