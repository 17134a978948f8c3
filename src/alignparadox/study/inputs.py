"""What a cell runs on: its behaviour set and its judge, from the cell's settings, else from
what its target's provider gives as defaults (`TargetProvider.default_settings`).

Measurements declare the settings of `BEHAVIOUR_SETTINGS` (all None by default) and a `judge`
(None by default). A cell that sets none of behaviours / harmful / harmless takes its target's
default behaviour set; a target without one is refused in one sentence before any cell runs.
No default ever substitutes one target's data for another's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from alignparadox.datasets.behaviours import HARMLESS, BehaviourSet, behaviour_set, check_source
from alignparadox.errors import UserError
from alignparadox.study.cells import Cell, canonical_json, content_hash

BEHAVIOUR_SETTINGS: Mapping[str, Any] = {"behaviours": None, "harmful": None,
                                         "harmless": None, "pairs": None}
FALLBACK_JUDGE = "substring"  # the field's standard refusal matcher (GCG, HarmBench)

_EXAMPLE = 'e.g. harmful = "advbench" and harmless = "self-instruct-seed", or behaviours = "xstest"'


def _defaults(cell: Cell) -> dict[str, Any]:
    from alignparadox.targets.providers import target_defaults

    return target_defaults(cell.target)


def behaviour_sources(cell: Cell, *, needs_harmless: bool = True) -> dict[str, str | None]:
    """The cell's behaviour settings, or its target's defaults when it sets none of them;
    UserError (one sentence) when there are none, or a needed part has no source."""
    sources = {name: cell.settings.get(name) for name in BEHAVIOUR_SETTINGS}
    for name, value in sources.items():
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise UserError(f"measurement {cell.measurement!r} setting {name} must be a string "
                            f"(a prompt set name or a file path), got {canonical_json(value)}.")
    if not any(sources[name] for name in ("behaviours", "harmful", "harmless")):
        defaults = {name: value for name, value in _defaults(cell).items()
                    if name in BEHAVIOUR_SETTINGS}
        if not defaults:
            need = "harmful and harmless" if needs_harmless else "harmful"
            raise UserError(f"{cell.measurement} on {cell.target} needs its requests: the "
                            f"target has no default behaviour set, so give {need} (or "
                            f"behaviours) in the measurement's settings, {_EXAMPLE}.")
        sources = {**sources, **defaults, "pairs": sources["pairs"] or defaults.get("pairs")}
    if not sources["behaviours"] and not sources["harmful"]:
        raise UserError(f"{cell.measurement} on {cell.target} has harmless requests but no "
                        f"harmful ones; give harmful (or behaviours), {_EXAMPLE}.")
    if needs_harmless and not sources["behaviours"] and not sources["harmless"]:
        raise UserError(f"{cell.measurement} on {cell.target} needs harmless requests too; "
                        f"give harmless (or behaviours), {_EXAMPLE}.")
    return sources


def check_behaviours(cell: Cell, *, needs_harmless: bool = True) -> None:
    """Cheap check for `Measurement.check`: every source is a registered set or a file."""
    for name, source in behaviour_sources(cell, needs_harmless=needs_harmless).items():
        if source is not None:
            if name == "pairs":
                from pathlib import Path

                if not Path(source).expanduser().is_file():
                    raise UserError(f"pairs file {source} does not exist.")
            else:
                check_source(source, name)


_LOADED: dict[str, BehaviourSet] = {}


def cell_behaviours(cell: Cell, *, needs_harmless: bool = True) -> BehaviourSet:
    """The cell's behaviour set (loaded once per process per sources and seed)."""
    sources = behaviour_sources(cell, needs_harmless=needs_harmless)
    key = content_hash([sources, cell.seed])
    if key not in _LOADED:
        _LOADED.clear()  # one at a time: studies run target by target
        _LOADED[key] = behaviour_set(**sources, seed=cell.seed)
    behaviours = _LOADED[key]
    if needs_harmless and not behaviours.has_harmless:
        raise UserError(f"behaviour set {behaviours.name} has no {HARMLESS} requests; give "
                        f"harmless in the settings of {cell.measurement}, {_EXAMPLE}.")
    return behaviours


def cell_judge(cell: Cell) -> str:
    """The cell's judge spec: its `judge` setting, else its target's default judge, else the
    refusal-substring judge."""
    return cell.settings.get("judge") or _defaults(cell).get("judge") or FALLBACK_JUDGE


def cell_default(cell: Cell, name: str, fallback: Any) -> Any:
    """A setting of the cell, else its target's default for it, else `fallback`."""
    value = cell.settings.get(name)
    return value if value is not None else _defaults(cell).get(name, fallback)
