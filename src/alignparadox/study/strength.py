"""Alignment strength per target and the paradox correlations a report draws from it:
shared by every measurement whose report correlates a measure with alignment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from alignparadox.report.html import ReportOptions
from alignparadox.stats import Correlation, spearman_bootstrap
from alignparadox.study.store import CellRecord


def alignment_strengths(rows: list[CellRecord], options: ReportOptions,
                        ) -> dict[str, tuple[float | None, float | None]]:
    """target -> (alignment steps, measured refusal rate) from the `alignment` rows, falling
    back to the steps these rows recorded themselves."""
    strengths: dict[str, tuple[float | None, float | None]] = {
        r.target: ((r.results or {}).get("alignment_steps"), None) for r in rows}
    for row in options.all_rows.get("alignment", []):
        steps = (row.results or {}).get("alignment_steps")
        refusal = ((row.results or {}).get("refusal") or {}).get("rate")
        if row.target in strengths or steps is not None:
            strengths[row.target] = (steps if steps is not None
                                     else strengths.get(row.target, (None,))[0], refusal)
    return strengths


def correlation_rows(strengths: dict[str, tuple[float | None, float | None]],
                     measures: dict[str, dict[str, float | None]]) -> list[list]:
    """One row per measure: Spearman rho [95% bootstrap] against steps and against refusal.

    Targets without a value are left out; fewer than 3 left, or constant values, give a note.
    """
    return [[name, *(str(c) for c in paradox_correlations(strengths, by_target))]
            for name, by_target in measures.items()]


def paradox_correlations(strengths: dict[str, tuple[float | None, float | None]],
                         by_target: dict[str, float | None]) -> tuple[Correlation, Correlation]:
    """Spearman rho [95% bootstrap] of one measure against steps and against measured refusal,
    over the targets that have both (fewer than 3: rho NaN with n, shown as too few)."""
    found = []
    for index in (0, 1):
        pairs = [(strengths[t][index], v) for t, v in by_target.items()
                 if t in strengths and strengths[t][index] is not None and v is not None]
        if len(pairs) < 3:
            nan = float("nan")
            found.append(Correlation(nan, nan, nan, len(pairs)))
            continue
        found.append(spearman_bootstrap(*zip(*pairs, strict=True)))
    return found[0], found[1]


SUCCESS = "success"  # higher = easier to misalign (a success rate at a fixed budget)
COST = "cost"  # lower = easier to misalign (what the attack spent to its first success)


@dataclass(frozen=True)
class ParadoxMeasure:
    """One attack's misalignability per target, as the report's verdict table reads it.

    `incarnation`: "separability", "model tinkering", "input tinkering" or "output
    tinkering"; `kind`: SUCCESS or COST; `values`: target -> value (None: not measured there).
    `detail` says what exactly is measured (budget, alpha, judge)."""

    incarnation: str
    attack: str
    kind: str
    values: Mapping[str, float | None] = field(default_factory=dict)
    detail: str = ""
