"""The report's cost section, from measured times and token counts (``nanoseek.costmodel``).

Training: FLOPs (``nanoseek.cost.train_flops_per_token`` × tokens trained), machine-hours
(measured wall time) and dollars at the preset's machine price, per training stage, next to
DeepSeek-V3's published Table 1. Serving: the eval workload of this run (requests, prompt and
output tokens, counted) priced at each API's list prices, and this deployment's own cost per
million output tokens from the measured decode throughput and the machine price.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nanoseek.speedrun.stages import MODELS, distill_sft_dir


def hardware(device: str) -> Any:
    """The costmodel ``Hardware`` of this run: a known GPU by name, else measured."""
    from nanoseek.costmodel import HARDWARE, get_hardware

    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0).lower()
            for key in HARDWARE:
                if key in name:
                    return HARDWARE[key]
    return get_hardware("cpu")


def grpo_tokens(run_dir: Path, preset: Any) -> int:
    """Completion tokens GRPO sampled and trained on (prompt tokens not counted)."""
    from nanoseek.train.metrics import read_jsonl

    g = preset.grpo
    per_step = g.get("grpo.prompts_per_step", 16) * g.get("grpo.group_size", 8)
    rows = read_jsonl(run_dir / "grpo" / "metrics.jsonl")
    return int(sum(r.get("length_mean", 0.0) * per_step for r in rows if "reward" in r))


def training_rows(r: Any) -> list[list[Any]]:
    """One row per training stage that finished: tokens, FLOPs, time, machine-hours, $."""
    from nanoseek.cost import train_flops_per_token
    from nanoseek.speedrun.report import model_config
    from nanoseek.train.metrics import read_jsonl

    hw, rows = hardware(r.preset.device), []
    stages = (("pretrain", "pretrain/model", True), ("sft", "sft/model", False),
              ("grpo", "grpo/model", False), ("distill", "distill/student", False))
    for stage, model_dir, mtp in stages:
        marker, cfg = r.markers.get(stage), model_config(r.run_dir, model_dir)
        if marker is None or cfg is None:
            continue
        tokens = marker["summary"].get("tokens")
        if stage == "grpo":
            tokens = grpo_tokens(r.run_dir, r.preset)
        elif stage == "distill":
            path = distill_sft_dir(r.run_dir) / "metrics.jsonl"
            log = [x for x in read_jsonl(path) if "tokens" in x]
            tokens = log[-1]["tokens"] if log else 0
        seq = getattr(r.preset, stage).get("train.seq_len", 256)
        fpt = train_flops_per_token(cfg, seq, include_mtp=mtp and cfg.is_deepseek)
        seconds = marker["seconds"]
        hours = seconds / 3600
        peak = next(iter(hw.peak_tflops.values())) * 1e12
        mfu = fpt * tokens / seconds / peak if seconds and tokens else 0.0
        rows.append([stage, f"{tokens:,}", f"{fpt:.3e}", f"{fpt * tokens:.3e}", f"{seconds:.0f}",
                     f"{hours:.4f}", f"${hours * r.preset.price_per_hour:.4f}",
                     f"{100 * mfu:.2f}%"])
    return rows


def eval_workload(r: Any) -> Any:
    """The requests of the eval stage: every problem once greedy + k samples, per model; the
    k + 1 requests of one prompt share it, so k / (k + 1) of prompt tokens are cache hits."""
    from nanoseek.costmodel import Workload
    from nanoseek.data.tasks import load_task_file
    from nanoseek.eval.run import build_prompts
    from nanoseek.speedrun.report import _json
    from nanoseek.tokenizer import Tokenizer

    tok_dir = r.run_dir / "tokenizer"
    test = r.run_dir / "corpus" / "test_tasks.jsonl"
    if not tok_dir.is_dir() or not test.is_file():
        return None
    tok, problems = Tokenizer.from_pretrained(tok_dir), load_task_file(test)
    requests = prompt_tokens = output_tokens = 0
    for name, (_, template) in MODELS.items():
        data = _json(r.run_dir / "eval" / f"{name}.json")
        if not data:
            continue
        lengths = {p.prompt: len(ids) for p, ids in zip(problems, build_prompts(
            problems, template, tok), strict=True)}
        for rec in data["records"]:
            n = len(rec["lengths"]) + 1
            requests += n
            prompt_tokens += n * lengths.get(rec["prompt"], 0)
            output_tokens += sum(rec["lengths"]) + (rec.get("greedy_length") or 0)
    if not requests:
        return None
    k = r.preset.eval_samples
    return Workload(prompt_tokens // requests, output_tokens // requests, k / (k + 1), requests)


def sec_cost(r: Any) -> str:
    from nanoseek.costmodel import api_markdown, deployment_cost_per_million, v3_markdown
    from nanoseek.speedrun.report import _json, table

    price, machine = r.preset.price_per_hour, r.preset.machine
    cpu = r.preset.device == "cpu"
    parts = ["### Training (what this run trained)", "",
             table(["stage", "tokens", "FLOPs/token", "FLOPs", "wall s", "machine-hours",
                    f"$ at ${price}/h", "MFU"], training_rows(r)), "",
             "FLOPs per token: 6·N_active + attention (`nanoseek.cost`); MFU against the "
             f"{'measured fp32 matmul peak of this CPU' if cpu else 'GPU peak'}. Price: "
             f"${price}/hour, an assumed list price for a {machine} (not measured). "
             "GRPO counts the sampled completion tokens it trained on (sampling FLOPs not "
             "included).", "", "### DeepSeek-V3 reference (technical report, Table 1)", "",
             v3_markdown(), "", "### Serving"]
    workload = eval_workload(r)
    if workload is not None:
        parts += ["", f"This run's eval workload: {workload.requests:,} requests, "
                      f"{workload.prompt_tokens} prompt tokens and {workload.output_tokens} "
                      f"output tokens each on average, {100 * workload.cache_hit:.0f}% of prompt "
                      "tokens cache hits (k samples + 1 greedy share a prompt). At API list "
                      "prices:", "", api_markdown(workload)]
    speed, rows = _json(r.run_dir / "speed.json"), []
    for key, label in (("teacher", "teacher (MoE)"), ("student", "student (dense)")):
        tps = speed.get(key, {}).get("batched", {}).get("tokens_per_s")
        if tps:
            rows.append([label, f"{tps:,.1f}", f"${price}",
                         f"${deployment_cost_per_million(tps, price):,.2f}"])
    parts += ["", "This deployment (measured batched decode throughput, the machine price "
              "above):", "", table(["model", "output tok/s", "machine $/h", "$ per 1M output "
                                    "tokens"], rows)]
    return "\n".join(parts)
