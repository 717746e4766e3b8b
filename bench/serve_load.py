"""Load test of ``nanoseek serve`` on loopback: many concurrent streaming chat clients.

    python bench/serve_load.py --quick                  # < 1 min: tiny random model, 64 clients
    python bench/serve_load.py --model out/r1 --clients 64 --max-tokens 128 --requests 2
    python bench/serve_load.py --url http://127.0.0.1:8000 --model-name my-model

Starts the server as a subprocess (``nanoseek serve``, its own process and GIL, ledger in a temp
dir) unless ``--url`` points at one already running; without ``--model`` it builds a random
model of ``--preset`` (tiny by default) with a small trained tokenizer. Then it runs

1. one client, ``--baseline`` requests back to back: the single-stream throughput;
2. ``--clients`` clients at once, ``--requests`` streamed requests each;

and reports, per phase: output tokens/s, requests/s, time to first token (TTFT, first
reasoning or content delta) and inter-token latency (ITL, gaps between deltas) at p50/p99,
errors (non-200 answers, error events, missing ``[DONE]``), and the aggregate-throughput ratio
of phase 2 over phase 1. Clients speak raw HTTP/1.1 over asyncio streams, so the client side
costs little CPU next to the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    ok: bool = False
    error: str = ""
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]):
    """Yield the body's bytes, undoing chunked transfer encoding."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                return
            yield await reader.readexactly(size)
            await reader.readline()
    else:
        yield await reader.read()


async def stream_chat(host: str, port: int, body: dict) -> Result:
    """One streamed chat completion; timings from the request's send."""
    result, payload = Result(), json.dumps(body).encode()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as error:
        return Result(error=f"connect: {error}")
    start = last = time.perf_counter()
    writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                 f"application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n"
                 "\r\n".encode() + payload)
    try:
        status = int((await reader.readline()).split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        buffer = b""
        async for data in _read_body(reader, headers):
            buffer += data
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                if status != 200 or not event.startswith(b"data: "):
                    continue
                if event == b"data: [DONE]":
                    result.ok = not result.error
                    continue
                chunk = json.loads(event[6:])
                if "error" in chunk:
                    result.error = chunk["error"]["message"]
                if chunk.get("usage"):
                    result.tokens = chunk["usage"]["completion_tokens"]
                delta = (chunk.get("choices") or [{}])[0].get("delta", {})
                if delta.get("content") or delta.get("reasoning_content"):
                    now = time.perf_counter()
                    if result.ttft is None:
                        result.ttft = now - start
                    else:
                        result.gaps.append(now - last)
                    last = now
        if status != 200:
            result.error = f"HTTP {status}: {buffer[:200]!r}"
    except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as error:
        result.error = f"{type(error).__name__}: {error}"
    finally:
        writer.close()
    if not result.ok and not result.error:
        result.error = "stream ended without [DONE]"
    return result


async def run_phase(host: str, port: int, model: str, clients: int, requests: int,
                    max_tokens: int) -> dict:
    """``clients`` concurrent clients, ``requests`` sequential requests each."""
    async def one_client(c: int) -> list[Result]:
        out = []
        for r in range(requests):
            prompt = f"Client {c} asks question {r}: explain the quick brown fox, step by step."
            out.append(await stream_chat(host, port, {
                "model": model, "stream": True, "max_tokens": max_tokens, "temperature": 1.0,
                "seed": 1000 * c + r, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": prompt}]}))
        return out

    start = time.perf_counter()
    results = [r for rs in await asyncio.gather(*(one_client(c) for c in range(clients)))
               for r in rs]
    wall = time.perf_counter() - start
    ttfts = [r.ttft for r in results if r.ttft is not None]
    gaps = [g for r in results for g in r.gaps]
    errors = [r.error for r in results if not r.ok]
    tokens = sum(r.tokens for r in results)
    return {"clients": clients, "requests": len(results), "wall_s": wall,
            "output_tokens": tokens, "tokens_per_s": tokens / wall,
            "requests_per_s": len(results) / wall,
            "ttft_p50_ms": _pct(ttfts, 50), "ttft_p99_ms": _pct(ttfts, 99),
            "itl_p50_ms": _pct(gaps, 50), "itl_p99_ms": _pct(gaps, 99),
            "errors": len(errors), "error_examples": sorted(set(errors))[:3]}


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return 1000 * values[0]
    return 1000 * statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


# ------------------------------------------------------------------------------ the server
def build_random_model(directory: Path, preset: str) -> Path:
    """A random ``preset`` model with a small trained tokenizer (think tokens included)."""
    import torch

    import nanoseek
    from nanoseek.tokenizer import train_tokenizer

    corpus = directory / "corpus.txt"
    corpus.write_text("\n\n".join(f"The quick brown fox {i} jumps over the lazy dog; step {i}."
                                  for i in range(500)))
    tokenizer = train_tokenizer([corpus], vocab_size=512)
    torch.manual_seed(0)
    config = nanoseek.get_preset(preset).replace(vocab_size=tokenizer.vocab_size)
    out = directory / "model"
    nanoseek.build_model(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def start_server(model: Path, port: int, workdir: Path, max_num_seqs: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "nanoseek.cli", "serve", "--model", str(model),
               "--port", str(port), "--served-model-name", "bench", "--log-level", "warning",
               "--ledger", str(workdir / "usage.sqlite"), "--max-num-seqs", str(max_num_seqs)]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.Popen(command, env=env, cwd=workdir)


def wait_ready(host: str, port: int, process: subprocess.Popen | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1) as s:
                s.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                if b" 200 " in s.recv(64):
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server did not answer /health within {timeout:.0f} s")


def report(single: dict, many: dict) -> str:
    rows = [("1 client", single), (f"{many['clients']} clients", many)]
    lines = ["| phase | requests | tok/s | req/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | errors |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['requests']} | {r['tokens_per_s']:.1f} | "
                     f"{r['requests_per_s']:.2f} | {_ms(r['ttft_p50_ms'])} / "
                     f"{_ms(r['ttft_p99_ms'])} | {_ms(r['itl_p50_ms'])} / "
                     f"{_ms(r['itl_p99_ms'])} | {r['errors']} |")
    ratio = many["tokens_per_s"] / single["tokens_per_s"] if single["tokens_per_s"] else 0
    return "\n".join(lines) + f"\n\nAggregate throughput vs one client: {ratio:.2f}x"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, help="model dir (default: a random --preset model)")
    p.add_argument("--preset", default="tiny", help="preset of the random model")
    p.add_argument("--url", help="an already running server (skip starting one)")
    p.add_argument("--model-name", default="bench", help="model name to request with --url")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--requests", type=int, default=2, help="requests per client")
    p.add_argument("--baseline", type=int, default=4, help="requests of the 1-client phase")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="64 clients x 1 request x 16 tokens")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.max_tokens, args.baseline = 1, 16, 3
    with tempfile.TemporaryDirectory(prefix="nanoseek-load-") as tmp:
        workdir, process = Path(tmp), None
        if args.url:
            host, port = args.url.removeprefix("http://").rstrip("/").split(":")
            port, name = int(port), args.model_name
        else:
            model = args.model or build_random_model(workdir, args.preset)
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                host, port, name = "127.0.0.1", s.getsockname()[1], "bench"
            process = start_server(model, port, workdir, max(256, args.clients))
        try:
            wait_ready(host, port, process, timeout=120)
            single = asyncio.run(run_phase(host, port, name, 1, args.baseline, args.max_tokens))
            many = asyncio.run(run_phase(host, port, name, args.clients, args.requests,
                                         args.max_tokens))
        finally:
            if process is not None:
                process.terminate()
                process.wait(30)
    print(report(single, many))
    for phase in (single, many):
        for example in phase["error_examples"]:
            print(f"error: {example}")
    if args.json:
        args.json.write_text(json.dumps({"single": single, "concurrent": many}, indent=2))
    return 1 if single["errors"] or many["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
