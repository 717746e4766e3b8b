"""``report.md`` of a speedrun, with PNG plots beside it, from the files in the run folder.

Everything in it is read from what the stages wrote (markers, metrics.jsonl, eval/*.json,
speed.json, model config.json files); nothing is estimated except where a line says so. A stage
that has not finished shows as missing rather than with made-up numbers. Sections:
environment, stages and times, models (parameters total / active), configs, pretraining
(losses, expert-load balance), cold-start SFT, GRPO (reward and response length), rejection
sampling and distillation, evaluation (one row per stage, same held-out problems), decode speed
(MTP speculative decoding), cost (training, the DeepSeek-V3 reference, API prices for the eval
workload, this deployment's cost per million tokens), and the commands to use the models.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from nanoseek.speedrun.plots import draw_plots
from nanoseek.speedrun.presets import STAGE_NAMES, Preset
from nanoseek.speedrun.stages import MODELS
from nanoseek.train.metrics import read_jsonl, write_text_atomic

SECTIONS = ("Environment", "Stages and times", "Models", "Configs", "Pretraining",
            "Cold-start SFT", "GRPO", "Rejection sampling and distillation", "Evaluation",
            "Decode speed", "Cost", "Use the models")


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, spec: str = ",.1f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else \
        format(x, spec)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    from nanoseek.costmodel import markdown_table

    return markdown_table(headers, rows) if rows else "_(no data: the stage has not run)_"


def model_config(run_dir: Path, model_dir: str) -> Any:
    """The ``ModelConfig`` of a model dir of the run, or None if it is not there."""
    from nanoseek.config import ModelConfig

    path = run_dir / model_dir / "config.json"
    return ModelConfig.from_json_file(path) if path.is_file() else None


# -------------------------------------------------------------------- sections
def sec_environment(r: Report) -> str:
    env = r.record.get("environment", {})
    rows = [[k, str(v)] for k, v in env.items()]
    rows += [["command", " ".join(r.record.get("command", []))],
             ["started", r.record.get("started", "n/a")],
             ["torchrun world size", str(r.record.get("world_size", 1))]]
    return table(["", ""], rows)


def sec_stages(r: Report) -> str:
    rows, total, cpu = [], 0.0, 0.0
    for stage in STAGE_NAMES:
        m = r.markers.get(stage)
        if m is None:
            status = "writing this report" if stage == "report" else "not run"
            rows.append([stage, status, "", "", _num(r.preset.expected(stage), ".0f"), ""])
            continue
        total, cpu = total + m["seconds"], cpu + m.get("cpu_seconds", 0.0)
        load = "→".join(str(x) for x in m.get("load_average", []))
        rows.append([stage, "done", f"{m['seconds']:.1f}", f"{m.get('cpu_seconds', 0):.1f}",
                     _num(r.preset.expected(stage), ".0f"), load])
    rows.append(["**total**", "", f"{total:.1f} ({total / 60:.1f} min)", f"{cpu:.1f}",
                 _num(sum(r.preset.expected(s) for s in STAGE_NAMES), ".0f"), ""])
    note = (f"Expected times are the preset's ({r.preset.timing_note}). CPU seconds are this "
            "process's; load average (1 min) at the stage's start → end shows how shared the "
            "machine was.")
    return table(["stage", "status", "wall s", "CPU s", "expected s", "load"], rows) + \
        "\n\n" + note


def sec_models(r: Report) -> str:
    from nanoseek.cost import closed_form_params

    rows = []
    for name, (model_dir, _) in MODELS.items():
        cfg = model_config(r.run_dir, model_dir)
        if cfg is None:
            continue
        c = closed_form_params(cfg)
        kind = (f"DeepSeek-V3 MoE: {cfg.num_hidden_layers} layers ({cfg.first_k_dense_replace} "
                f"dense), {cfg.n_routed_experts} routed top-{cfg.num_experts_per_tok} + "
                f"{cfg.n_shared_experts} shared, MLA, MTP {cfg.num_nextn_predict_layers}"
                if cfg.is_deepseek else
                f"dense {cfg.model_type}: {cfg.num_hidden_layers} layers, GQA "
                f"{cfg.num_attention_heads}/{cfg.num_key_value_heads}")
        rows.append([name, model_dir, kind, cfg.hidden_size, c.total, c.active, c.mtp])
    return table(["model", "dir", "architecture", "hidden", "params total", "active / token",
                  "MTP params"], rows) + \
        "\n\nTotal excludes MTP; active counts the output head, not the input embedding " \
        "(DeepSeek's convention: V3 671B total, 37B active)."


def sec_configs(r: Report) -> str:
    p = r.preset.to_dict()
    keep = {k: p[k] for k in ("name", "device", "threads", "task", "task_args", "vocab_size",
                              "sft_problems", "grpo_problems", "sample_problems",
                              "eval_problems", "eval_samples", "eval_max_tokens")}
    parts = [f"Preset `{r.preset.name}`: {r.preset.description}.", "",
             "```json", json.dumps(keep, indent=1), "```", "",
             "Pretraining corpus: " + ", ".join(f"{n:,} {t} {a}" for t, a, n in
                                                r.preset.corpus)
             + (" + README and module docstrings of the repository" if r.preset.text_sources
                else "") + ".", "",
             "Stage settings (`--section.key value` overrides of each stage's own command):"]
    for stage in ("pretrain", "sft", "grpo", "sample", "distill", "speed"):
        parts += ["", f"- `{stage}`: `{json.dumps(getattr(r.preset, stage))}`"]
    return "\n".join(parts)


def sec_pretrain(r: Report) -> str:
    metrics = read_jsonl(r.run_dir / "pretrain" / "metrics.jsonl")
    train = [m for m in metrics if "load_max_over_mean" in m]
    if not metrics:
        return "_(pretraining has not run)_"
    val = [m for m in metrics if "val_loss" in m]
    last = [m for m in metrics if "loss" in m][-1]
    lines = [f"Final training loss {last['loss']:.3f} (next token {last.get('lm_loss', 0):.3f}"
             f", MTP {last.get('mtp_loss', 0):.3f}); validation loss "
             f"{_num(val[-1]['val_loss'], '.3f') if val else 'n/a'}, "
             f"{_num(val[-1].get('val_bpb'), '.3f') if val else 'n/a'} bits per byte.", "",
             "![losses](loss.png)", "", "Expert load (tokens per routed expert / mean; 1 = "
             "balanced), auxiliary-loss-free bias balancing:", "",
             "![expert load](expert_load.png)", "", "![balance](balance.png)", ""]
    if train:
        from nanoseek.speedrun.plots import layer_label

        cfg = model_config(r.run_dir, "pretrain/model")
        n = cfg.num_hidden_layers if cfg else None
        first, end = train[0]["load_max_over_mean"], train[-1]["load_max_over_mean"]
        rows = [[layer_label(k, n), f"{first[k]:.2f}", f"{end.get(k, math.nan):.2f}"]
                for k in first]
        lines.append(table(["MoE layer", f"max/mean load, step {train[0]['step']}",
                            f"step {train[-1]['step']}"], rows))
    return "\n".join(lines)


def sec_sft(r: Report) -> str:
    m = r.markers.get("sft", {}).get("summary")
    if not m:
        return "_(SFT has not run)_"
    return (f"{m['steps']} steps, {m['tokens']:,} tokens (packed rows), final loss "
            f"{_num(m.get('loss'), '.3f')} on assistant tokens of "
            f"{r.preset.sft_problems:,} worked solutions in the R1 chat format "
            "(`<think>` reasoning, then `\\boxed{}`). Curve: `loss.png`.")


def sec_grpo(r: Report) -> str:
    metrics = read_jsonl(r.run_dir / "grpo" / "metrics.jsonl")
    evals = [m for m in metrics if "eval_greedy" in m]
    steps = [m for m in metrics if "reward" in m]
    if not steps:
        return "_(GRPO has not run)_"
    g, done = r.preset.grpo, r.markers.get("grpo", {}).get("summary", {}).get("steps")
    rewards = " + ".join(g.get("reward.names", ["accuracy", "format"]))
    lines = [f"{done or steps[-1]['step']} steps × {g.get('grpo.prompts_per_step')} prompts × "
             f"{g.get('grpo.group_size')} samples, rewards {rewards}; "
             f"mean reward {steps[0]['reward']:.3f} → {steps[-1]['reward']:.3f} (first → last "
             f"logged step, {steps[0]['step']} → {steps[-1]['step']}), mean response length "
             f"{steps[0].get('length_mean', math.nan):.1f} → "
             f"{steps[-1].get('length_mean', math.nan):.1f} tokens.", "",
             "![GRPO](grpo.png)", "", "Held-out evaluation during training (T = "
             f"{r.preset.grpo.get('data.eval_temperature', 0.6)}):", "", ""]
    start = next((m for m in metrics if "solutions_too_long" in m), {})
    if start.get("solutions_too_long"):
        lines[0] += (f" **Warning:** {start['solutions_too_long']} reference solutions are "
                     f"longer than the {g.get('grpo.max_new_tokens')}-token rollouts (longest "
                     f"{start['longest_solution']}); those rollouts were cut off and scored 0.")
    rows = [[e["step"], _pct(e["eval_greedy"]), _pct(e.get("eval_pass@1")),
             _num(e.get("eval_length"))] for e in evals]
    return "\n".join(lines) + table(["step", "greedy", "pass@1", "mean length"], rows)


def sec_distill(r: Report) -> str:
    stats = _json(r.run_dir / "sample" / "traces.stats.json")
    if not stats:
        return "_(rejection sampling has not run)_"
    lines = [f"Rejection sampling of the GRPO model: {stats['prompts']} train problems × "
             f"{r.preset.sample.get('samples')} samples → {stats['verified']} verified "
             f"(pass rate {_pct(stats['pass_rate'])}), {stats['kept']} traces kept "
             f"({stats['duplicates']} duplicates dropped)."]
    m = r.markers.get("distill", {}).get("summary")
    if m:
        d = r.preset.distill
        lines += ["", f"The dense student ({d.get('student.preset')}) trained "
                      f"{m.get('steps', 'n/a')} steps on: {m.get('data', 'n/a')}; logit KD "
                      f"weight {d.get('kd.weight', 0)} against the teacher's top-"
                      f"{d.get('kd.top_k', 20)} log-probs. Curve: `loss.png`."]
    return "\n".join(lines)


def sec_eval(r: Report) -> str:
    rows, evals = [], {}
    for name, (_, template) in MODELS.items():
        data = _json(r.run_dir / "eval" / f"{name}.json")
        if not data:
            rows.append([name, template, "not run", "", "", "", "", ""])
            continue
        m, evals[name] = data["metrics"], data
        k = m.get("samples")
        rows.append([name, template, _pct(m.get("greedy")), _pct(m.get("pass@1")),
                     _pct(m.get(f"pass@{k}")), _pct(m.get(f"maj@{k}")),
                     _pct(m.get("format_rate")), _num(m.get("mean_response_tokens"))])
    p = r.preset
    head = (f"{p.eval_problems} held-out `{p.task}` problems {p.task_args} (the generator's test "
            f"split, disjoint from every training split), {p.eval_samples} samples each at "
            f"T = 0.6, top-p 0.95 (R1's protocol) plus one greedy completion; at most "
            f"{p.eval_max_tokens} new tokens. `plain` = the prompt as pretraining text, "
            "`chat` = the R1 chat template with `<think>` prefilled.")
    head += teacher_note(r)
    body = table(["model", "template", "greedy", "pass@1", f"pass@{p.eval_samples}",
                  f"maj@{p.eval_samples}", "format", "mean tokens"], rows)
    return "\n\n".join([head, body, verdict(evals), "![accuracy](accuracy.png)",
                        examples(evals)])


def teacher_note(r: Report) -> str:
    """A sentence on the fallible teacher, when the preset's worked solutions have slips."""
    rate = r.preset.task_args.get("slip_rate")
    if not rate:
        return ""
    c = r.markers.get("corpus", {}).get("summary", {})
    counts = (f" ({c['task_documents_slipped']:,} of {c['task_documents']:,} pretraining task "
              f"documents, {c['sft_chats_slipped']:,} of {c['sft_chats']:,} SFT chats)"
              if "sft_chats_slipped" in c else "")
    return (f" The worked solutions the models imitate come from a fallible teacher that forgets "
            f"each carry or borrow with probability {rate} and writes the wrong answer that "
            f"follows{counts}; the checker, GRPO's reward and this evaluation use the true "
            "answers, so imitation copies the slips and RL can unlearn them.")


def verdict(evals: dict[str, Any]) -> str:
    """Whether RL beat SFT on the held-out problems, said plainly either way."""
    if "sft" not in evals or "rl" not in evals:
        return ""
    a, b = evals["sft"]["metrics"], evals["rl"]["metrics"]
    parts = []
    for key in ("pass@1", "greedy"):
        if a.get(key) is not None and b.get(key) is not None:
            diff = 100 * (b[key] - a[key])
            word = "improved" if diff > 0 else "did NOT improve"
            parts.append(f"{key} {_pct(a[key])} → {_pct(b[key])}: GRPO {word} held-out "
                         f"accuracy over SFT ({diff:+.1f} points)")
    return "**RL vs SFT.** " + "; ".join(parts) + "."


def examples(evals: dict[str, Any]) -> str:
    """The first held-out problem and each model's greedy completion."""
    first = next(iter(evals.values()), None)
    if not first or not first.get("records"):
        return ""
    rec = first["records"][0]
    lines = [f"Example (held-out): **{rec['prompt']}** (answer {rec['answer']})", ""]
    for name, data in evals.items():
        text = (data["records"][0].get("greedy_completion") or "").strip()
        lines += [f"- `{name}`:", "", "  ```", *("  " + x for x in text.splitlines()[:12]),
                  "  ```"]
    return "\n".join(lines)


def sec_speed(r: Report) -> str:
    s = _json(r.run_dir / "speed.json")
    if not s:
        return "_(the speed stage has not run)_"
    rows = []
    for key, label in (("teacher", "teacher (GRPO MoE), plain decoding"),
                       ("teacher_mtp", "teacher + MTP speculative decoding"),
                       ("student", "student (dense)")):
        row = s.get(key)
        if row:
            batched = row.get("batched", {}).get("tokens_per_s")
            rows.append([label, _num(row["tokens_per_s"]), _pct(row.get("spec_acceptance_rate"))
                         if "spec_acceptance_rate" in row else "", _num(batched)])
    lines = [table(["model", "decode tok/s (batch 1)", "MTP draft acceptance",
                    f"tok/s ({s['batch_prompts']} prompts at once)"], rows), "",
             f"Greedy decoding, {s['max_tokens']} new tokens per prompt (EOS ignored), "
             f"{s['prompts']} held-out prompts one at a time, after a warm-up; the median of "
             f"{s.get('rounds', 1)} rounds (the machine may be shared: see the load average)."]
    t, m, st = s.get("teacher"), s.get("teacher_mtp"), s.get("student")
    if t and m:
        lines.append(f"MTP speculative decoding: ×{m['tokens_per_s'] / t['tokens_per_s']:.2f} "
                     f"tokens/s at batch 1, {_pct(m.get('spec_acceptance_rate'))} of drafts "
                     "accepted. DeepSeek-V3 reports 85–90% acceptance of the second token and "
                     "×1.8 tokens/s, where decoding is memory-bound; a model this small on a CPU "
                     "is bound by per-step overhead instead, which the extra MTP forward adds "
                     "to. The MTP module was trained in pretraining only (SFT and GRPO train "
                     "the main head).")
    if t and st:
        faster = st["tokens_per_s"] > t["tokens_per_s"]
        ratio = st["tokens_per_s"] / t["tokens_per_s"]
        lines.append(f"Student vs teacher: ×{ratio:.2f} decode tokens/s at batch 1 — the "
                     f"student is {'faster' if faster else 'NOT faster'}.")
    return "\n".join(lines)


def sec_commands(r: Report) -> str:
    lines = ["```bash"]
    for name, (model_dir, _) in MODELS.items():
        path = r.run_dir / model_dir
        lines += [f"# {name}", f"nanoseek chat --model {path}",
                  f"nanoseek serve --model {path} --port 8000"]
    lines += ["```", "", "The base model was pretrained on plain text, not chats: prompt it "
              f"with `nanoseek generate --model {r.run_dir / 'pretrain/model'} --prompt "
              "'What is 12 + 34?'`."]
    return "\n".join(lines)


def headline(r: Report) -> str:
    """Total time, held-out accuracy per stage, the RL verdict and the student's speed."""
    done = [m for m in r.markers.values() if m]
    total = sum(m["seconds"] for m in done)
    lines = [f"**Summary.** {len(done)} of {len(STAGE_NAMES)} stages done, "
             f"{total / 60:.1f} minutes of stage time."]
    evals = {n: _json(r.run_dir / "eval" / f"{n}.json") for n in MODELS}
    acc = [f"{n} {_pct(e['metrics'].get('greedy'))}" for n, e in evals.items() if e]
    if acc:
        lines.append("Held-out greedy accuracy: " + ", ".join(acc) + ".")
    if evals.get("sft") and evals.get("rl"):
        lines.append(verdict({"sft": evals["sft"], "rl": evals["rl"]}).removeprefix(
            "**RL vs SFT.** "))
    speed = _json(r.run_dir / "speed.json")
    if speed.get("teacher") and speed.get("student"):
        ratio = speed["student"]["tokens_per_s"] / speed["teacher"]["tokens_per_s"]
        lines.append(f"The dense student decodes ×{ratio:.2f} as fast as the MoE teacher.")
    return " ".join(lines)


class Report:
    """The run folder's files, loaded once."""

    def __init__(self, run_dir: Path, preset: Preset) -> None:
        self.run_dir, self.preset = Path(run_dir), preset
        self.record = _json(self.run_dir / "speedrun.json")
        self.markers = {s: m for s in STAGE_NAMES
                        if (m := _json(self.run_dir / ".stages" / f"{s}.json"))}

    def markdown(self) -> str:
        from nanoseek.speedrun.costs import sec_cost

        funcs = (sec_environment, sec_stages, sec_models, sec_configs, sec_pretrain, sec_sft,
                 sec_grpo, sec_distill, sec_eval, sec_speed, sec_cost, sec_commands)
        parts = [f"# nanoseek speedrun: preset `{self.preset.name}`", "",
                 "Tokenizer → pretraining a tiny DeepSeek-V3 (MLA, MoE with shared and routed "
                 "experts and bias balancing, MTP) → cold-start SFT → GRPO (the R1 recipe) → "
                 "rejection sampling → distillation into a dense student → evaluation of every "
                 "stage on the same held-out problems. All numbers measured in this run."]
        parts += ["", headline(self)]
        for title, fn in zip(SECTIONS, funcs, strict=True):
            parts += ["", f"## {title}", "", fn(self)]
        return "\n".join(parts) + "\n"


def write_report(run_dir: Path, preset: Preset) -> Path:
    """Draw the plots and write ``run_dir/report.md`` (atomically); returns its path."""
    draw_plots(Path(run_dir))
    report = Report(run_dir, preset)
    path = Path(run_dir) / "report.md"
    write_text_atomic(path, report.markdown())
    return path
