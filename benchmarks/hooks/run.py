"""Cost of residual-stream hooks on CPU, side by side with nnsight, TransformerLens,
steering-vectors and repeng.

    python benchmarks/hooks/run.py [--quick]

On the strongest aligned organism (organism:aligned-5) and on a ~100M-parameter random-weight
Llama, in one run, it times

- capture: a plain forward pass against one that records the residual stream at every layer
  (the L + 1 tensors of `output_hidden_states`, all positions) with `alignparadox.hooks.capture`,
  an nnsight trace, and TransformerLens `run_with_cache`;
- generation: greedy generation of exactly N new tokens with the KV cache on, unsteered against
  steered (one vector added at every token at the output of the middle block) with
  `alignparadox.hooks.add_vectors`, steering-vectors and repeng,

and prints ratios. Each tool runs in its own subprocess, in its own virtual environment under
benchmarks/.venvs/ (created on first use: nnsight and TransformerLens on top of this environment's
torch and transformers; steering-vectors and repeng, which need other transformers versions, in
plain venvs with this environment's CPU torch installed first). Every process uses one thread and
gets the same token ids, batch, lengths, repeats and warm-up; each times its tool against the
plain model in alternating rounds (A B A B ...), and a ratio is the median of the per-round
ratios, so that the load of a shared machine cancels out as far as it can.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from transformers import AutoConfig

HERE = Path(__file__).resolve().parent
VENVS = HERE.parent / ".venvs"
CAPTURE_TARGET = 1.05  # at most this many times a plain forward pass
STEERING_TARGET = 0.95  # at least this share of unsteered tokens/s
# Wide enough for the tables when the output is a file or a pipe (rich assumes 80 columns).
console = Console(width=None if sys.stdout.isatty() else 140)


@dataclass(frozen=True)
class Workload:
    capture_batch: int
    capture_tokens: int
    prompt_batch: int
    prompt_tokens: int
    new_tokens: int
    repeats: int
    warmup: int


FULL = Workload(capture_batch=4, capture_tokens=64, prompt_batch=2, prompt_tokens=16,
                new_tokens=32, repeats=11, warmup=2)
QUICK = Workload(capture_batch=2, capture_tokens=32, prompt_batch=1, prompt_tokens=16,
                 new_tokens=16, repeats=5, warmup=1)


@dataclass(frozen=True)
class Venv:
    """A peer's environment: its packages, on top of ours (`shared`) or on a fresh CPU torch."""

    name: str
    packages: tuple[str, ...]
    shared: bool


@dataclass(frozen=True)
class Tool:
    name: str
    driver: str
    task: str  # "capture" | "generate"
    venv: Venv | None  # None: this environment


TOOLS = (
    Tool("alignparadox", "driver_ours.py", "capture", None),
    Tool("nnsight", "driver_nnsight.py", "capture", Venv("nnsight", ("nnsight==0.8.1",), True)),
    Tool("TransformerLens", "driver_transformer_lens.py", "capture",
         Venv("transformer-lens", ("transformer_lens==4.3.0",), True)),
    Tool("alignparadox", "driver_ours.py", "generate", None),
    Tool("steering-vectors", "driver_steering_vectors.py", "generate",
         Venv("steering-vectors", ("steering-vectors==0.12.2",), False)),
    Tool("repeng", "driver_repeng.py", "generate", Venv("repeng", ("repeng==0.4.0",), False)),
)


# ---------------------------------------------------------------------------------------------
# Environments.


class Unavailable(Exception):
    """A tool or model that cannot be set up here; its message goes into the table."""


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and "is ignored: it is neither a file nor a directory" not in line]
    return lines[-1][:300] if lines else "no output"


def _pip_install(python: Path, packages: Sequence[str], constraints: Path) -> None:
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-c", str(constraints),
                           *packages], capture_output=True, text=True)
    if done.returncode != 0:
        raise Unavailable(f"pip install {' '.join(packages)} failed: {_tail(done.stderr)}")


def ensure_venv(venv: Venv) -> Path:
    """The venv's python, creating the venv if it is missing or was made with another recipe."""
    folder = VENVS / venv.name
    python = folder / "bin" / "python"
    # Pin torch (and, in shared venvs, transformers) to this environment's builds, so that pip
    # can never swap in a CUDA torch or move a peer onto other library versions unnoticed.
    pins = [f"torch=={torch.__version__}"]
    if venv.shared:
        pins.append(f"transformers=={transformers.__version__}")
    recipe = json.dumps({"packages": venv.packages, "shared": venv.shared, "pins": pins,
                         "python": sys.version.split()[0]})
    marker = folder / "benchmark-recipe.json"
    if marker.exists() and marker.read_text() == recipe:
        return python
    shutil.rmtree(folder, ignore_errors=True)
    done = subprocess.run([sys.executable, "-m", "venv",
                           *(["--system-site-packages"] * venv.shared), str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise Unavailable(f"python -m venv failed: {_tail(done.stderr)}")
    constraints = folder / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    if not venv.shared:
        # The local CPU wheel first, before any peer can pull torch in.
        _pip_install(python, ["torch"], constraints)
    _pip_install(python, venv.packages, constraints)
    marker.write_text(recipe)
    return python


# ---------------------------------------------------------------------------------------------
# Models and the work given to every driver.


def benchmark_models(workdir: Path) -> dict[str, Path | Unavailable]:
    models: dict[str, Path | Unavailable] = {}
    try:
        from alignparadox.organisms import load_family

        models["organism:aligned-5"] = load_family().path_of("aligned-5")
    except Exception as error:  # not built here, or organisms not importable
        models["organism:aligned-5"] = Unavailable(f"organism unavailable: {error}")
    from alignparadox.targets.random_models import make_random_model

    models["random llama-100m"] = make_random_model("llama", workdir / "llama-100m", size="100m")
    return models


def write_spec(model: Path, task: str, work: Workload, folder: Path) -> Path:
    """The same token ids, lengths, repeats and steering vector for every tool on `model`."""
    config = AutoConfig.from_pretrained(model)
    generator = torch.Generator().manual_seed(0)
    low = min(8, config.vocab_size // 2)  # keep clear of the special tokens at the start

    def token_ids(batch: int, length: int) -> list[list[int]]:
        return torch.randint(low, config.vocab_size, (batch, length), generator=generator).tolist()

    direction = torch.randn(config.hidden_size, generator=generator)
    spec = {
        "model": str(model), "task": task, "repeats": work.repeats, "warmup": work.warmup,
        "capture_ids": token_ids(work.capture_batch, work.capture_tokens),
        "prompt_ids": token_ids(work.prompt_batch, work.prompt_tokens),
        "new_tokens": work.new_tokens,
        "steer_block": config.num_hidden_layers // 2,
        # Its size does not change the cost: exactly `new_tokens` tokens are generated.
        "steer_vector": (4.0 * direction / direction.norm()).tolist(),
    }
    path = folder / f"{model.name}-{task}.json"
    path.write_text(json.dumps(spec))
    return path


def run_driver(python: Path, tool: Tool, spec: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    try:
        done = subprocess.run([str(python), str(HERE / tool.driver), str(spec)], env=env,
                              capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        raise Unavailable("timed out after 30 min") from None
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
    if result is None:
        raise Unavailable(f"driver failed: {_tail(done.stderr)}")
    if "error" in result:
        raise Unavailable(result["error"])
    return result


# ---------------------------------------------------------------------------------------------
# Ratios and tables.


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of numerator/denominator, both timed in the same round."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def _x(value: float) -> str:
    return f"{value:.3f}x"


def capture_table(results: dict, work: Workload) -> Table:
    table = Table(title=f"Capture the residual stream at every layer, all positions (batch "
                        f"{work.capture_batch} x {work.capture_tokens} tokens): time / plain "
                        "HF forward")
    for column in ("model", "plain forward ms", "alignparadox capture", "nnsight trace",
                   "TransformerLens run_with_cache", "TL bridge forward, no cache"):
        table.add_column(column, justify="left" if column == "model" else "right", overflow="fold")
    for model, by_tool in results.items():
        ours = by_tool["alignparadox"]
        plain_ms = ("" if isinstance(ours, Unavailable)
                    else f"{1000 * statistics.median(ours['seconds']['plain']):.1f}")
        cells: list[str] = []
        for tool, runs in (("alignparadox", ["ours"]), ("nnsight", ["nnsight"]),
                           ("TransformerLens", ["run_with_cache", "bridge forward"])):
            result = by_tool[tool]
            if isinstance(result, Unavailable):
                cells += ["cannot run (below)"] + [""] * (len(runs) - 1)
                continue
            seconds = result["seconds"]
            cells += [_x(paired_ratio(seconds[run], seconds["plain"])) for run in runs]
        table.add_row(model, plain_ms, *cells)
    return table


def generation_table(results: dict, work: Workload) -> Table:
    table = Table(title=f"Greedy generation with KV cache, batch {work.prompt_batch}, "
                        f"{work.prompt_tokens}-token prompt, {work.new_tokens} new tokens: "
                        "one vector added at every token after the middle block")
    for column in ("model", "tool", "transformers", "unsteered tok/s", "steered tok/s",
                   "steered / unsteered", "steered / ours steered"):
        table.add_column(column, justify="left" if column in ("model", "tool") else "right",
                         overflow="fold")
    tokens = work.prompt_batch * work.new_tokens
    for model, by_tool in results.items():
        ours = by_tool["alignparadox"]
        ours_rate = (None if isinstance(ours, Unavailable)
                     else tokens / statistics.median(ours["seconds"]["ours"]))
        for tool in ("alignparadox", "steering-vectors", "repeng"):
            result = by_tool[tool]
            if isinstance(result, Unavailable):
                table.add_row(model, tool, "", "", "", "cannot run (below)", "")
                continue
            seconds = result["seconds"]
            runs = ["ours", "ours (generated tokens only)"] if tool == "alignparadox" else [tool]
            for run in runs:
                rate = tokens / statistics.median(seconds[run])
                versus = _x(rate / ours_rate) if ours_rate else ""
                label = tool if run in ("ours", tool) else f"{tool} (generated only)"
                table.add_row(model, label, result["transformers"],
                              f"{tokens / statistics.median(seconds['unsteered']):.1f}",
                              f"{rate:.1f}", _x(paired_ratio(seconds["unsteered"], seconds[run])),
                              versus)
    return table


def versions(results: dict) -> str:
    """Library versions and thread count each driver reported, once per tool."""
    seen: dict[str, str] = {}
    for by_model in results.values():
        for by_tool in by_model.values():
            for tool, result in by_tool.items():
                if isinstance(result, dict) and tool not in seen:
                    libraries = ", ".join(f"{name} {value}" for name, value in result.items()
                                          if name not in ("seconds", "threads", "omp_threads"))
                    seen[tool] = f"{tool}: {libraries}, {result['threads']} thread"
    return "Versions — " + "; ".join(seen.values())


def verdicts(capture: dict, generation: dict) -> list[str]:
    lines = []
    for model, by_tool in capture.items():
        ours = by_tool["alignparadox"]
        if not isinstance(ours, Unavailable):
            ratio = paired_ratio(ours["seconds"]["ours"], ours["seconds"]["plain"])
            verdict = "meets" if ratio <= CAPTURE_TARGET else "MISSES"
            lines.append(f"{model}: capture costs {_x(ratio)} a plain forward pass — {verdict} "
                         f"the <= {CAPTURE_TARGET}x target")
    for model, by_tool in generation.items():
        ours = by_tool["alignparadox"]
        if not isinstance(ours, Unavailable):
            ratio = paired_ratio(ours["seconds"]["unsteered"], ours["seconds"]["ours"])
            verdict = "meets" if ratio >= STEERING_TARGET else "MISSES"
            lines.append(f"{model}: steered generation runs at {_x(ratio)} the unsteered tokens/s "
                         f"— {verdict} the >= {STEERING_TARGET}x target")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller batches and fewer repeats (a smoke run, noisier ratios)")
    args = parser.parse_args()
    work = QUICK if args.quick else FULL
    torch.set_num_threads(1)

    results: dict[str, dict[str, dict[str, dict | Unavailable]]] = {"capture": {}, "generate": {}}
    with tempfile.TemporaryDirectory() as workdir, Progress(console=console,
                                                            transient=True) as progress:
        folder = Path(workdir)
        venvs = {tool.venv for tool in TOOLS if tool.venv is not None}
        step = progress.add_task("virtual environments", total=len(venvs))
        pythons: dict[Venv, Path | Unavailable] = {}
        for venv in sorted(venvs, key=lambda v: v.name):
            progress.update(step, description=f"virtual environment {venv.name}")
            try:
                pythons[venv] = ensure_venv(venv)
            except Unavailable as error:
                pythons[venv] = error
            progress.advance(step)

        building = progress.add_task("random llama-100m checkpoint", total=None)
        models = benchmark_models(folder)
        progress.remove_task(building)
        step = progress.add_task("drivers", total=len(models) * len(TOOLS))
        for label, model in models.items():
            for tool in TOOLS:
                progress.update(step, description=f"{tool.name} {tool.task} on {label}")
                python = Path(sys.executable) if tool.venv is None else pythons[tool.venv]
                outcome: dict | Unavailable
                if isinstance(model, Unavailable):
                    outcome = model
                elif isinstance(python, Unavailable):
                    outcome = python
                else:
                    try:
                        outcome = run_driver(python, tool, write_spec(model, tool.task, work,
                                                                      folder))
                    except Unavailable as error:
                        outcome = error
                results[tool.task].setdefault(label, {})[tool.name] = outcome
                progress.advance(step)

    console.print(f"CPU, 1 thread in every process (torch.set_num_threads(1), OMP_NUM_THREADS=1); "
                  f"{work.repeats} interleaved rounds (A B, B A, ...) after {work.warmup} warm-up "
                  "calls, each sample >= 0.25 s of repeated calls; a ratio is the median of the "
                  "per-round ratios against the plain model timed in the same process. 'steered / "
                  "ours steered' compares separate processes (and, for steering-vectors, another "
                  "transformers version), so it is only indicative.")
    console.print(versions(results))
    console.print(capture_table(results["capture"], work))
    console.print(generation_table(results["generate"], work))
    failures: dict[tuple[str, str], list[str]] = {}
    for task, by_model in results.items():
        for model, by_tool in by_model.items():
            for tool, result in by_tool.items():
                if isinstance(result, Unavailable):
                    failures.setdefault((model, str(result)), []).append(f"{tool} {task}")
    for (model, reason), runs in failures.items():
        console.print(f"cannot run {', '.join(runs)} on {model}: {reason}")
    for line in verdicts(results["capture"], results["generate"]):
        console.print(line)


if __name__ == "__main__":
    main()
