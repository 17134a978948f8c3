"""A cell is one point of a study grid: a target, a measurement, its full settings and a seed.

Its key is the hash of its canonical JSON, so the same cell gets the same key in every run, on
every machine, and a finished cell is recognised (and skipped) however the study was restarted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def content_hash(value: Any, *, length: int = 16) -> str:
    """Hex SHA-256 of the canonical JSON of `value` (a stable cache or cell key)."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:length]


@dataclass(frozen=True)
class Cell:
    """One unit of work. `settings` holds every setting (defaults included), JSON values only."""

    target: str
    measurement: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "measurement": self.measurement,
                "settings": dict(self.settings), "seed": self.seed}

    @cached_property
    def key(self) -> str:
        return content_hash(self.as_dict())

    def __hash__(self) -> int:
        return hash(self.key)

    def __str__(self) -> str:
        shown = ", ".join(f"{name}={value}" for name, value in sorted(self.settings.items()))
        return f"{self.measurement} · {self.target}" + (f" · {shown}" if shown else "")
