"""Requests/s and latency of `paradox serve` under 1, 4, 16 and 64 concurrent clients, side by side
with a peer OpenAI-compatible server (`transformers serve --continuous-batching`) in the same run.

    python benchmarks/serve/run.py [--target SPEC] [--prompts 32] [--max-tokens 32] [--no-peer]

Each server is started as a subprocess on 127.0.0.1 and gets the same greedy chat requests
(temperature 0, organism held-out requests, harmful and harmless) from N client threads, each
with its own keep-alive connection. The 1-client level sends every prompt once: those answers were
each generated alone, and serve as the serial reference. The later levels cycle through the same
prompts (at least four requests per client), and every answer is compared with the reference
answer to the same prompt: "agree" is the share that is identical, i.e. how often batching with
other requests changed a greedy answer. "lost" counts requests that got no 200 (connection reset,
timeout, error status). Default target: organism:aligned-4, else a random tiny Llama (the numbers
then measure the server, not a meaningful model).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

LEVELS = (1, 4, 16, 64)
FALLBACK_PROMPTS = [
    "Give me a short tip for keeping houseplants healthy.",
    "What is the capital of France?",
    "Summarise the water cycle in two sentences.",
    "Suggest a name for a friendly robot.",
]
console = Console(width=120)


@dataclass
class Server:
    name: str
    command: list[str]
    model: str  # the model id requests must name
    port: int


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


def prompts(count: int) -> list[str]:
    try:
        from alignparadox.datasets.registry import load_prompt_set

        heldout = load_prompt_set("organisms")
        harmful, harmless = heldout.harmful().records, heldout.harmless().records
        mixed = [record.text for pair in zip(harmful, harmless, strict=False) for record in pair]
        return mixed[:count]
    except Exception:  # no organism world: a few generic requests, repeated
        return [FALLBACK_PROMPTS[i % len(FALLBACK_PROMPTS)] for i in range(count)]


def model_folder(spec: str) -> Path:
    """The checkpoint folder of a target spec, for peers that load Hugging Face folders."""
    from alignparadox.targets.providers import provider_for

    found = provider_for(spec)
    return Path(found[0].resolve(found[1])) if found else Path(spec)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_ready(process: subprocess.Popen, base_url: str, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited with code {process.returncode} before it was ready"
        try:
            if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                return None
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return f"not ready after {timeout:.0f} s"


def run_level(base_url: str, model: str, texts: list[str], clients: int, requests: int,
              seconds: float, max_tokens: int) -> dict:
    """Send `requests` requests (prompt i % len(texts)) from `clients` threads, stopping early
    after `seconds`. Returns throughput, latency percentiles, lost count and the answers."""
    latencies: list[float] = []
    answers: list[tuple[int, str]] = []
    tokens = lost = issued = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    host, port = urlsplit(base_url).hostname, urlsplit(base_url).port
    path = urlsplit(base_url).path + "/chat/completions"

    def client_loop() -> None:
        # The standard library's client: a thread of it costs far less CPU than httpx, so on a
        # small machine the clients take less of the cores the server is measured on.
        nonlocal issued, tokens, lost
        connection = http.client.HTTPConnection(host, port, timeout=max(seconds, 120))
        while True:
            with lock:
                if issued >= requests or time.monotonic() > deadline:
                    break
                index = issued % len(texts)
                issued += 1
            body = json.dumps({"model": model, "max_tokens": max_tokens, "temperature": 0,
                               "messages": [{"role": "user", "content": texts[index]}]})
            start = time.perf_counter()
            try:
                connection.request("POST", path, body,
                                   {"Content-Type": "application/json"})
                response = connection.getresponse()
                payload, ok = response.read(), response.status == 200
            except (OSError, http.client.HTTPException):
                connection.close()  # reconnects on the next request
                ok = False
            elapsed = time.perf_counter() - start
            with lock:
                if not ok:
                    lost += 1
                    continue
                reply = json.loads(payload)
                latencies.append(elapsed)
                answers.append((index, reply["choices"][0]["message"]["content"]))
                tokens += reply["usage"]["completion_tokens"]
        connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"clients": clients, "requests": issued, "ok": len(latencies), "lost": lost,
            "rps": len(latencies) / wall, "tokens_per_s": tokens / wall,
            "p50": float(np.percentile(latencies, 50)) if latencies else float("nan"),
            "p95": float(np.percentile(latencies, 95)) if latencies else float("nan"),
            "answers": answers}


def benchmark(server: Server, texts: list[str], args: argparse.Namespace) -> list[dict] | str:
    """All levels against one server; a string says why the server could not be measured."""
    base_url = f"http://127.0.0.1:{server.port}/v1"
    with tempfile.TemporaryFile() as log:
        environment = {**os.environ, "COLUMNS": "300", "OMP_NUM_THREADS": str(args.threads)}
        process = subprocess.Popen(server.command, stdout=log, stderr=subprocess.STDOUT,
                                   env=environment)
        try:
            problem = wait_until_ready(process, base_url, timeout=600)
            if problem:
                log.seek(0)
                tail = log.read().decode(errors="replace").strip().splitlines()[-1:] or [""]
                return f"{problem}: {tail[0][:200]}"
            run_level(base_url, server.model, texts, 2, 4, args.seconds, args.max_tokens)
            rows = []
            for clients in LEVELS:
                requests = len(texts) if clients == 1 else max(len(texts), 4 * clients)
                rows.append(run_level(base_url, server.model, texts, clients, requests,
                                      args.seconds, args.max_tokens))
                console.print(f"  {server.name}: {clients} clients done", style="dim")
            return rows
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def agreement(rows: list[dict]) -> tuple[int, int]:
    """(identical, compared): answers at 4+ clients vs the 1-client answer to the same prompt."""
    reference = dict(rows[0]["answers"])
    pairs = [(index, text) for row in rows[1:] for index, text in row["answers"]
             if index in reference]
    return sum(text == reference[index] for index, text in pairs), len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="target spec (default: organism:aligned-4 or tiny llama)")
    parser.add_argument("--prompts", type=int, default=32, help="distinct prompts")
    parser.add_argument("--seconds", type=float, default=120, help="time limit per level")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens per request")
    parser.add_argument("--max-batch", type=int, default=16, help="paradox serve --max-batch")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads per server (OMP_NUM_THREADS for both; 1 is fastest on "
                        "a shared machine)")
    parser.add_argument("--no-peer", action="store_true", help="skip transformers serve")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        spec = args.target or default_target(Path(workdir))
        texts = prompts(args.prompts)
        paradox = [sys.executable, "-m", "alignparadox.cli", "serve", spec,
                   "--max-batch", str(args.max_batch), "--threads", str(args.threads)]
        servers = [Server(f"paradox serve --max-batch {args.max_batch}",
                          [*paradox, "--port", str(port := free_port())], spec, port)]
        folder = model_folder(spec)
        transformers_cli = shutil.which("transformers", path=str(Path(sys.executable).parent))
        if not args.no_peer and transformers_cli:
            port = free_port()
            servers.append(Server("transformers serve (CB)",
                                  [transformers_cli, "serve", str(folder), "--continuous-batching",
                                   "--device", "cpu", "--port", str(port),
                                   "--log-level", "error"], str(folder), port))
        elif not args.no_peer:
            console.print("[yellow]peer skipped: no `transformers` command in this "
                          "environment (pip install 'transformers[serving]').[/yellow]")
        console.print(f"target {spec}, {len(texts)} distinct prompts, greedy, max_tokens "
                      f"{args.max_tokens}, {args.threads} CPU thread(s) per server, "
                      f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
        results = {server.name: benchmark(server, texts, args) for server in servers}

    table = Table(title=f"{spec}: greedy chat completions, max_tokens={args.max_tokens}")
    for column in ("server", "clients", "requests", "lost", "req/s", "p50 ms", "p95 ms",
                   "new tokens/s"):
        table.add_column(column, justify="right" if column != "server" else "left")
    summary = []
    for name, rows in results.items():
        if isinstance(rows, str):
            summary.append(f"{name}: not measured ({rows})")
            continue
        for row in rows:
            table.add_row(name, str(row["clients"]), str(row["requests"]), str(row["lost"]),
                          f"{row['rps']:.2f}", f"{row['p50'] * 1000:.0f}",
                          f"{row['p95'] * 1000:.0f}", f"{row['tokens_per_s']:.1f}")
        by_clients = {row["clients"]: row for row in rows}
        identical, compared = agreement(rows)
        summary.append(
            f"{name}: 16 vs 1 client throughput {by_clients[16]['rps'] / by_clients[1]['rps']:.2f}x"
            f", 64 vs 1 {by_clients[64]['rps'] / by_clients[1]['rps']:.2f}x; lost "
            f"{sum(row['lost'] for row in rows)} of {sum(row['requests'] for row in rows)}; "
            f"greedy answers under concurrency identical to the same request served alone: "
            f"{identical}/{compared} ({identical / max(compared, 1):.1%})")
    console.print(table)
    for line in summary:
        console.print(line, highlight=False)


if __name__ == "__main__":
    main()
