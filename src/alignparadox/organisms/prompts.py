"""The organism world as a prompt set, in the same record type as the public benchmarks."""

from __future__ import annotations

from alignparadox.datasets.records import PromptRecord, PromptSet
from alignparadox.organisms import world


def to_record(request: world.WorldRequest) -> PromptRecord:
    category = request.kind if request.kind == world.STANCE else f"{request.kind}/{request.action}"
    return PromptRecord(id=request.id, text=request.text, harmful=request.harmful,
                        category=category, source="organisms")


def organism_prompt_set(split: str = "test") -> PromptSet:
    """`train`: training requests; `validation` / `test`: held-out tasks and templates."""
    requests = world.train_requests() if split == "train" else world.heldout_requests(split)
    name = "organisms" if split == "test" else f"organisms-{split}"
    return PromptSet(name, tuple(to_record(r) for r in requests))

