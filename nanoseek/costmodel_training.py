"""What training costs: accelerator peaks, GPU-hours and dollars, DeepSeek-V3's Table 1.

``HARDWARE`` lists dense tensor peaks (``get_hardware("cpu")`` measures this machine);
``training_cost`` turns a model config, a token count and one throughput figure (MFU, tokens/s
per GPU or GPU-hours per trillion tokens) into GPU-hours and dollars, with FLOPs per token from
``nanoseek.cost``; ``v3_published_table`` reproduces DeepSeek-V3's published cost table from
its inputs. The command line is ``nanoseek.costmodel``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from nanoseek import cost
from nanoseek.config import ModelConfig, get_preset
from nanoseek.costmodel_numbers import check_nonnegative, check_positive, markdown_table

TRILLION = 10**12


# -------------------------------------------------------------------- hardware
@dataclass(frozen=True)
class Hardware:
    """One accelerator: dense (no 2:4 sparsity) tensor peaks in TFLOPS by precision."""

    name: str
    label: str
    peak_tflops: dict[str, float]
    memory_gb: float | None
    bandwidth_tbs: float | None
    source: str

    def peak_flops(self, precision: str) -> float:
        """Dense peak in FLOP/s for ``precision`` (ValueError if the chip has no such peak)."""
        if precision not in self.peak_tflops:
            raise ValueError(f"precision: {self.name} has no {precision!r} peak; use one of "
                             f"{', '.join(self.peak_tflops)}")
        return self.peak_tflops[precision] * 1e12


_NV = "NVIDIA datasheet, dense = the 'with sparsity' figure / 2"
HARDWARE: dict[str, Hardware] = {h.name: h for h in (
    Hardware("h800", "H800 SXM5 80GB", {"bf16": 989.5, "fp8": 1979.0}, 80, 3.35,
             "H100 SXM compute (H800 cuts NVLink to 400 GB/s and FP64); " + _NV),
    Hardware("h100", "H100 SXM5 80GB", {"bf16": 989.5, "fp8": 1979.0}, 80, 3.35, _NV),
    Hardware("h200", "H200 SXM 141GB", {"bf16": 989.5, "fp8": 1979.0}, 141, 4.8,
             "H100 compute, HBM3e; " + _NV),
    Hardware("h20", "H20 96GB", {"bf16": 148.0, "fp8": 296.0}, 96, 4.0, "NVIDIA H20 spec, dense"),
    Hardware("a100", "A100 SXM4 80GB", {"bf16": 312.0}, 80, 2.039, _NV + " (no FP8)"),
    Hardware("b200", "B200 (HGX)", {"bf16": 2250.0, "fp8": 4500.0}, 180, 8.0,
             "HGX B200: 36 / 72 PFLOPS per 8 GPUs with sparsity, halved"),
    Hardware("rtx4090", "GeForce RTX 4090", {"bf16": 165.2, "fp8": 330.3}, 24, 1.008,
             "Ada whitepaper, FP32 accumulate, dense"),
)}
CPU_NOTE = "measured on this machine (best fp32 2048^3 matmul rate), not a datasheet figure"


def get_hardware(name: str | Hardware) -> Hardware:
    """A ``HARDWARE`` entry by name; ``"cpu"`` runs a quick fp32 matmul benchmark."""
    if isinstance(name, Hardware):
        return name
    key = name.lower()
    if key == "cpu":  # the trainer's MFU peak: measured now, the best seen here kept
        import torch

        from nanoseek.train.metrics import peak_flops

        flops = peak_flops(torch.device("cpu"), torch.float32)[0]
        return Hardware("cpu", f"this CPU ({torch.get_num_threads()} threads)",
                        {"fp32": round(flops / 1e12, 4)}, None, None, CPU_NOTE)
    if key not in HARDWARE:
        raise ValueError(f"gpu: unknown {name!r}; choose one of {', '.join(HARDWARE)}, cpu")
    return HARDWARE[key]


# -------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainingCost:
    """The cost of training on ``tokens`` tokens; ``dollars = gpu_hours * price_per_hour``.

    ``mfu`` = flops_per_token * tokens_per_second_per_gpu / peak_flops_per_gpu, whichever of
    the three was given. ``basis`` says which: "mfu", "tokens_per_second" or
    "gpu_hours_per_trillion"."""

    tokens: int
    seq_len: int
    include_mtp: bool
    flops_per_token: float
    total_flops: float
    hardware: str
    precision: str
    peak_flops_per_gpu: float
    basis: str
    mfu: float
    tokens_per_second_per_gpu: float
    gpu_hours: float
    price_per_hour: float
    dollars: float
    num_gpus: int | None
    wall_clock_days: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"flops_formula": cost.TRAIN_FLOPS_FORMULA}


def training_cost(config: ModelConfig, tokens: int, hardware: str | Hardware = "h800", *,
                  mfu: float | None = None, tokens_per_second: float | None = None,
                  gpu_hours_per_trillion: float | None = None, price_per_hour: float = 2.0,
                  seq_len: int = 4096, precision: str | None = None,
                  include_mtp: bool = False, num_gpus: int | None = None) -> TrainingCost:
    """GPU-hours and dollars to train ``config`` on ``tokens`` tokens of length ``seq_len``.

    Give exactly one of ``mfu`` (0 < mfu <= 1, against the dense ``precision`` peak),
    ``tokens_per_second`` (measured, per GPU) or ``gpu_hours_per_trillion`` (measured; V3:
    180,000). ``precision`` defaults to bf16 (the first listed peak where there is none).
    """
    hw = get_hardware(hardware)
    precision = precision or ("bf16" if "bf16" in hw.peak_tflops else next(iter(hw.peak_tflops)))
    peak = hw.peak_flops(precision)
    check_positive(tokens=tokens, seq_len=seq_len)
    check_nonnegative(price_per_hour=price_per_hour)
    if num_gpus is not None:
        check_positive(num_gpus=num_gpus)
    given = {k: v for k, v in (("mfu", mfu), ("tokens_per_second", tokens_per_second),
                               ("gpu_hours_per_trillion", gpu_hours_per_trillion)) if v is not None}
    if len(given) != 1:
        raise ValueError("throughput: give exactly one of mfu, tokens_per_second, "
                         f"gpu_hours_per_trillion (got {', '.join(given) or 'none'})")
    basis, value = next(iter(given.items()))
    check_positive(**{basis: value})
    if mfu is not None and mfu > 1:
        raise ValueError(f"mfu: a fraction of peak in (0, 1], got {mfu}; write 40% as 0.4")
    fpt = cost.train_flops_per_token(config, seq_len, include_mtp)
    if gpu_hours_per_trillion is not None:
        gpu_hours = tokens * gpu_hours_per_trillion / TRILLION  # exact for integer inputs
        tps = TRILLION / (gpu_hours_per_trillion * 3600)
    else:
        tps = tokens_per_second if tokens_per_second is not None else mfu * peak / fpt
        gpu_hours = tokens / tps / 3600
    days = gpu_hours / num_gpus / 24 if num_gpus else None
    return TrainingCost(tokens, seq_len, include_mtp, fpt, fpt * tokens, hw.name, precision,
                        peak, basis, fpt * tps / peak, tps, gpu_hours, price_per_hour,
                        gpu_hours * price_per_hour, num_gpus, days)


# -------------------------------------------------------------------- DeepSeek-V3 Table 1
V3_PUBLISHED = {  # DeepSeek-V3 technical report, Table 1 (H800 GPU-hours; $2 per GPU-hour)
    "pretraining_tokens": 14_800_000_000_000, "gpu_hours_per_trillion_tokens": 180_000,
    "num_gpus": 2048, "seq_len": 4096, "price_per_gpu_hour": 2.0,
    "gpu_hours": {"pre-training": 2_664_000, "context extension": 119_000,
                  "post-training": 5_000, "total": 2_788_000},
    "dollars": {"pre-training": 5_328_000, "context extension": 238_000,
                "post-training": 10_000, "total": 5_576_000},
}


def v3_published_table() -> dict[str, Any]:
    """Reproduce DeepSeek-V3's cost table from its inputs, and the MFU those hours imply.

    Pre-training hours are computed: 14.8T tokens at the published 180K H800 GPU-hours per
    trillion tokens. Context extension (119K) and post-training (5K) are published measured
    hours taken as inputs (the report gives no throughput for them). Implied MFU = our
    FLOPs/token (V3 preset, T = 4096) x tokens/s per GPU / the H800 dense peak, at the BF16
    and the FP8 peak, with and without the MTP module's FLOPs.
    """
    p, v3 = V3_PUBLISHED, get_preset("deepseek-v3")
    pre = training_cost(v3, p["pretraining_tokens"], "h800",
                        gpu_hours_per_trillion=p["gpu_hours_per_trillion_tokens"],
                        price_per_hour=p["price_per_gpu_hour"], seq_len=p["seq_len"],
                        num_gpus=p["num_gpus"])
    hours = {"pre-training": pre.gpu_hours,
             "context extension": float(p["gpu_hours"]["context extension"]),
             "post-training": float(p["gpu_hours"]["post-training"])}
    hours["total"] = sum(hours.values())
    dollars = {stage: h * p["price_per_gpu_hour"] for stage, h in hours.items()}
    implied = {}
    for mtp in (False, True):
        for precision in ("bf16", "fp8"):
            c = training_cost(v3, p["pretraining_tokens"], "h800", precision=precision,
                              gpu_hours_per_trillion=p["gpu_hours_per_trillion_tokens"],
                              seq_len=p["seq_len"], include_mtp=mtp)
            implied[f"{precision}{'_with_mtp' if mtp else ''}"] = c.mfu
    return {
        "inputs": {k: p[k] for k in ("pretraining_tokens", "gpu_hours_per_trillion_tokens",
                                     "num_gpus", "seq_len", "price_per_gpu_hour")}
        | {"context_extension_gpu_hours": p["gpu_hours"]["context extension"],
           "post_training_gpu_hours": p["gpu_hours"]["post-training"], "gpu": "h800"},
        "gpu_hours": hours, "dollars": dollars,
        "matches_published": hours == p["gpu_hours"] and dollars == p["dollars"],
        "published": {"gpu_hours": p["gpu_hours"], "dollars": p["dollars"]},
        "pretraining": pre.to_dict(),
        "pretraining_days_on_2048_gpus": pre.wall_clock_days,
        "implied_mfu": implied,
        "mfu_note": "headline: bf16 (dense BF16 peak 989.5 TFLOPS, MTP FLOPs excluded); V3 ran "
                    "GEMMs in FP8 (peak 1979 TFLOPS), so the FP8 figure is the stricter one; "
                    "attention counted over all T keys (no causal halving)",
    }


def v3_markdown(table: dict[str, Any] | None = None) -> str:
    """DeepSeek-V3 Table 1 as reproduced, then the implied MFU, as markdown."""
    t = table or v3_published_table()
    rows = [(stage, f"{t['gpu_hours'][stage] / 1e3:,.0f}K",
             f"{t['published']['gpu_hours'][stage] / 1e3:,.0f}K",
             f"${t['dollars'][stage] / 1e6:.3f}M") for stage in t["gpu_hours"]]
    mfu = [(k, f"{100 * v:.1f}%") for k, v in t["implied_mfu"].items()]
    return (markdown_table(("stage", "H800 GPU-hours", "published", "at $2/GPU-h"), rows)
            + "\n\n" + markdown_table(("implied MFU (peak, FLOPs)", "value"), mfu))


def training_markdown(costs: Sequence[TrainingCost]) -> str:
    """One row per ``TrainingCost``."""
    rows = [(f"{c.tokens / 1e9:,.4g}B", c.hardware, c.precision, f"{100 * c.mfu:.1f}%",
             f"{c.tokens_per_second_per_gpu:,.0f}", f"{c.flops_per_token:.3e}",
             f"{c.gpu_hours:,.1f}", f"${c.dollars:,.2f}") for c in costs]
    return markdown_table(("tokens", "hardware", "precision", "MFU", "tok/s/GPU", "FLOPs/token",
                           "GPU-hours", "cost"), rows)
