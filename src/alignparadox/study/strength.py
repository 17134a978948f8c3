"""Alignment strength per target and the paradox correlations a report draws from it:
shared by every measurement whose report correlates a measure with alignment."""

from __future__ import annotations

from alignparadox.report.html import ReportOptions
from alignparadox.stats import spearman_bootstrap
from alignparadox.study.store import CellRecord


def alignment_strengths(rows: list[CellRecord], options: ReportOptions,
                        ) -> dict[str, tuple[float | None, float | None]]:
    """target -> (alignment steps, measured refusal rate) from the `alignment` rows, falling
    back to the steps these rows recorded themselves."""
    strengths: dict[str, tuple[float | None, float | None]] = {
        r.target: (r.results.get("alignment_steps"), None) for r in rows}
    for row in options.all_rows.get("alignment", []):
        steps = row.results.get("alignment_steps")
        refusal = row.results.get("refusal", {}).get("rate")
        if row.target in strengths or steps is not None:
            strengths[row.target] = (steps if steps is not None
                                     else strengths.get(row.target, (None,))[0], refusal)
    return strengths


def correlation_rows(strengths: dict[str, tuple[float | None, float | None]],
                     measures: dict[str, dict[str, float | None]]) -> list[list]:
    """One row per measure: Spearman rho [95% bootstrap] against steps and against refusal.

    Targets without a value are left out; fewer than 3 left, or constant values, give a note.
    """
    rows = []
    for name, by_target in measures.items():
        cells = [name]
        for index in (0, 1):
            pairs = [(strengths[t][index], v) for t, v in by_target.items()
                     if t in strengths and strengths[t][index] is not None and v is not None]
            if len(pairs) < 3:
                cells.append(f"n={len(pairs)}: too few targets")
                continue
            cells.append(str(spearman_bootstrap(*zip(*pairs, strict=True))))
        rows.append(cells)
    return rows
