"""The section a measurement gets before it writes its own: one row per cell, the settings
that vary, and every rate and top-level number in its results."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from markupsafe import Markup

from alignparadox.report.html import ReportOptions, Section, table
from alignparadox.study.cells import canonical_json
from alignparadox.study.store import CellRecord


def _is_rate(value: Any) -> bool:
    return isinstance(value, Mapping) and {"k", "n"} <= set(value)


def _metrics(results: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Rates at any depth (named by their path) and plain numbers or words at the top."""
    found: dict[str, Any] = {}
    for name, value in results.items():
        path = f"{prefix}{name}"
        if _is_rate(value):
            found[path] = value
        elif isinstance(value, Mapping):
            found.update((key, item) for key, item in _metrics(value, f"{path}.").items()
                         if _is_rate(item))
        elif not prefix and isinstance(value, int | float | str | bool):
            found[path] = value
    return found


def varying_settings(rows: list[CellRecord]) -> list[str]:
    """Setting names whose value differs between rows (the ones worth a column)."""
    names = sorted({name for row in rows for name in row.settings})
    return [name for name in names
            if len({repr(row.settings.get(name)) for row in rows}) > 1]


def settings_groups(rows: list[CellRecord]) -> list[tuple[str, list[CellRecord]]]:
    """Rows of one measurement split by their settings where a target was run under several
    (a grid, or two corpora), each group labelled with the settings that tell the groups
    apart; else one group labelled "". Correlations and verdicts never pool the groups."""
    groups: dict[str, list[CellRecord]] = defaultdict(list)
    for row in rows:
        groups[canonical_json(row.settings)].append(row)
    if len(groups) == 1 or len({row.target for row in rows}) == len(rows):
        return [("", list(rows))]
    varying = sorted({key for row in rows for key in row.settings
                      if len({canonical_json(r.settings.get(key)) for r in rows}) > 1})
    return [(", ".join(f"{key}={canonical_json(members[0].settings.get(key))}"
                       for key in varying), members) for members in groups.values()]


def generic_section(title: str, rows: list[CellRecord], options: ReportOptions) -> Section:
    varying = varying_settings(rows)
    metrics = [_metrics(row.results or {}) for row in rows]
    columns = list(dict.fromkeys(name for found in metrics for name in found))
    body = table(["target", *varying, *columns],
                 [[row.target, *(row.settings.get(name) for name in varying),
                   *(found.get(name) for name in columns)]
                  for row, found in zip(rows, metrics, strict=True)])
    note = Markup("<p>Rates show the 95% Wilson interval and the counts behind them.</p>")
    return Section(title, note + body)
