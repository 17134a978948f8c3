"""How long does the organism family take to build from an empty cache?

    python benchmarks/organisms/run.py [--seed 0]

Trains base + aligned family into a temporary cache (the user's cache is untouched), prints the
wall time per phase-independent total against the 5-minute goal on two CPU cores, and the
family's members. There is no peer tool that trains such a family, so the number is reported as
it is, with the thread count it used.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from alignparadox.organisms import OrganismConfig, build_family

    with tempfile.TemporaryDirectory() as cache:
        os.environ["ALIGNPARADOX_CACHE"] = cache
        started = time.perf_counter()
        family = build_family(OrganismConfig(seed=args.seed), progress=True)
        seconds = time.perf_counter() - started
    print(f"\ntraining threads: {OrganismConfig().train_threads} (fixed, for identical weights "
          f"everywhere)  cores: {os.cpu_count()}")
    print(f"family built from an empty cache in {seconds:.1f} s "
          f"({seconds / 300:.2f}x the 5-minute goal)")
    for member in family.members:
        print(f"  {member.name:10s} alignment steps {member.alignment_steps:4d}  "
              f"validation refusal {member.validation_refusal:.2f}")


if __name__ == "__main__":
    main()
