"""What every driver shares: the spec it is given, one thread, interleaved timing, JSON out.

Imported by the driver scripts in each peer's virtual environment, so it needs nothing but the
standard library and torch.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch


def load_spec() -> dict:
    """The work to time, written by run.py: model folder, inputs, repeats, steering vector."""
    # One thread on every side: the machine is shared, and equal threading keeps ratios fair.
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    return json.loads(Path(sys.argv[1]).read_text())


def inputs(spec: dict, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of the same token ids for every tool: no tokenizer involved."""
    ids = torch.tensor(spec[key], dtype=torch.long)
    return ids, torch.ones_like(ids)


def interleaved(
    runs: dict[str, Callable[[], object]], repeats: int, warmup: int, min_sample: float = 0.25
) -> dict[str, list[float]]:
    """Seconds per call of each run, in rounds A B C, C B A, A B C, ... so that drift and
    order effects hit all runs alike.

    A sample repeats a call until it lasts about `min_sample` seconds (calibrated on one call
    of the first run, after warm-up), so that millisecond calls on tiny models are not at the
    mercy of one scheduler tick; every sample of every run makes the same number of calls.
    """
    for _ in range(warmup):
        for run in runs.values():
            run()
    baseline = next(iter(runs.values()))
    start = time.perf_counter()
    baseline()
    calls = max(1, math.ceil(min_sample / (time.perf_counter() - start)))
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(repeats):
        order = list(runs.items())
        for name, run in order[::-1] if round_ % 2 else order:
            start = time.perf_counter()
            for _ in range(calls):
                run()
            seconds[name].append((time.perf_counter() - start) / calls)
    return seconds


def emit(result: dict) -> None:
    """Print the result as the last stdout line; run.py reads only that line."""
    result = {"threads": torch.get_num_threads(), "torch": torch.__version__,
              "omp_threads": os.environ.get("OMP_NUM_THREADS"), **result}
    print(json.dumps(result), flush=True)


def main(body: Callable[[dict], dict]) -> None:
    """Run `body(spec)` and emit its result, or emit the error that stopped it."""
    spec = load_spec()
    try:
        result = body(spec)
    except Exception as error:  # reported in the table instead of stopping the benchmark
        traceback.print_exc()
        result = {"error": f"{type(error).__name__}: {error}".splitlines()[0][:300]}
    emit(result)
