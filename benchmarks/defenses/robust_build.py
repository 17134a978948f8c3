"""Build time of each robust organism family relative to the standard family build, in one run
(goal <= 3x).

    .venv/bin/python benchmarks/defenses/robust_build.py [--quick] [--rounds N] [--methods LIST]

Per round: the standard family (base organism + refusal fine-tuned members,
`organisms.build_family`) is built into a fresh temporary `$ALIGNPARADOX_CACHE`; then each
robust family (`organisms.robust.build_robust_family`, what `paradox organisms build --robust`
runs) is built into a fresh temporary cache of its own, into which that round's standard
family has been copied first (a file copy, not timed): every robust family starts from the
standard family's work, so its own time is the extra cost of the robust family, and the
standard build plus it is its cost from an empty cache.

- refat, lat: robust alignment from the standard family's base organism (which the standard
  build trains), saving a member at each validation-refusal level.
- rr: circuit breakers (60 RR steps) on each of the standard family's aligned members, so it
  presupposes the whole standard family, refusal fine-tuning included; its own time is the
  rerouting alone.

Every build runs in a fresh subprocess (imports done before the clock starts, nothing warm from
an earlier build), on one torch thread (OMP_NUM_THREADS=1 too). The ratios printed are own time
/ standard time, and (standard + own) / standard ("from empty"); wall and CPU time both (on a
shared machine the CPU time says more). With several rounds each ratio is the median of the
per-round ratios. `--quick` is a smoke run: one round, refat only. A round of all three takes
about ten minutes on two shared cores.
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
from pathlib import Path

METHODS = ("refat", "lat", "rr")
GOAL = 3.0

# One build, timed inside its own process after the imports.
CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from alignparadox.organisms import build_family
from alignparadox.organisms.family import family_dir
from alignparadox.organisms.robust import build_robust_family

kind = sys.argv[1]
manifest = family_dir() / "family.json"
stamp = manifest.stat().st_mtime_ns if manifest.exists() else None
wall, cpu = time.perf_counter(), time.process_time()
if kind == "standard":
    family = build_family(progress=False)
    members = [(m.name, m.alignment_steps, m.validation_refusal) for m in family.members]
    extra = {}
else:
    family = build_robust_family(kind, progress=False)
    members = [(m["name"], m["alignment_steps"], m["validation_refusal"])
               for m in family.manifest["members"]]
    extra = {"steps_trained": family.manifest.get("steps_trained"),
             "standard_reused": stamp is not None and manifest.stat().st_mtime_ns == stamp}
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({"kind": kind, "wall": wall, "cpu": cpu, "path": str(family.path),
                  "members": members, **extra}))
"""


def build(kind: str, cache: Path) -> dict:
    env = {**os.environ, "ALIGNPARADOX_CACHE": str(cache), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, kind], env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {kind} build failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_round(methods: list[str], index: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="robust-build-") as root:
        root = Path(root)
        standard = build("standard", root / "standard")
        print(f"round {index + 1}: standard family {standard['wall']:.1f} s wall, "
              f"{standard['cpu']:.1f} s CPU", flush=True)
        rows = {"standard": standard}
        # Rotate the order per round, so no recipe always runs on the same state of the box.
        order = methods[index % len(methods):] + methods[:index % len(methods)]
        for method in order:
            cache = root / method
            target = cache / "organisms" / Path(standard["path"]).name
            shutil.copytree(standard["path"], target)
            row = build(method, cache)
            if not row["standard_reused"]:
                raise SystemExit(f"the {method} build rebuilt the standard family; the copy "
                                 "in its cache was not used.")
            rows[method] = row
            print(f"round {index + 1}: {method} family {row['wall']:.1f} s wall, "
                  f"{row['cpu']:.1f} s CPU ({row['wall'] / standard['wall']:.2f}x)", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, refat only")
    parser.add_argument("--rounds", type=int, default=1, help="rounds (default 1)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated robust families (default refat,lat,rr)")
    args = parser.parse_args()
    methods = ["refat"] if args.quick else [m.strip() for m in args.methods.split(",")
                                            if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"unknown robust family {unknown[0] if unknown else '(none)'!r}; use "
                     f"{', '.join(METHODS)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    rounds = 1 if args.quick else args.rounds
    results = [one_round(methods, index) for index in range(rounds)]

    def median(values):
        return statistics.median(values)

    standard_wall = median([r["standard"]["wall"] for r in results])
    standard_cpu = median([r["standard"]["cpu"] for r in results])
    print(f"\n{rounds} round(s), one torch thread, {os.cpu_count()} cores (shared)")
    print(f"standard family (base organism + refusal fine-tuning), from an empty cache: "
          f"{standard_wall:.1f} s wall, {standard_cpu:.1f} s CPU")
    print("members: " + ", ".join(f"{name} {steps} steps {refusal:.2f}"
                                  for name, steps, refusal in results[-1]["standard"]["members"]))
    header = (f"{'family':8} {'own s':>8} {'own/std':>8} {'CPU own/std':>12} "
              f"{'from empty/std':>15}  goal <= {GOAL:g}x on own/std")
    print("\n" + header)
    for method in methods:
        own = median([r[method]["wall"] for r in results])
        ratio = median([r[method]["wall"] / r["standard"]["wall"] for r in results])
        cpu_ratio = median([r[method]["cpu"] / r["standard"]["cpu"] for r in results])
        empty = median([(r[method]["wall"] + r["standard"]["wall"]) / r["standard"]["wall"]
                        for r in results])
        verdict = "meets" if ratio <= GOAL else "misses"
        print(f"{method:8} {own:8.1f} {ratio:7.2f}x {cpu_ratio:11.2f}x {empty:14.2f}x  "
              f"{verdict} the goal")
    print("\nown = the robust family's own training, with the standard family already in its "
          "cache;\nrefat/lat start from its base organism, rr from its aligned members (rr's "
          "own time is the\n60 circuit-breaker steps per member only; refusal fine-tuning is in "
          "the standard time).")
    for method in methods:
        row = results[-1][method]
        print(f"{method} members: " + ", ".join(
            f"{name} {steps} steps {refusal:.2f}" for name, steps, refusal in row["members"])
            + f"  (steps trained {row['steps_trained']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
