"""Decode benchmark: nanoseek's engine vs ``transformers`` on the same ``small`` model.

    python bench/decode.py --quick          # smoke run, < 2 minutes
    python bench/decode.py --json-out r.json  # full run, < 15 minutes

Both sides load the same random ``small``-preset weights (saved once as a HF directory), in
float32 with the same thread count, each in its own process (so peak RSS is per side); the
sides alternate over ``--repeats`` rounds and every number is the median. Measured:

* prefill tokens/s of a 512-token prompt (time to the first token);
* decode tokens/s at batch 1, 8, 32 (time from the first to the last new token);
* KV-cache bytes per token: nanoseek's allocated latent cache vs transformers' per-head K/V;
* memory read bandwidth and the batch-1 decode roofline (bandwidth / active weight bytes);
* nanoseek only: 16 concurrent requests vs one (aggregate tokens/s), and the time to first
  token of a prompt whose 1,024-token prefix is cached vs cold;
* peak resident memory of each side. The load average is recorded (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

SIZES = {  # name: (decode new tokens, decode batches, repeats)
    "full": (128, (1, 8, 32), 3),
    "quick": (32, (1, 8), 1),
}
PREFILL_LEN, DECODE_PROMPT, PREFIX_LEN, SUFFIX_LEN, CONCURRENT = 512, 64, 1024, 32, 16
KV_CACHE_MEMORY = 64 * 2**20  # 13k tokens of the small preset: every test here fits
GOALS = {"decode_b1": 3.0, "decode_b8": 10.0, "concurrency_speedup": 4.0,
         "prefix_ttft_speedup": 5.0}


# ==================================================================== shared helpers
def _prompts(n: int, length: int, seed: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=g).tolist()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_model_dir(path: str) -> None:
    """The ``small`` preset with seeded random weights, saved as a HF model directory."""
    from nanoseek.checkpoint import save_pretrained
    from nanoseek.config import get_preset
    from nanoseek.model import build_model

    torch.manual_seed(0)
    save_pretrained(build_model(get_preset("small")).eval(), path)


def bandwidth_gbs(seconds: float = 1.0) -> float:
    """Best-of read bandwidth (GB/s): repeated ``sum`` over a 512 MiB float32 tensor."""
    x = torch.ones(128 * 2**20)
    x.sum()
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        x.sum()
        best = max(best, x.numel() * 4 / (time.perf_counter() - t) / 1e9)
    return best


# ==================================================================== nanoseek side
def _ns_decode(llm, batch: int, new: int, seed: int) -> float:
    from nanoseek.infer import SamplingParams

    engine, vocab = llm.engine, llm.engine.config.vocab_size
    params = SamplingParams(temperature=0, max_tokens=new, ignore_eos=True)
    for i, prompt in enumerate(_prompts(batch, DECODE_PROMPT, seed, vocab)):
        engine.add_request(f"d{seed}-{i}", prompt, params)
    started: set[str] = set()
    while len(started) < batch:
        started |= {o.request_id for o in engine.step() if o.outputs[0].token_ids}
    t0 = time.perf_counter()
    while engine.has_unfinished():
        engine.step()
    return batch * (new - 1) / (time.perf_counter() - t0)


def _ns_ttft(llm, prompt: list[int]) -> float:
    from nanoseek.infer import SamplingParams

    t = time.perf_counter()
    llm.generate([prompt], SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
    return time.perf_counter() - t


def worker_nanoseek(model_dir: str, new: int, batches: tuple[int, ...]) -> dict:
    from nanoseek.infer import LLM, SamplingParams

    llm = LLM(model_dir, dtype="float32", enable_prefix_caching=False,
              kv_cache_memory=KV_CACHE_MEMORY)
    vocab = llm.engine.config.vocab_size
    _ns_decode(llm, 2, 4, seed=99)  # warm-up
    _ns_ttft(llm, _prompts(1, PREFILL_LEN, 98, vocab)[0])
    out = {"prefill_tps": PREFILL_LEN / _ns_ttft(llm, _prompts(1, PREFILL_LEN, 1, vocab)[0])}
    for b in batches:
        out[f"decode_b{b}"] = _ns_decode(llm, b, new, seed=10 + b)
    out["kv_bytes_per_token"] = llm.engine.storage.bytes_per_token
    params = SamplingParams(temperature=0, max_tokens=new, ignore_eos=True)
    t = time.perf_counter()
    llm.generate(_prompts(1, DECODE_PROMPT, 3, vocab), params)
    one = new / (time.perf_counter() - t)
    t = time.perf_counter()
    llm.generate(_prompts(CONCURRENT, DECODE_PROMPT, 4, vocab), params)
    many = CONCURRENT * new / (time.perf_counter() - t)
    out.update(single_request_tps=one, concurrent_tps=many, concurrency_speedup=many / one)
    cold, warm = [], []
    for k in range(2):
        cached = LLM(llm.model, kv_cache_memory=KV_CACHE_MEMORY)  # prefix caching, fresh
        prefix = _prompts(1, PREFIX_LEN, 50 + k, vocab)[0]
        suffixes = _prompts(2, SUFFIX_LEN, 60 + k, vocab)
        cold.append(_ns_ttft(cached, prefix + suffixes[0]))
        warm.append(_ns_ttft(cached, prefix + suffixes[1]))
        del cached
    out.update(prefix_ttft_cold_s=statistics.median(cold),
               prefix_ttft_cached_s=statistics.median(warm))
    out["prefix_ttft_speedup"] = out["prefix_ttft_cold_s"] / out["prefix_ttft_cached_s"]
    return out


# ==================================================================== transformers side
class _Clock:
    """A ``generate`` streamer that only timestamps: put(prompt), put(token)…, end()."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        self.times.append(time.perf_counter())


def _hf_generate(model, prompts: list[list[int]], new: int, streamer=None):
    with torch.inference_mode():
        return model.generate(torch.tensor(prompts), max_new_tokens=new, min_new_tokens=new,
                              do_sample=False, pad_token_id=0, streamer=streamer,
                              return_dict_in_generate=True)


def _hf_kv_bytes_per_token(past, tokens: int) -> float:
    layers = getattr(past, "layers", None)
    if layers is None:
        return float("nan")
    total = sum(t.numel() * t.element_size() for layer in layers
                for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
                if t is not None)
    return total / tokens


def worker_transformers(model_dir: str, new: int, batches: tuple[int, ...]) -> dict:
    import transformers

    transformers.logging.set_verbosity_error()
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = model.eval()
    vocab = model.config.vocab_size
    _hf_generate(model, _prompts(2, 8, 99, vocab), 4)  # warm-up
    _hf_generate(model, _prompts(1, PREFILL_LEN, 98, vocab), 1)
    t = time.perf_counter()
    _hf_generate(model, _prompts(1, PREFILL_LEN, 1, vocab), 1)
    out = {"prefill_tps": PREFILL_LEN / (time.perf_counter() - t)}
    for b in batches:
        clock = _Clock()
        result = _hf_generate(model, _prompts(b, DECODE_PROMPT, 10 + b, vocab), new, clock)
        out[f"decode_b{b}"] = b * (new - 1) / (clock.times[-1] - clock.times[1])
        if b == 1:
            length = result.sequences.shape[1] - 1  # the last token is never cached
            out["kv_bytes_per_token"] = _hf_kv_bytes_per_token(result.past_key_values, length)
    return out


# ==================================================================== driver
def _run_worker(side: str, model_dir: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--model-dir", model_dir,
           "--threads", str(args.threads)] + (["--quick"] if args.quick else [])
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} worker failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_before"], result["load_after"] = load, os.getloadavg()[0]
    return result


def _medians(runs: list[dict]) -> dict:
    keys = {k for run in runs for k in run}
    return {k: statistics.median(r[k] for r in runs if k in r) for k in sorted(keys)}


def _model_facts(model_dir: str) -> dict:
    """Active weight bytes per token (fp32, head included), per-head K/V bytes per token (what
    caching expanded keys/values would take), and the weight bytes one decode step of 8
    sequences must read: everything but the routed experts once, plus the experts the 8 tokens
    pick, ``E·(1 − (1 − k/E)^8)`` per MoE layer if routing is uniform (random weights)."""
    from nanoseek.checkpoint import read_config
    from nanoseek.cost import count_params, kv_cache_bytes_per_token
    from nanoseek.model import build_model

    config = read_config(model_dir)[0]
    with torch.device("meta"):
        model = build_model(config)
    active = count_params(model).active * 4
    e, k = config.n_routed_experts, config.num_experts_per_tok
    expert = 3 * config.hidden_size * config.moe_intermediate_size * 4
    moe_layers = config.num_hidden_layers - config.first_k_dense_replace
    touched_b8 = e * (1 - (1 - k / e) ** 8)
    step_b8 = active + moe_layers * (touched_b8 - k) * expert
    return {"active_bytes_per_token": active,
            "per_head_kv": kv_cache_bytes_per_token(config, 4)["per_head_kv"],
            "step_bytes_b8": step_b8, "experts_touched_b8": touched_b8}


def summarize(ns: dict, hf: dict, bw: float, facts: dict) -> dict:
    rows = {}
    for key in sorted(set(ns) & set(hf)):
        if key.startswith(("prefill", "decode", "kv_", "peak")):
            ratio = ns[key] / hf[key] if hf[key] else float("nan")
            rows[key] = {"nanoseek": ns[key], "transformers": hf[key], "ratio": ratio}
    active, per_head_kv = facts["active_bytes_per_token"], facts["per_head_kv"]
    roofline = bw * 1e9 / active
    roofline_b8 = 8 * bw * 1e9 / facts["step_bytes_b8"]
    extra = {k: ns[k] for k in ns if k.startswith(("single", "concurrent", "prefix"))}
    checks = {"decode_b1": rows.get("decode_b1", {}).get("ratio"),
              "decode_b8": rows.get("decode_b8", {}).get("ratio"),
              "concurrency_speedup": ns.get("concurrency_speedup"),
              "prefix_ttft_speedup": ns.get("prefix_ttft_speedup")}
    goals = {k: {"got": v, "goal": GOALS[k], "met": v is not None and v >= GOALS[k]}
             for k, v in checks.items()}
    return {"compare": rows, "nanoseek_only": extra, "bandwidth_gbs": bw,
            "per_head_kv_bytes_per_token": per_head_kv,
            "active_bytes_per_token": active, "roofline_b1_tps": roofline,
            "roofline_fraction_b1": {"nanoseek": ns["decode_b1"] / roofline,
                                     "transformers": hf["decode_b1"] / roofline},
            "experts_touched_b8": facts["experts_touched_b8"], "roofline_b8_tps": roofline_b8,
            "roofline_fraction_b8": {side: r["decode_b8"] / roofline_b8
                                     for side, r in (("nanoseek", ns), ("transformers", hf))
                                     if "decode_b8" in r},
            "goals": goals}


def print_table(summary: dict) -> None:
    print(f"\n{'metric':<26}{'nanoseek':>14}{'transformers':>14}{'ratio':>9}")
    for key, row in summary["compare"].items():
        print(f"{key:<26}{row['nanoseek']:>14.1f}{row['transformers']:>14.1f}"
              f"{row['ratio']:>8.2f}x")
    for key, value in summary["nanoseek_only"].items():
        print(f"{key:<26}{value:>14.3f}")
    print(f"{'kv per-head K/V (naive)':<26}{summary['per_head_kv_bytes_per_token']:>14.1f}")
    print(f"\nread bandwidth {summary['bandwidth_gbs']:.1f} GB/s; active weights "
          f"{summary['active_bytes_per_token'] / 1e6:.1f} MB/token; batch-1 roofline "
          f"{summary['roofline_b1_tps']:.1f} tok/s; reached: nanoseek "
          f"{summary['roofline_fraction_b1']['nanoseek']:.0%}, transformers "
          f"{summary['roofline_fraction_b1']['transformers']:.0%}")
    b8 = summary["roofline_fraction_b8"]
    print(f"batch-8 roofline {summary['roofline_b8_tps']:.1f} tok/s (reading "
          f"{summary['experts_touched_b8']:.1f} experts per MoE layer per step); reached: "
          + ", ".join(f"{side} {frac:.0%}" for side, frac in b8.items()))
    for key, goal in summary["goals"].items():
        got = "n/a" if goal["got"] is None else f"{goal['got']:.2f}x"
        print(f"goal {key:<22} >= {goal['goal']:.0f}x: {got} {'met' if goal['met'] else 'NOT met'}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run (< 2 minutes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="rounds per side")
    parser.add_argument("--json-out", default=None, help="also write the JSON here")
    parser.add_argument("--worker", choices=("nanoseek", "transformers"), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    new, batches, repeats = SIZES["quick" if args.quick else "full"]
    if args.worker:
        work = worker_nanoseek if args.worker == "nanoseek" else worker_transformers
        result = work(args.model_dir, new, batches)
        result["peak_rss_mb"] = _peak_rss_mb()
        print(json.dumps(result))
        return 0
    repeats = args.repeats or repeats
    with tempfile.TemporaryDirectory() as model_dir:
        make_model_dir(model_dir)
        bw = bandwidth_gbs()
        runs: dict[str, list[dict]] = {"nanoseek": [], "transformers": []}
        for r in range(repeats):
            order = ("nanoseek", "transformers") if r % 2 == 0 else ("transformers", "nanoseek")
            for side in order:
                print(f"round {r + 1}/{repeats}: {side}…", file=sys.stderr, flush=True)
                runs[side].append(_run_worker(side, model_dir, args))
        summary = summarize(_medians(runs["nanoseek"]), _medians(runs["transformers"]), bw,
                            _model_facts(model_dir))
    summary.update(threads=args.threads, repeats=repeats, decode_new_tokens=new,
                   preset="small", dtype="float32", runs=runs)
    print_table(summary)
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json_out:
        tmp = args.json_out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
