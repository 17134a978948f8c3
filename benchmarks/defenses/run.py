"""Scoring cost of Best-of-N with latent attribution: the defense at N = 8 vs plain sampling of
the same 8 candidates, as a ratio of wall times (goal <= 1.15x).

    .venv/bin/python benchmarks/defenses/run.py [--quick]

Plain: `sample_candidates` (N sampled answers per prompt, one batched generation). Defended:
`BestOfNDefense.defend_ids` with the latent scorer at the middle layer: the same generation
(the target's state at the final token is read during decoding, one decoding step more), plus
one batched forward of the reference over prompt + answer, stopped after the layer read, and
the pick. Both draw the same candidates (same seed). Runs on one CPU thread, in alternating
rounds (plain, defended, defended, plain, ...); a ratio is the median over rounds.

Pairs: organism:aligned-3 with reference organism:base (real answers, 48 new tokens at most),
and a ~100M-parameter random-weight Llama with a second random Llama of the same shape as the
reference (answers always run to 64 new tokens; `--quick` skips it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from alignparadox.defenses.best_of_n.core import BestOfNConfig, BestOfNDefense, sample_candidates
from alignparadox.targets import load_target, open_target
from alignparadox.targets.random_models import make_random_model


def measure(target, reference, prompts: list[list[int]], config: BestOfNConfig,
            rounds: int) -> dict:
    defense = BestOfNDefense(target, reference, config, "latent")
    sample_candidates(target, prompts[:1], config)  # warm-up
    defense.defend_ids(prompts[:1])
    plain, defended = [], []
    for index in range(rounds):
        order = ("plain", "defended") if index % 2 == 0 else ("defended", "plain")
        for which in order:
            started = time.perf_counter()
            if which == "plain":
                sample_candidates(target, prompts, config)
                plain.append(time.perf_counter() - started)
            else:
                defense.defend_ids(prompts)
                defended.append(time.perf_counter() - started)
    ratios = [d / p for d, p in zip(defended, plain, strict=True)]
    return {"plain_s": statistics.median(plain), "defended_s": statistics.median(defended),
            "ratio": statistics.median(ratios), "layer": defense.layer}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="organisms only, fewer rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    from alignparadox.datasets.behaviours import behaviour_set

    target, reference = open_target("organism:aligned-3"), open_target("organism:base")
    requests = behaviour_set(behaviours="organisms", seed=0).requests("harmful", "test", 8, 0)
    prompts = [target.token_ids(r.text) for r in requests]
    config = BestOfNConfig(n=8, max_new_tokens=48, batch_size=32)
    rows.append(("organism:aligned-3 vs organism:base", len(prompts),
                 measure(target, reference, prompts, config, 3 if args.quick else 7)))
    if not args.quick:
        with tempfile.TemporaryDirectory() as folder:
            target = load_target(make_random_model("llama", Path(folder) / "a", size="100m",
                                                   seed=0))
            reference = load_target(make_random_model("llama", Path(folder) / "b",
                                                      size="100m", seed=1))
            prompts = [target.token_ids(text) for text in
                       ("Write a short note about the weather.", "List three prime numbers.")]
            config = BestOfNConfig(n=8, max_new_tokens=64, batch_size=16)
            rows.append(("random Llama ~100M vs random Llama ~100M", len(prompts),
                         measure(target, reference, prompts, config, 3)))
    print(f"{'pair':45s} {'prompts':>7s} {'layer':>5s} {'plain s':>8s} {'defended s':>10s} "
          f"{'ratio':>6s}")
    for name, count, row in rows:
        print(f"{name:45s} {count:7d} {row['layer']:5d} {row['plain_s']:8.3f} "
              f"{row['defended_s']:10.3f} {row['ratio']:5.2f}x")
    print("goal: <= 1.15x (latent-similarity BoN at N=8 vs plain sampling of the same 8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
