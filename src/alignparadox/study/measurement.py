"""The one interface every measurement implements, and the registry that finds them.

A measurement (the alignment table, an attack, a defense, a separability scan) is a class:

    @register_measurement
    class Alignment(Measurement):
        name = "alignment"
        defaults = {"max_new_tokens": 64, "judge": "ground_truth"}

        def run(self, cell, context):
            ...
            return CellResult(results={"refusal": wilson(k, n).as_dict()}, target_id=...,
                              weight_hash=..., prompt_sets={...}, judge="ground_truth")

        def report_section(self, rows, options):   # optional: a generic table otherwise
            ...

Put it in a module under any package of `DISCOVERY_PACKAGES` and it appears in studies and
reports; nothing else changes.
"""

from __future__ import annotations

import importlib
import itertools
import pkgutil
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from alignparadox.errors import UserError
from alignparadox.study.cells import Cell, canonical_json

if TYPE_CHECKING:
    from alignparadox.report.html import ReportOptions, Section
    from alignparadox.study.store import Cache, CellRecord
    from alignparadox.study.strength import ParadoxMeasure

# Packages walked (recursively) for measurement modules; those that do not exist are skipped.
DISCOVERY_PACKAGES: tuple[str, ...] = (
    "alignparadox.study.measurements",
    "alignparadox.geometry",
    "alignparadox.attacks",
    "alignparadox.defenses",
)

_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")

# Settings every measurement accepts, with their defaults. They are not in any measurement's
# `defaults`, so a cell carries one only when its study sets it (existing cell keys stay).
# max_error_share: the share of a cell's judge verdicts, and of its endpoint requests, that may
# fail (judge unreachable, endpoint dead) before the cell fails instead of reporting rates.
COMMON_SETTINGS: Mapping[str, Any] = {"max_error_share": 0.0}


# Key of `CellResult.results` under which the runner records what the target's provider says of
# it (`alignparadox.targets.describe_target`), beside the weight hash.
TARGET_PROVENANCE = "target_provenance"


@dataclass(frozen=True)
class CellResult:
    """What `Measurement.run` returns: results plus the provenance only the measurement knows.

    `results` is JSON-able (Rate/Correlation objects and numpy scalars are converted when
    stored); every rate in it is a dict with the counts behind it ("k" and "n", as
    `Rate.as_dict()` gives). `weight_hash` is None only for black-box targets. `prompt_sets`
    maps each prompt-set id used to the hash of its content.
    """

    results: Mapping[str, Any]
    target_id: str
    weight_hash: str | None
    prompt_sets: Mapping[str, str] = field(default_factory=dict)
    judge: str | None = None


@dataclass(frozen=True)
class RunContext:
    """What a running cell may use besides its settings.

    `cache` is a content-keyed JSON cache shared by every cell of the run (judge verdicts need
    none of it: judges from `make_judge` are cached in the store already); `artifact_dir` is a
    folder of this cell's own for large outputs (directions, adapters); `progress(done, total)`
    reports progress inside a long cell.
    """

    run_dir: Path
    cell: Cell
    cache: Cache
    progress: Callable[[int, int], None] = lambda done, total: None

    @property
    def artifact_dir(self) -> Path:
        folder = self.run_dir / "artifacts" / self.cell.key
        folder.mkdir(parents=True, exist_ok=True)
        return folder


class Measurement(ABC):
    """One kind of measurement. Subclasses set `name` and implement `run`.

    `defaults` names every setting the measurement accepts with its default value: a study
    setting not named here is a typo and is refused before anything runs, and each stored cell
    carries all its settings, defaults included. `order` places the report section (lower
    first, then by name).

    One instance per process runs all of a study's cells for this measurement, target by
    target, so an instance may keep a loaded model between consecutive cells of one target.
    """

    name: ClassVar[str]
    title: ClassVar[str] = ""
    defaults: ClassVar[Mapping[str, Any]] = {}
    order: ClassVar[int] = 100

    def cells(self, targets: Sequence[str], settings: Mapping[str, Any],
              grid: Mapping[str, Sequence[Any]], seed: int) -> list[Cell]:
        """Every target × every point of the settings grid, over the defaults.

        Override to skip combinations that make no sense (e.g. white-box attacks on endpoints).
        """
        unknown = sorted((set(settings) | set(grid)) - set(self.defaults) - set(COMMON_SETTINGS))
        if unknown:
            accepted = ", ".join(sorted({*self.defaults, *COMMON_SETTINGS}))
            raise UserError(f"measurement {self.name!r} has no setting(s) {', '.join(unknown)}; "
                            f"it accepts: {accepted}.")
        defaults = {**COMMON_SETTINGS, **self.defaults}
        for name, value in settings.items():
            check_setting_type(self.name, name, value, defaults[name])
        for name, values in grid.items():
            for value in values:
                check_setting_type(self.name, name, value, defaults[name])
        axes = list(grid)
        cells = []
        for target in targets:
            for point in itertools.product(*(grid[axis] for axis in axes)):
                full = {**self.defaults, **settings, **dict(zip(axes, point, strict=True))}
                cells.append(Cell(target, self.name, full, seed))
        return cells

    def check(self, cell: Cell) -> None:  # noqa: B027 - an optional hook, no-op by default
        """Raise UserError for a cell that cannot run (missing model path, bad value).

        Called for every planned cell before anything is written; keep it cheap.
        """

    @abstractmethod
    def run(self, cell: Cell, context: RunContext) -> CellResult:
        """Compute one cell. Raise UserError for the user's mistakes; anything else is a bug."""

    def report_section(self, rows: list[CellRecord], options: ReportOptions) -> Section:
        """This measurement's report section; by default a table of every rate per cell."""
        from alignparadox.report.generic import generic_section

        return generic_section(self.title or self.name, rows, options)

    def paradox_measures(self, rows: list[CellRecord],
                         options: ReportOptions) -> list[ParadoxMeasure]:
        """How easily each target was misaligned, per attack, for the report's verdict table
        (`alignparadox.study.strength.ParadoxMeasure`); none by default."""
        return []


# A setting's JSON kind: how one is named in a sentence, and how several are.
_KIND_NAMES = {"boolean": ("a boolean (true or false)", "booleans"),
               "integer": ("an integer", "integers"), "number": ("a number", "numbers"),
               "string": ("a string", "strings"), "list": ("a list", "lists"),
               "table": ("a table", "tables")}


def _kind(value: Any) -> str | None:
    """The JSON kind a setting's default fixes for it; None (default None) fixes nothing."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "table"
    return None


def _fits(value: Any, kind: str) -> bool:
    if kind == "number":  # an integer is a number too (temperature = 1)
        return _kind(value) in ("number", "integer")
    return _kind(value) == kind


def check_setting_type(measurement: str, name: str, value: Any, default: Any) -> None:
    """Refuse a setting whose JSON kind differs from its default's (and, when the default is a
    list of one kind of item, a list holding another kind), before any cell runs: a wrong type
    would otherwise fail deep inside a cell, after minutes of work."""
    kind = _kind(default)
    if kind is None:
        return  # no default type to compare with: the measurement's own check decides
    where = f"measurement {measurement!r} setting {name}"
    like = f"like its default {canonical_json(default)}"
    if not _fits(value, kind):
        raise UserError(f"{where} must be {_KIND_NAMES[kind][0]} ({like}), "
                        f"got {canonical_json(value)}.")
    item_kinds = {_kind(item) for item in default} if kind == "list" else set()
    if len(item_kinds) == 1 and None not in item_kinds:
        (item_kind,) = item_kinds
        for item in value:
            if not _fits(item, item_kind):
                raise UserError(f"{where} must be a list of {_KIND_NAMES[item_kind][1]} "
                                f"({like}), got item {canonical_json(item)}.")


_REGISTRY: dict[str, type[Measurement]] = {}
_INSTANCES: dict[str, Measurement] = {}
_discovered = False


def register_measurement(cls: type[Measurement]) -> type[Measurement]:
    """Class decorator: make a measurement available to studies and reports by its name."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise TypeError(f"{cls.__qualname__}.name must be a lowercase identifier, got {name!r}")
    previous = _REGISTRY.get(name)
    if previous is not None and _qualified(previous) != _qualified(cls):
        raise TypeError(f"measurement name {name!r} is taken by {_qualified(previous)}")
    canonical_json(dict(cls.defaults))  # defaults must be JSON values: they become cell keys
    _REGISTRY[name] = cls
    return cls


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def discover_measurements() -> None:
    """Import every module under DISCOVERY_PACKAGES once, so their decorators register."""
    global _discovered
    if _discovered:
        return
    for package_name in DISCOVERY_PACKAGES:
        try:
            package = importlib.import_module(package_name)
        except ModuleNotFoundError as error:
            missing = error.name or ""
            if package_name == missing or package_name.startswith(missing + "."):
                continue  # that box has not been built (yet)
            raise
        for module in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            importlib.import_module(module.name)
    _discovered = True


def find_measurement(name: str) -> Measurement | None:
    """The registered measurement called `name` (one instance per process), or None."""
    if name not in _REGISTRY:
        discover_measurements()
    cls = _REGISTRY.get(name)
    if cls is None:
        return None
    if type(_INSTANCES.get(name)) is not cls:
        _INSTANCES[name] = cls()
    return _INSTANCES[name]


def get_measurement(name: str) -> Measurement:
    """The registered measurement called `name`; UserError naming the known ones otherwise."""
    measurement = find_measurement(name)
    if measurement is None:
        known = ", ".join(measurement_names()) or "none"
        raise UserError(f"unknown measurement {name!r}; known measurements: {known}.")
    return measurement


def measurement_names() -> list[str]:
    discover_measurements()
    return sorted(_REGISTRY)
