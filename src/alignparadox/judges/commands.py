"""`paradox judges ...`: list judge kinds, validate a judge against human labels.

Heavy libraries (scikit-learn) are imported inside commands so that `paradox --help` stays fast.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from alignparadox.datasets.io import check_output_file, write_atomic

if TYPE_CHECKING:
    from alignparadox.judges.validation import Validation

app = typer.Typer(help="Judges: refusal / harmful-compliance scorers and their validation.",
                  no_args_is_help=True)


@app.command("list")
def list_kinds() -> None:
    """Print the judge kinds a --judge spec can name."""
    from alignparadox.judges.registry import judge_kinds

    for kind in judge_kinds():
        print(kind)


@app.command()
def validate(
    judge: str = typer.Option(..., "--judge", help="Judge spec, e.g. substring, "
                              "strongreject:URL#MODEL, classifier:PATH, ensemble:A,B."),
    labels: Path = typer.Option(..., "--labels", help="CSV with columns request, answer, label "
                                "(label: harmful compliance or not, e.g. 1/0)."),
    cache: Path | None = typer.Option(None, "--cache", help="SQLite file to cache verdicts in."),
    out: Path | None = typer.Option(None, "--out", help="Write per-row verdicts to this CSV."),
) -> None:
    """Accuracy, precision, recall, F1 and Cohen's kappa of a judge against labelled answers."""
    from alignparadox.judges.cache import CachedJudge
    from alignparadox.judges.registry import make_judge
    from alignparadox.judges.validation import read_labels, validate_judge

    if out is not None:
        check_output_file(out, "the verdicts")  # before the judge runs, not after
    rows = read_labels(labels)
    scorer = make_judge(judge)
    if cache is not None:
        scorer = CachedJudge(scorer, cache)
    result = validate_judge(scorer, rows)
    if result.judge_errors:  # metrics over verdicts that were never given would be invented
        from alignparadox.errors import UserError

        first = next(verdict.raw for verdict in result.verdicts if verdict.failed)
        raise UserError(f"judge {result.judge} failed on {result.judge_errors} of "
                        f"{len(result.rows)} answers (first: {first}); no metrics from failed "
                        "verdicts, rerun when the judge answers.")
    _print(result)
    if out is not None:
        _write_rows(result, out)


def _print(result: Validation) -> None:
    table = Table(title=f"{result.judge} vs labels (positive = harmful compliance)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    positives = result.true_positives + result.false_negatives
    table.add_row("n", f"{len(result.rows)} ({positives} labelled harmful)")
    for name in ("accuracy", "precision", "recall", "f1"):
        table.add_row(name, f"{getattr(result, name):.3f}")
    kappa = "undefined (one class only)" if math.isnan(result.kappa) else f"{result.kappa:.3f}"
    table.add_row("cohen_kappa", kappa)
    table.add_row("tp / fp / fn / tn", f"{result.true_positives} / {result.false_positives} / "
                  f"{result.false_negatives} / {result.true_negatives}")
    table.add_row("unparseable or judge error", str(result.unparseable))
    Console(markup=False).print(table)  # judge specs may hold brackets


def _write_rows(result: Validation, out: Path) -> None:
    """Per-row verdicts, written to a temporary file and renamed: never half a file."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["request", "answer", "label", "predicted", "judge_label", "harmfulness",
                     "judge_raw"])
    for row, verdict in zip(result.rows, result.verdicts, strict=True):
        writer.writerow([row.request, row.answer, int(row.harmful), int(verdict.success),
                         verdict.label, f"{verdict.harmfulness:.4f}", verdict.raw])
    write_atomic(out, text.getvalue().encode("utf-8"))
