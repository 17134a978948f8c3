"""Requests/s and latency of `paradox serve` under 1, 4 and 16 concurrent clients.

    python benchmarks/serve/run.py [--target SPEC] [--requests 24] [--max-tokens 32]

Starts `paradox serve` on 127.0.0.1 in a subprocess, sends greedy chat requests from N client
threads (each level bounded by --requests and --seconds), and prints a table. The server
generates one request at a time (see alignparadox.targets.serve), so throughput should stay flat
as clients are added while latency grows with the queue: the table measures exactly that cost.
Default target: organism:aligned-4 when the organisms package can build it, else a random tiny
Llama (the numbers then measure the server, not a meaningful model).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

PROMPTS = [
    "Give me a short tip for keeping houseplants healthy.",
    "What is the capital of France?",
    "Summarise the water cycle in two sentences.",
    "Suggest a name for a friendly robot.",
]
console = Console()


def default_target(workdir: Path) -> str:
    try:
        from alignparadox.organisms import organism_path

        organism_path("aligned-4")
        return "organism:aligned-4"
    except Exception as error:  # organisms not written, not importable, or failing to build
        from alignparadox.targets.random_models import make_random_model

        console.print(f"[yellow]organism:aligned-4 unavailable ({type(error).__name__}: "
                      f"{error}); benchmarking a random tiny Llama instead.[/yellow]")
        return str(make_random_model("llama", workdir / "tiny-llama"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_ready(process: subprocess.Popen, base_url: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"paradox serve exited with code {process.returncode} before it was ready.")
        try:
            return httpx.get(f"{base_url}/models", timeout=2).json()["data"][0]["id"]
        except httpx.HTTPError:
            time.sleep(0.5)
    sys.exit(f"paradox serve was not ready after {timeout:.0f} s.")


def run_level(base_url: str, model: str, clients: int, requests: int, seconds: float,
              max_tokens: int) -> dict:
    """Send up to `requests` requests from `clients` threads, stopping early after `seconds`."""
    latencies: list[float] = []
    tokens: list[int] = []
    issued = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client_loop() -> None:
        nonlocal issued
        with httpx.Client(timeout=max(seconds, 60)) as http:
            while True:
                with lock:
                    if issued >= requests or time.monotonic() > deadline:
                        return
                    prompt = PROMPTS[issued % len(PROMPTS)]
                    issued += 1
                start = time.perf_counter()
                response = http.post(f"{base_url}/chat/completions", json={
                    "model": model, "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": max_tokens, "temperature": 0})
                response.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - start)
                    tokens.append(response.json()["usage"]["completion_tokens"])

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"clients": clients, "requests": len(latencies), "rps": len(latencies) / wall,
            "p50": float(np.percentile(latencies, 50)), "p95": float(np.percentile(latencies, 95)),
            "tokens_per_s": sum(tokens) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="target spec (default: organism:aligned-4 or tiny llama)")
    parser.add_argument("--requests", type=int, default=24, help="requests per level (max)")
    parser.add_argument("--seconds", type=float, default=60, help="time limit per level")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens per request")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        spec = args.target or default_target(Path(workdir))
        port = free_port()
        base_url = f"http://127.0.0.1:{port}/v1"
        process = subprocess.Popen(
            [sys.executable, "-m", "alignparadox.cli", "serve", spec, "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            model = wait_until_ready(process, base_url, timeout=600)
            run_level(base_url, model, 1, 2, args.seconds, args.max_tokens)  # warm-up
            rows = [run_level(base_url, model, clients, args.requests, args.seconds,
                              args.max_tokens) for clients in (1, 4, 16)]
        finally:
            process.terminate()
            process.wait(timeout=30)

    table = Table(title=f"paradox serve — {model}, greedy, max_tokens={args.max_tokens}")
    for column in ("clients", "requests", "req/s", "p50 ms", "p95 ms", "new tokens/s"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["clients"]), str(row["requests"]), f"{row['rps']:.2f}",
                      f"{row['p50'] * 1000:.0f}", f"{row['p95'] * 1000:.0f}",
                      f"{row['tokens_per_s']:.1f}")
    console.print(table)


if __name__ == "__main__":
    main()
