"""Alignment strength per target and the paradox correlations a report draws from it:
shared by every measurement whose report correlates a measure with alignment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from alignparadox.report.html import ReportOptions
from alignparadox.stats import Correlation, spearman_bootstrap
from alignparadox.study.measurement import TARGET_PROVENANCE
from alignparadox.study.store import CellRecord

MEASURED_REFUSAL = "measured refusal rate"
# What a section's correlation with strength says when its targets lie on several axes.
MIXED_AXES = ("several alignment axes ({}): strengths on different axes do not compare; the "
              "verdict table correlates within each axis")


@dataclass(frozen=True)
class Position:
    """Where a target sits: its alignment axis, the family it belongs to, its strength."""

    axis: str
    family: str
    strength: float


def target_positions(options: ReportOptions) -> dict[str, Position]:
    """Every reported target with a known alignment strength: from its provenance card, else
    from its measured refusal rate."""
    cards: dict[str, dict] = {}
    targets: set[str] = set()
    for rows in options.all_rows.values():
        for row in rows:
            targets.add(row.target)
            card = (row.results or {}).get(TARGET_PROVENANCE)
            if card:
                cards.setdefault(row.target, card)
    refusal = {row.target: row.results["refusal"]["rate"]
               for row in options.all_rows.get("alignment", [])
               if row.results and (row.results.get("refusal") or {}).get("n")}
    given = options.strengths or {"values": {}}
    positions = {}
    for target in sorted(targets):
        card = cards.get(target, {})
        if target in given["values"]:
            positions[target] = Position(given["axis"], "given by the study",
                                         float(given["values"][target]))
            continue
        strength = card.get("alignment_strength")
        if isinstance(strength, int | float) and not isinstance(strength, bool):
            positions[target] = Position(card.get("alignment_axis") or "alignment strength",
                                         card.get("family") or f"target {target}",
                                         float(strength))
        elif target in refusal:
            positions[target] = Position(MEASURED_REFUSAL, f"target {target}", refusal[target])
    return positions




class Strengths(dict):
    """target -> (alignment strength, measured refusal rate); `axes`: the alignment axes of the
    targets with a strength. On several axes, strengths are on different scales (steps, a data
    share), so a correlation across all targets would be a wrong number: `mixed_axes` says so."""

    axes: tuple[str, ...] = ()

    @property
    def mixed_axes(self) -> str | None:
        return MIXED_AXES.format("; ".join(self.axes)) if len(self.axes) > 1 else None


def alignment_strengths(rows: list[CellRecord], options: ReportOptions) -> Strengths:
    """target -> (alignment steps, measured refusal rate) from the `alignment` rows, falling
    back to the steps these rows recorded themselves."""
    strengths = Strengths({r.target: ((r.results or {}).get("alignment_steps"), None)
                           for r in rows})
    for row in options.all_rows.get("alignment", []):
        steps = (row.results or {}).get("alignment_steps")
        refusal = ((row.results or {}).get("refusal") or {}).get("rate")
        if row.target in strengths or steps is not None:
            strengths[row.target] = (steps if steps is not None
                                     else strengths.get(row.target, (None,))[0], refusal)
    positions = target_positions(options)
    strengths.axes = tuple(sorted({positions[t].axis for t, (steps, _) in strengths.items()
                                   if steps is not None and t in positions}))
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
    mixed = getattr(strengths, "mixed_axes", None)
    for index in (0, 1):
        pairs = [(strengths[t][index], v) for t, v in by_target.items()
                 if t in strengths and strengths[t][index] is not None and v is not None]
        if index == 0 and mixed:
            nan = float("nan")
            found.append(Correlation(nan, nan, nan, len(pairs), note=mixed))
            continue
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
