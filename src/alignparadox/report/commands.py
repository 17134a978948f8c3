"""`paradox report RUN_DIR`: the run's HTML report."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from alignparadox.report.writer import write_report


def report(
    run_dir: Path = typer.Argument(..., help="A run folder with results.sqlite."),
    out: Path = typer.Option(None, "--out",
                             help="HTML file to write [default: RUN_DIR/report.html]."),
    show_completions: bool = typer.Option(
        False, "--show-completions", help="Show harmful completions in full (redacted otherwise)."),
) -> None:
    """Write one self-contained HTML report of everything stored in RUN_DIR."""
    path = write_report(run_dir, out=out, show_completions=show_completions)
    Console(highlight=False, markup=False).print(f"report: {path}")
