"""`paradox demo`: the whole paradox study on the organism family, ending in an HTML report.

Builds (or reuses) the organisms, runs every registered measurement that has demo settings on
every organism, and writes the report. Each cell is stored when done, so an interrupted demo
resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

# Demo-sized settings per measurement: enough requests for intervals that mean something,
# small enough for two CPU cores. A measurement that is not installed is skipped. Organisms are
# so small that a decoding step costs about the same for 32 rows as for 128, so generating
# measurements take whole prompt sets in one batch (4-5x faster; greedy answers are the same).
WIDE = {"batch_size": 128}
DEMO_SETTINGS: dict[str, dict] = {
    "alignment": {"n_per_kind": 200, **WIDE},
    "judge_agreement": {},
    "geometry": WIDE,
    "model_tinkering": {"n_per_kind": 32, **WIDE},
    "templates": {"n_requests": 8, "n_templates": 6, **WIDE},
    "best_of_n": {"n_requests": 8, "n": 32, **WIDE},
    "pair": {"n_requests": 6, "streams": 2, "rounds": 2},
    "gcg": {"n_requests": 3, "num_steps": 10, "search_width": 64},
    "output_tinkering": {"sizes": [16, 64], "n_eval": 12, "steps": 80, **WIDE},
}
# Measurements that need a public prompt set on disk (not bundled: see the README).
NEEDS_PUBLIC_DATA = {"templates"}


def demo_spec(seed: int = 0):
    from alignparadox.organisms import build_family
    from alignparadox.study.measurement import find_measurement
    from alignparadox.study.spec import MeasurementPlan, StudySpec

    family = build_family()
    targets = tuple(f"organism:{member.name}" for member in family.members)
    names = [name for name in DEMO_SETTINGS if find_measurement(name) is not None]
    if not _public_data_available():
        Console(stderr=True).print(
            f"note: skipping {', '.join(sorted(NEEDS_PUBLIC_DATA))}: no public prompt-set folder "
            "(set ALIGNPARADOX_DATASETS to one holding jailbreak_llms/).")
        names = [name for name in names if name not in NEEDS_PUBLIC_DATA]
    plans = tuple(MeasurementPlan(name, DEMO_SETTINGS[name]) for name in names)
    return StudySpec(targets=targets, measurements=plans, seed=seed, name="paradox-demo")


def _public_data_available() -> bool:
    from alignparadox.datasets.registry import datasets_root
    from alignparadox.errors import UserError

    try:
        return (datasets_root() / "jailbreak_llms").is_dir()
    except UserError:
        return False


def demo(
    run_dir: Path = typer.Option(Path("runs/demo"), help="Where results and the report go."),
    seed: int = typer.Option(0, help="Seed of prompt sampling and attacks."),
    show_completions: bool = typer.Option(False, help="Show harmful completions unredacted."),
) -> None:
    """Run the paradox study on the organism family and write the HTML report."""
    from alignparadox.report import write_report
    from alignparadox.study.runner import prepare_run_dir, run_study

    console = Console(stderr=True)
    prepare_run_dir(run_dir)  # an unwritable folder fails before minutes of training
    console.print("[bold]1/3[/bold] organism family (trained once, then cached)")
    spec = demo_spec(seed)
    console.print(f"[bold]2/3[/bold] study: {len(spec.targets)} organisms × "
                  f"{', '.join(p.name for p in spec.measurements)}")
    summary = run_study(spec, run_dir)
    console.print("[bold]3/3[/bold] report")
    report = write_report(run_dir, show_completions=show_completions)
    if summary.failed:
        console.print(f"[red]{len(summary.failed)} cell(s) failed; see the report.[/red]")
    console.print(f"report: {report.resolve()}")
