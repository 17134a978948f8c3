"""Moved: the direction recipes are model-generic and live in `alignparadox.geometry.recipes`.
Kept for old imports of `mean_norm` and `sample`."""

from __future__ import annotations

from alignparadox.datasets.behaviours import VALUE_CATEGORY
from alignparadox.datasets.records import PromptSet
from alignparadox.datasets.registry import load_prompt_set
from alignparadox.errors import UserError
from alignparadox.geometry.recipes import mean_norm

__all__ = ["mean_norm", "sample"]


def sample(prompt_set: str, n: int, seed: int, *, harmful: bool | None,
           stance: bool | None = None) -> PromptSet:
    """Seeded sample of up to n records of a prompt set, by harmfulness and value axis."""
    if n < 1:
        raise UserError(f"the number of prompts per group must be at least 1, got {n}")
    full = load_prompt_set(prompt_set)
    records = [r for r in full
               if (harmful is None or r.harmful == harmful)
               and (stance is None or (r.category == VALUE_CATEGORY) == stance)]
    if not records:
        raise UserError(f"prompt set {prompt_set} has no such requests")
    return PromptSet(f"{full.name}[selected]", tuple(records)).sample(min(n, len(records)), seed)
