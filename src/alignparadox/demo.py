"""`paradox demo`: the whole paradox study on the organism family, ending in an HTML report.

Builds (or reuses) the organisms, runs every registered measurement that has demo settings on
every organism (the defense on the most aligned one), and writes the report. Each cell is
stored when done, so an interrupted demo resumes where it stopped. `--robust` adds every aligned
member of the robust-trained families (ReFAT, LAT, circuit breakers) as targets, for the
report's "Robust training vs standard alignment" section; `--budget quick` runs smaller
settings."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

# Demo-sized settings per measurement: enough requests for intervals that mean something,
# small enough for two CPU cores. A measurement that is not installed is skipped. Organisms are
# so small that a decoding step costs about the same for 32 rows as for 128, so generating
# measurements take whole prompt sets in one batch (4-5x faster; greedy answers are the same).
# Listed longest cell first: with several workers the long cells start at once and the short
# ones fill in around them (the report orders its sections itself).
WIDE = {"batch_size": 128}
DEMO_SETTINGS: dict[str, dict] = {
    # The defense: the most aligned member against the base organism it was aligned from, as
    # the paper defends an aligned model with its pre-alignment model as reference. It is the
    # demo's costliest cell (about 50 s on 2 cores): on all five aligned members it was two
    # fifths of the cell time, on two the demo still took over 5 minutes.
    # studies/paradox-axes.toml defends every aligned member.
    "bon_defense": {"reference": "organism:base", "n_requests": 16, "n_harmless": 16,
                    "gcg_requests": 4, "gcg_steps": 20, "n_adaptive": 8, "max_new_tokens": 48,
                    **WIDE},
    "output_tinkering": {"sizes": [16, 64], "n_eval": 12, "steps": 80, **WIDE},
    "model_tinkering": {"n_per_kind": 32, **WIDE},
    "alignment": {"n_per_kind": 200, **WIDE},
    # The standard organisms never learnt tasks over data (organism:inject/... did; see
    # studies/injection.toml): here the attack shows what an injection does to them.
    "injection": {"n_tasks": 8, "disguises": ["plain", "ignore"],
                  "defenses": ["none", "delimiters", "spotlighting"], "max_new_tokens": 48,
                  **WIDE},
    "gcg": {"n_requests": 3, "num_steps": 10, "search_width": 64},
    "geometry": WIDE,
    "best_of_n": {"n_requests": 8, "n": 32, **WIDE},
    "templates": {"n_requests": 8, "n_templates": 6, **WIDE},
    "judge_agreement": {},
    "pair": {"n_requests": 6, "streams": 2, "rounds": 2},
}
# Measurements that need a public prompt set on disk (not bundled: see the README).
NEEDS_PUBLIC_DATA = {"templates"}
# `--robust`: the standard family beside each robust-trained family (organisms.robust), every
# attack of the demo on each member; the report's "Robust training vs standard alignment"
# section compares them. `--budget quick` is for that study's 21 targets on two cores (about
# 90 s per target instead of about 12 minutes): fewer requests, one steering alpha, GCG and
# Best-of-N at smaller budgets, the demo's editor on the world's own pairs only, no templates;
# its intervals are wider accordingly.
ROBUST_MEASUREMENTS = ("alignment", "geometry", "model_tinkering", "gcg", "best_of_n",
                       "output_tinkering", "pair", "templates")
SMALL_FIT = {"n_fit": 24, "n_select": 12}
QUICK_SETTINGS: dict[str, dict] = {
    "alignment": {"n_per_kind": 32, **WIDE},
    "geometry": {"n_per_kind": 24, **SMALL_FIT, **WIDE},
    "model_tinkering": {"n_per_kind": 12, "alphas": [1.0], **SMALL_FIT, **WIDE},
    "best_of_n": {"n_requests": 8, "n": 16, **WIDE},
    "pair": DEMO_SETTINGS["pair"],
    "gcg": {"n_requests": 2, "num_steps": 4, "search_width": 32},
    # the demo's editors (16 and 64 pairs, 80 steps: smaller ones flip nothing), on the
    # world's own pairs only: trained once, shared by every target
    "output_tinkering": {**DEMO_SETTINGS["output_tinkering"], "sources": ["ground_truth"]},
}
BUDGETS = {"demo": DEMO_SETTINGS, "quick": QUICK_SETTINGS}


def demo_spec(seed: int = 0, *, robust: bool = False, budget: str = "demo"):
    """The demo study: every organism of the standard family (and, with `robust`, every
    aligned member of each robust family; their base is the standard base) × every installed
    measurement with settings at `budget`."""
    from alignparadox.errors import UserError
    from alignparadox.organisms import build_family
    from alignparadox.study.measurement import find_measurement
    from alignparadox.study.spec import MeasurementPlan, StudySpec

    if budget not in BUDGETS:
        raise UserError(f"unknown budget {budget!r}; known: {', '.join(BUDGETS)}.")
    settings = BUDGETS[budget]
    family = build_family()
    targets = [f"organism:{member.name}" for member in family.members]
    chosen = ROBUST_MEASUREMENTS if robust else tuple(DEMO_SETTINGS)
    if robust:
        from alignparadox.organisms.robust import METHODS, build_robust_family

        for method in METHODS:  # trained once (minutes each), then cached
            members = build_robust_family(method).manifest["members"]
            targets += [f"organism:{method}/{m['name']}" for m in members if m["name"] != "base"]
    names = [name for name in chosen if find_measurement(name) is not None
             and (name in settings or budget == "demo")]
    if not _public_data_available():
        Console(stderr=True).print(
            f"note: skipping {', '.join(sorted(NEEDS_PUBLIC_DATA))}: no public prompt-set folder "
            "(set ALIGNPARADOX_DATASETS to one holding jailbreak_llms/).")
        names = [name for name in names if name not in NEEDS_PUBLIC_DATA]
    most_aligned = max(family.members, key=lambda member: member.alignment_steps)
    defended = (f"organism:{most_aligned.name}",)  # (ROBUST_MEASUREMENTS leave the defense out)
    plans = tuple(MeasurementPlan(name, settings.get(name, DEMO_SETTINGS.get(name, {})),
                                  targets=defended if name == "bon_defense" else None)
                  for name in names)
    name = "paradox-robust" if robust else "paradox-demo"
    return StudySpec(targets=tuple(targets), measurements=plans, seed=seed,
                     name=name if budget == "demo" else f"{name}-{budget}")


def demo_backend(workers: int | None, console: Console):
    """The local back end for one worker, else a local Ray cluster of `workers` CPUs, a cell
    per CPU (organisms are too small for two threads to beat two cells). On a GPU (or MPS) the
    default is one worker: cells would queue for the one device anyway."""
    import importlib.util
    import os

    from alignparadox.targets import pick_device

    if workers is None:
        cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                else os.cpu_count() or 1)
        workers = cpus if pick_device().type == "cpu" else 1
    if workers <= 1:
        return "local"
    if importlib.util.find_spec("ray") is None:
        console.print(f"note: computing cells one at a time: {workers} workers need Ray "
                      "(pip install 'alignparadox[ray]').")
        return "local"
    from alignparadox.study.ray_backend import RayBackend

    return RayBackend(num_cpus=workers, cpus_per_cell=1)


def _public_data_available() -> bool:
    from alignparadox.datasets.registry import datasets_root
    from alignparadox.errors import UserError

    try:
        return (datasets_root() / "jailbreak_llms").is_dir()
    except UserError:
        return False


def demo(
    run_dir: Path = typer.Option(None, help="Where results and the report go "
                                            "[default: runs/demo, runs/robust with --robust]."),
    seed: int = typer.Option(0, help="Seed of prompt sampling and attacks."),
    show_completions: bool = typer.Option(False, help="Show harmful completions unredacted."),
    robust: bool = typer.Option(False, "--robust",
                                help="Put each robust-trained family (refat, lat, rr) beside the "
                                     "standard family, and compare them in the report."),
    budget: str = typer.Option("demo", help=f"Settings per measurement: {', '.join(BUDGETS)} "
                                            "(quick: about 4x fewer requests and steps)."),
    workers: int = typer.Option(None, min=1,
                                help="Cells computed at once, one CPU thread each, as Ray tasks "
                                     "[default: the CPUs this process may use; 1 on a GPU or "
                                     "without Ray]."),
) -> None:
    """Run the paradox study on the organism family and write the HTML report."""
    from alignparadox.errors import UserError
    from alignparadox.report import write_report
    from alignparadox.study.runner import prepare_run_dir, run_study

    if budget not in BUDGETS:
        raise UserError(f"unknown budget {budget!r}; known: {', '.join(BUDGETS)}.")
    if run_dir is None:
        run_dir = Path("runs") / ("robust" if robust else "demo")
        run_dir = run_dir if budget == "demo" else run_dir.with_name(f"{run_dir.name}-{budget}")
    console = Console(stderr=True)
    prepare_run_dir(run_dir)  # an unwritable folder fails before minutes of training
    console.print("[bold]1/3[/bold] organism families (trained once, then cached)")
    spec = demo_spec(seed, robust=robust, budget=budget)
    console.print(f"[bold]2/3[/bold] study: {len(spec.targets)} organisms × "
                  f"{', '.join(p.name for p in spec.measurements)}")
    summary = run_study(spec, run_dir, backend=demo_backend(workers, console))
    console.print("[bold]3/3[/bold] report")
    report = write_report(run_dir, show_completions=show_completions)
    if summary.failed:
        console.print(f"[red]{len(summary.failed)} cell(s) failed; see the report.[/red]")
    console.print(f"report: {report.resolve()}")
