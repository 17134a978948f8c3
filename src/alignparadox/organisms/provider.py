"""The organism family as a target provider: `organism:NAME` for the targets box, found through
the `alignparadox.target_providers` entry point (see `alignparadox.targets.providers`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignparadox.targets.providers import TargetProvider


def _resolve(name: str) -> Path:
    from alignparadox.organisms.family import organism_path

    return organism_path(name)


def _check(name: str) -> None:
    from alignparadox.organisms.family import require_member

    require_member(name)


def _describe(name: str) -> dict[str, Any]:
    """The member's alignment strength and the figures of the family it comes from, so that two
    reports (two machines, two builds) can be compared member by member."""
    from alignparadox.organisms.family import load_family

    family = load_family()
    member = family.member(name)
    return {
        "provider": "organism",
        "family": family.path.name,
        "alignment_strength": member.alignment_steps,
        "alignment_axis": "refusal fine-tuning steps",
        "validation_refusal": member.validation_refusal,
        "family_members": {m.name: {"steps": m.alignment_steps,
                                    "validation_refusal": round(m.validation_refusal, 4)}
                           for m in family.members},
    }


def editor_tokenizer():
    """The organisms' tokenizer, for small value editors (registered as editor base
    "organism"): read from the built family, else trained (deterministically)."""
    from alignparadox.errors import UserError
    from alignparadox.organisms.family import load_family
    from alignparadox.organisms.train import OrganismConfig, build_tokenizer

    try:
        folder = load_family().path_of("base")
    except UserError:
        return build_tokenizer(OrganismConfig())
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _defaults(name: str) -> dict[str, Any]:
    """Organisms run on their own world by default: its requests and stance pairs, its exact
    judge, and a small value editor on their tokenizer."""
    return {"behaviours": "organisms", "judge": "organism", "editor": "organism"}


PROVIDER = TargetProvider(scheme="organism", resolve=_resolve, check=_check, describe=_describe,
                          default_settings=_defaults)
