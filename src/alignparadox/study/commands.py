"""`paradox study run SPEC` and `paradox study status RUN_DIR`."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from alignparadox.errors import UserError
from alignparadox.report.writer import read_store
from alignparadox.study.ray_backend import RayBackend
from alignparadox.study.runner import BACKENDS, StudyStopped, run_study
from alignparadox.study.spec import StudySpec

app = typer.Typer(help="Run studies (target × measurement × settings grids) and check on them.",
                  no_args_is_help=True)
console = Console(highlight=False, markup=False)  # targets and errors are not markup


@app.command("run")
def run(
    spec: Path = typer.Argument(..., help="Study spec, a .toml or .json file."),
    run_dir: Path = typer.Option(None, "--run-dir",
                                 help="Folder for results.sqlite [default: runs/<spec name>]."),
    backend: str = typer.Option("local", help=f"Execution back end: {', '.join(BACKENDS)}."),
    address: str = typer.Option(None, "--address",
                                help="Ray cluster to join (with --backend ray), e.g. auto or "
                                     "HOST:6379 [default: a local one on this machine's CPUs]."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Compute every cell of SPEC that is not already finished in the run folder."""
    if address is not None and backend != "ray":
        raise UserError("--address names a Ray cluster; use it with --backend ray.")
    study = StudySpec.from_file(spec)
    run_dir = run_dir if run_dir is not None else Path("runs") / study.name
    chosen = RayBackend(address) if backend == "ray" else backend
    try:
        summary = run_study(study, run_dir, backend=chosen, progress=progress)
    except StudyStopped as stopped:  # Ctrl-C: say what was kept, exit as shells expect
        Console(stderr=True, highlight=False, markup=False).print(str(stopped))
        raise typer.Exit(130) from None
    console.print(f"{summary.planned} cells: {summary.computed} computed, "
                  f"{summary.reused} already finished, {len(summary.failed)} failed.")
    console.print(f"results: {summary.results_path}")
    for outcome in summary.failed:
        last_line = (outcome.error or "").strip().splitlines()[-1]
        console.print(f"failed {outcome.cell.key} {outcome.cell}: {last_line}")
    if summary.failed:
        console.print(f"a rerun retries failed cells; details: paradox study status {run_dir}")
        raise typer.Exit(1)
    console.print(f"next: paradox report {run_dir}")


@app.command("status")
def status(run_dir: Path = typer.Argument(..., help="A run folder with results.sqlite.")) -> None:
    """Per measurement: cells planned by the latest study, finished, failed and pending."""
    with read_store(run_dir) as store:  # a read-only run folder is readable too
        studies = store.studies()
        records = store.records(status=None)
    latest_plan = studies[-1]["planned"] if studies else []
    done_keys = {record.key for record in records if record.status == "done"}
    planned = Counter(measurement for _, measurement, _ in latest_plan)
    pending = Counter(measurement for key, measurement, _ in latest_plan if key not in done_keys)
    done = Counter(record.measurement for record in records if record.status == "done")
    failed = [record for record in records if record.status == "failed"]
    failed_count = Counter(record.measurement for record in failed)
    wall: defaultdict[str, float] = defaultdict(float)
    for record in records:
        wall[record.measurement] += record.wall_seconds
    table = Table(title=f"{run_dir} ({len(studies)} study runs)")
    for column in ("measurement", "planned", "done", "failed", "pending", "compute time"):
        table.add_column(column, justify="left" if column == "measurement" else "right")
    for measurement in sorted(set(planned) | set(done) | set(failed_count)):
        table.add_row(measurement, str(planned[measurement]), str(done[measurement]),
                      str(failed_count[measurement]), str(pending[measurement]),
                      f"{wall[measurement]:.1f} s")
    console.print(table)
    for record in failed:
        last_line = (record.error or "").strip().splitlines()[-1]
        console.print(f"failed {record.key} {record.cell}: {last_line}")
