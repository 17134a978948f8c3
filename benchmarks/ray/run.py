"""Wall time of a multi-target organism study on the `local` back end and on Ray with 2 workers.

    nice -n 10 python benchmarks/ray/run.py [--rounds 3] [--n-per-kind 200] [--max-new-tokens 80]
                                            [--with-default-threads]

The study is the `alignment` measurement, at its default size, on the organism family (base,
aligned-1..5): six cells, one per target. Each round runs it into a fresh run folder (nothing
reused) with `local` at one torch thread and with Ray (2 workers, one CPU and one torch thread
per cell), and with `--with-default-threads` also `local` at torch's default threads (what
`paradox study run` uses), in an order that rotates per round; a speedup is a local time / the
Ray time of the same round, then the median over rounds. Ray is started once and its start-up is
shown apart; round 1 includes each worker's first import of torch and transformers. On a machine
whose 2 cores are shared with other work the numbers move with that load; torch's thread per
core is hit hardest by it (minutes instead of seconds), hence behind a flag.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # as `paradox` does: no tqdm noise

import argparse
import logging
import statistics
import sys
import tempfile
import time

import torch

import ray
from alignparadox.study import ResultsStore, StudySpec, run_study
from alignparadox.study.ray_backend import RayBackend

TARGETS = ["organism:base"] + [f"organism:aligned-{i}" for i in range(1, 6)]


def timed_run(spec: StudySpec, backend: str | RayBackend) -> tuple[float, dict[str, dict]]:
    """Seconds to run the study into a fresh folder, and its results by cell key."""
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as folder:
        clock = time.perf_counter()
        summary = run_study(spec, folder, backend=backend, progress=False)
        seconds = time.perf_counter() - clock
        if summary.failed:
            sys.exit(f"{len(summary.failed)} cells failed: {summary.failed[0].error}")
        with ResultsStore.in_run_dir(folder, create=False) as store:
            results = {record.key: record.results for record in store.records()}
    return seconds, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n-per-kind", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--with-default-threads", action="store_true")
    args = parser.parse_args()
    spec = StudySpec.from_dict({
        "name": "ray-bench", "seed": 0, "targets": TARGETS,
        "measurements": [{"name": "alignment", "settings": {
            "n_per_kind": args.n_per_kind, "max_new_tokens": args.max_new_tokens}}]})
    default_threads = torch.get_num_threads()
    print(f"study: alignment on {len(TARGETS)} organisms, n_per_kind={args.n_per_kind}, "
          f"max_new_tokens={args.max_new_tokens}")

    clock = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    startup = time.perf_counter() - clock
    print(f"ray start-up: {startup:.1f} s (once per `paradox study run`)")
    variants = {"local (1 thread)": ("local", 1),
                "ray (2 workers)": (RayBackend(cpus_per_cell=1), default_threads)}
    if args.with_default_threads:
        variants[f"local ({default_threads} threads)"] = ("local", default_threads)
    names = list(variants)
    ray_name = names[1]
    ratios: dict[str, list[float]] = {name: [] for name in names if name != ray_name}
    same = True
    try:
        for round_ in range(args.rounds):
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            seconds, results = {}, {}
            for name in order:
                backend, threads = variants[name]
                torch.set_num_threads(threads)  # the driver's; Ray workers set their own
                seconds[name], results[name] = timed_run(spec, backend)
            torch.set_num_threads(default_threads)
            same &= all(found == results[ray_name] for found in results.values())
            for name in ratios:
                ratios[name].append(seconds[name] / seconds[ray_name])
            print(f"round {round_ + 1}: " + ", ".join(
                f"{name} {seconds[name]:.1f} s" for name in order))
    finally:
        ray.shutdown()
    for name, found in ratios.items():
        median = statistics.median(found)
        print(f"speedup of ray (2 workers) over {name}: median {median:.2f}x over "
              f"{len(found)} rounds ({', '.join(f'{r:.2f}x' for r in found)})")
    print(f"identical results from every back end: {'yes' if same else 'no'}")


if __name__ == "__main__":
    main()
