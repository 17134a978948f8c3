"""Target providers: named models that are not plain folders, such as `organism:aligned-3`.

A provider owns a scheme (`organism`) and turns a name into a Hugging Face checkpoint folder. It
also tells, without building anything, whether a name exists, and describes a target for the
provenance of every result (for example how it was aligned and how strongly). Providers register
through the `alignparadox.target_providers` entry-point group, so this box knows none of them:
any package can add its own.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from alignparadox.errors import UserError

ENTRY_POINT_GROUP = "alignparadox.target_providers"


def _no_defaults(name: str) -> Mapping[str, Any]:
    return {}


@dataclass(frozen=True)
class TargetProvider:
    """How targets `SCHEME:NAME` are found. `resolve` may build or download the checkpoint;
    `check` refuses an unknown name without doing so; `describe` returns JSON-ready provenance,
    with `alignment_strength` (a number) when the provider knows it.

    `default_settings` gives the measurement settings a study uses for the target where it sets
    none (JSON values, checked cheaply: no model is built): `behaviours` (a registered behaviour
    set, see `alignparadox.datasets.behaviours`), `judge` (a judge spec) and `editor` (the value
    editor's base, see the `output_tinkering` measurement). A target without them runs only
    with the study's own settings."""

    scheme: str
    resolve: Callable[[str], Path]
    check: Callable[[str], None]
    describe: Callable[[str], Mapping[str, Any]]
    default_settings: Callable[[str], Mapping[str, Any]] = _no_defaults


@functools.lru_cache(maxsize=1)
def providers() -> dict[str, TargetProvider]:
    """Every installed provider, by scheme."""
    found: dict[str, TargetProvider] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        provider = entry.load()
        found[provider.scheme] = provider
    return found


def provider_for(spec: str) -> tuple[TargetProvider, str] | None:
    """The provider of `spec` and the name within its scheme, or None for a folder or Hub id.

    A Hub id has no colon and a path is tried first, so only `SCHEME:NAME` with an installed
    scheme is a provider's target."""
    from alignparadox.targets.specs import split_target

    spec = split_target(spec)[0]  # a target table's model
    scheme, colon, name = spec.partition(":")
    if not colon or Path(spec).exists() or spec.startswith(("http://", "https://")):
        return None
    provider = providers().get(scheme)
    if provider is None:
        return None
    if not name:
        raise UserError(f"target {spec!r} names no {scheme}; give {scheme}:NAME.")
    return provider, name


CARD_FILE = "alignparadox.json"


def describe_target(spec: str) -> dict[str, Any]:
    """Provenance of a target beyond its weights' hash: what its provider says, else a model
    folder's own card (`alignparadox.json`, a JSON object such as {"alignment_strength": 3,
    "note": "..."}); empty for Hub ids, endpoints and folders without a card."""
    from alignparadox.targets.specs import split_target

    found = provider_for(spec)
    if found:
        return dict(found[0].describe(found[1]))
    card = Path(split_target(spec)[0]).expanduser() / CARD_FILE
    if not card.is_file():
        return {}
    try:
        value = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{card} is not a readable JSON object ({error}).") from None
    if not isinstance(value, dict):
        raise UserError(f"{card} must hold a JSON object.")
    return value


def alignment_strength(spec: str) -> int | float | None:
    """The alignment strength the target's provider records, or None when it records none."""
    return describe_target(spec).get("alignment_strength")


def target_defaults(spec: str) -> dict[str, Any]:
    """The settings the target's provider gives for what a study leaves unset; empty for
    plain folders, Hub ids and endpoints."""
    found = provider_for(spec)
    return dict(found[0].default_settings(found[1])) if found else {}
