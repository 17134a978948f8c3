"""How long does the organism family take to build from an empty cache?

    python benchmarks/organisms/run.py [--seed 0] [--threads N]

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
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from alignparadox.organisms import OrganismConfig, build_family

    with tempfile.TemporaryDirectory() as cache:
        os.environ["ALIGNPARADOX_CACHE"] = cache
        started = time.perf_counter()
        family = build_family(OrganismConfig(seed=args.seed), progress=True)
        seconds = time.perf_counter() - started
    print(f"\nthreads: {torch.get_num_threads()}  cores: {os.cpu_count()}")
    print(f"family built from an empty cache in {seconds:.1f} s "
          f"({seconds / 300:.2f}x the 5-minute goal)")
    for member in family.members:
        print(f"  {member.name:10s} alignment steps {member.alignment_steps:4d}  "
              f"validation refusal {member.validation_refusal:.2f}")


if __name__ == "__main__":
    main()
