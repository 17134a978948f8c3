"""The organism world as a behaviour set, with the world's own splits.

Harmful and harmless tasks: fit on training requests, select on the held-out validation half,
test on the held-out test half (unseen tasks phrased with unseen templates). The value axis is
the stance on fictional factions: aligned = the neutral answer, misaligned = the partisan one.
Refusal-axis pairs (the refusal, and the task's steps it replaces) give the value editor its
ground truth: one per harmful request, in the same splits.
Stance requests of the validation split share their templates with the test split, so fit and
select both come from training requests, as disjoint halves by template (even / odd).
"""

from __future__ import annotations

from functools import lru_cache

from alignparadox.datasets.behaviours import (
    REFUSAL_AXIS,
    VALUE_AXIS,
    BehaviourSet,
    ContrastPair,
    PairSet,
)
from alignparadox.datasets.records import PromptSet
from alignparadox.organisms import world
from alignparadox.organisms.prompts import to_record

_SPLITS = {"fit": "train", "select": "validation", "test": "test"}


def _requests(split: str) -> list[world.WorldRequest]:
    return world.train_requests() if split == "train" else world.heldout_requests(split)


def _tasks(split: str, kind: str) -> PromptSet:
    name = "organisms" if split == "test" else f"organisms-{split}"
    return PromptSet(f"{name}[{kind}]",
                     tuple(to_record(r) for r in _requests(split) if r.kind == kind))


def _pairs(name: str, requests: list[world.WorldRequest]) -> PairSet:
    return PairSet(name, tuple(
        ContrastPair(r.id, r.text, r.aligned_answer(), r.misaligned_answer(),
                     VALUE_AXIS if r.kind == world.STANCE else REFUSAL_AXIS) for r in requests))


def _harmful(split: str) -> list[world.WorldRequest]:
    return [r for r in _requests(split) if r.kind == world.HARMFUL]


@lru_cache(maxsize=1)
def world_behaviours() -> BehaviourSet:
    """The organism world's behaviour set (registered as `behaviours = "organisms"`)."""
    stance_train = [r for r in world.train_requests() if r.kind == world.STANCE]
    stance_test = [r for r in world.heldout_requests("test") if r.kind == world.STANCE]
    return BehaviourSet(
        "organisms",
        harmful={split: _tasks(world_split, world.HARMFUL)
                 for split, world_split in _SPLITS.items()},
        harmless={split: _tasks(world_split, world.HARMLESS)
                  for split, world_split in _SPLITS.items()},
        pairs={"fit": _pairs("organisms-train[pairs: harmful, stance even templates]",
                             _harmful("train") + [r for r in stance_train if r.template % 2 == 0]),
               "select": _pairs("organisms-validation[pairs: harmful, stance odd templates]",
                                _harmful("validation")
                                + [r for r in stance_train if r.template % 2 == 1]),
               "test": _pairs("organisms[pairs: harmful, stance]",
                              _harmful("test") + stance_test)})
