"""A study spec: targets, measurements with their settings grids, and a seed (JSON or TOML).

    name = "family-alignment"
    seed = 0
    targets = ["organism:aligned-0", "organism:aligned-4"]
    # or tables with loading options: { model = "/models/x", dtype = "bfloat16", ... }

    [[measurements]]
    name = "alignment"
    settings = { max_new_tokens = 64 }          # fixed for every cell
    grid = { temperature = [0.0, 0.7] }         # one cell per value (cartesian product)
    # targets = [...]                           # optional: overrides the study's targets

    [strengths]                                 # optional: alignment strength per target,
    axis = "checkpoint order"                   # for the report's verdicts (else the
    values = { "organism:aligned-0" = 0, "organism:aligned-4" = 4 }   # targets' own cards)

Every cell = one target × one grid point; settings a measurement does not declare are refused.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignparadox.datasets.io import read_text
from alignparadox.errors import UserError
from alignparadox.study.cells import canonical_json

_STUDY_KEYS = {"name", "seed", "targets", "measurements", "strengths", "notes"}
_MEASUREMENT_KEYS = {"name", "settings", "grid", "targets"}


@dataclass(frozen=True)
class MeasurementPlan:
    """One measurement of a study: fixed settings, a grid of varied ones, optional targets."""

    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    grid: Mapping[str, list[Any]] = field(default_factory=dict)
    targets: tuple[str, ...] | None = None


@dataclass(frozen=True)
class StudySpec:
    targets: tuple[str, ...]
    measurements: tuple[MeasurementPlan, ...]
    seed: int = 0
    name: str = "study"
    # Alignment strength the study gives its targets ({"axis": NAME, "values": {target: x}}):
    # the report's verdicts place these targets by it instead of by their providers' cards.
    strengths: Mapping[str, Any] | None = None
    # Sentences the report shows with the verdict (e.g. what `paradox audit` skipped and why).
    notes: tuple[str, ...] = ()

    @classmethod
    def from_file(cls, path: str | Path) -> StudySpec:
        """Read a .json or .toml spec; any problem is one UserError sentence."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"study spec {path} does not exist.")
        text = read_text(path)  # strict UTF-8, a byte-order mark dropped, one sentence if not
        if path.suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as error:
                raise UserError(f"study spec {path} is not valid JSON: {error}.") from None
        elif path.suffix == ".toml":
            data = _parse_toml(text, path)
        else:
            raise UserError(f"study spec {path} must end in .json or .toml.")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "study spec") -> StudySpec:
        if not isinstance(data, Mapping):
            raise UserError(f"{source} must be a table (a JSON object) at the top level.")
        _refuse_unknown(data, _STUDY_KEYS, source)
        targets = _targets(data.get("targets"), f"{source}: targets")
        if targets is None:
            raise UserError(f"{source} needs a non-empty list of targets.")
        seed = data.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise UserError(f"{source}: seed must be an integer, got {seed!r}.")
        name = data.get("name", "study")
        if not isinstance(name, str) or not name:
            raise UserError(f"{source}: name must be a non-empty string.")
        raw_measurements = data.get("measurements")
        if not isinstance(raw_measurements, list) or not raw_measurements:
            raise UserError(f"{source} needs a non-empty list of measurements.")
        plans = tuple(_measurement(entry, f"{source}: measurement {index + 1}")
                      for index, entry in enumerate(raw_measurements))
        strengths = _strengths(data.get("strengths"), targets, f"{source}: strengths")
        notes = data.get("notes", [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise UserError(f"{source}: notes must be a list of strings.")
        return cls(targets=targets, measurements=plans, seed=seed, name=name,
                   strengths=strengths, notes=tuple(notes))

    def as_dict(self) -> dict[str, Any]:
        plans = []
        for plan in self.measurements:
            entry: dict[str, Any] = {"name": plan.name, "settings": dict(plan.settings),
                                     "grid": {axis: list(values) for axis, values
                                              in plan.grid.items()}}
            if plan.targets is not None:
                entry["targets"] = list(plan.targets)
            plans.append(entry)
        spec = {"name": self.name, "seed": self.seed, "targets": list(self.targets),
                "measurements": plans}
        if self.notes:
            spec["notes"] = list(self.notes)
        if self.strengths is not None:
            spec["strengths"] = {"axis": self.strengths["axis"],
                                 "values": dict(self.strengths["values"])}
        return spec


def _parse_toml(text: str, path: Path) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10 without tomli
        try:
            import tomli as tomllib
        except ImportError:
            raise UserError("TOML study specs need Python 3.11 or the tomli package; "
                            "use a JSON spec.") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"study spec {path} is not valid TOML: {error}.") from None


def _refuse_unknown(data: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{where} has unknown key(s) {', '.join(unknown)}; "
                        f"expected: {', '.join(sorted(known))}.")


def _targets(value: Any, where: str) -> tuple[str, ...] | None:
    """Target strings; a table (model and loading options) becomes one (`targets.specs`)."""
    from alignparadox.targets.specs import target_table

    if value is None:
        return None
    if (not isinstance(value, list) or not value
            or not all((isinstance(item, str) and item) or isinstance(item, Mapping)
                       for item in value)):
        raise UserError(f"{where} must be a non-empty list of target names or paths, or "
                        "tables such as { model = PATH, dtype = \"bfloat16\" }.")
    return tuple(dict.fromkeys(
        target_table(item, f"{where} entry {index + 1}") if isinstance(item, Mapping) else item
        for index, item in enumerate(value)))


def _json_values(value: Any, where: str) -> None:
    try:
        canonical_json(value)
    except (TypeError, ValueError) as error:
        raise UserError(f"{where} holds a value that is not plain JSON ({error}).") from None


def _measurement(entry: Any, where: str) -> MeasurementPlan:
    if not isinstance(entry, Mapping):
        raise UserError(f"{where} must be a table with at least a name.")
    _refuse_unknown(entry, _MEASUREMENT_KEYS, where)
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise UserError(f"{where} needs a name.")
    where = f"{where} ({name})"
    settings = entry.get("settings", {})
    grid = entry.get("grid", {})
    if not isinstance(settings, Mapping):
        raise UserError(f"{where}: settings must be a table of name = value.")
    if not isinstance(grid, Mapping) or not all(
            isinstance(values, list) and values for values in grid.values()):
        raise UserError(f"{where}: grid must map each setting to a non-empty list of values.")
    both = sorted(set(settings) & set(grid))
    if both:
        raise UserError(f"{where}: {', '.join(both)} is both a fixed setting and a grid axis.")
    _json_values(dict(settings), f"{where}: settings")
    _json_values(dict(grid), f"{where}: grid")
    return MeasurementPlan(name=name, settings=dict(settings),
                           grid={axis: list(values) for axis, values in grid.items()},
                           targets=_targets(entry.get("targets"), f"{where}: targets"))


def _strengths(value: Any, targets: tuple[str, ...], where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) - {"axis", "values"} or "values" not in value:
        raise UserError(f"{where} must be a table with values = {{ TARGET = NUMBER, ... }} and "
                        "an optional axis name.")
    axis = value.get("axis", "alignment strength given by the study")
    values = value["values"]
    if not isinstance(axis, str) or not axis.strip():
        raise UserError(f"{where}: axis must be a non-empty name.")
    if not isinstance(values, Mapping) or not values or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in values.values()):
        raise UserError(f"{where}: values must map targets to numbers.")
    unknown = sorted(set(values) - set(targets))
    if unknown:
        raise UserError(f"{where} names {', '.join(unknown)}, which the study's targets do "
                        "not list.")
    return {"axis": axis, "values": {target: float(x) for target, x in values.items()}}
