"""The organism family as a target provider: `organism:NAME` for the targets box, found through
the `alignparadox.target_providers` entry point (see `alignparadox.targets.providers`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignparadox.targets.providers import TargetProvider


def _resolve(name: str) -> Path:
    from alignparadox.organisms.axes import axis_organism_path, is_axis_name
    from alignparadox.organisms.family import framed_config, framed_member, organism_path
    from alignparadox.organisms.injection import inject_organism_path, is_inject_name

    if is_inject_name(name):  # the data-task family's member, e.g. inject/aligned-3
        return inject_organism_path(name)
    if (member := framed_member(name)) is not None:  # base training saw jailbreak frames
        return organism_path(member, framed_config())
    if is_axis_name(name):  # an alignment-axis family's member, e.g. dpo-s1/aligned-3
        return axis_organism_path(name)
    if "/" in name:  # a robust family's member, e.g. lat/aligned-3 (organisms.robust)
        from alignparadox.organisms.robust import robust_organism_path

        return robust_organism_path(name)
    return organism_path(name)


def _check(name: str) -> None:
    from alignparadox.organisms.axes import is_axis_name
    from alignparadox.organisms.axes import split_name as split_axis_name
    from alignparadox.organisms.family import framed_member, require_member
    from alignparadox.organisms.injection import is_inject_name
    from alignparadox.organisms.injection import split_name as split_inject_name

    if is_inject_name(name):
        split_inject_name(name)
        return
    if framed_member(name) is not None:
        return
    if is_axis_name(name):
        split_axis_name(name)
        return
    if "/" in name:
        from alignparadox.organisms.robust import split_name

        split_name(name)
        return
    require_member(name)


def _describe(name: str) -> dict[str, Any]:
    """The member's alignment strength and the figures of the family it comes from, so that two
    reports (two machines, two builds) can be compared member by member. The members' weight
    hashes tell a report which stored targets are members of the family (a robust family's
    `base` is the standard family's base organism, stored once as `organism:base`)."""
    from alignparadox.organisms.axes import describe as describe_axis_member
    from alignparadox.organisms.axes import is_axis_name
    from alignparadox.organisms.injection import describe as describe_inject_member
    from alignparadox.organisms.injection import is_inject_name

    if is_inject_name(name):  # its card carries the members' weight hashes too
        return describe_inject_member(name)
    if is_axis_name(name):  # the card already carries the members' weight hashes
        return describe_axis_member(name)
    from alignparadox.organisms.family import framed_config, framed_member, load_family

    config = None
    if (member_name := framed_member(name)) is not None:
        config = framed_config()
    elif "/" in name:
        return _describe_robust(name)
    family = load_family(config)
    member = family.member(member_name or name)
    return {
        "provider": "organism",
        "family": family.path.name,
        "member": name,
        "alignment_strength": member.alignment_steps,
        "alignment_axis": "refusal fine-tuning steps",
        "validation_refusal": member.validation_refusal,
        "family_members": {m.name: {"steps": m.alignment_steps,
                                    "validation_refusal": round(m.validation_refusal, 4),
                                    "weight_hash": m.weight_hash}
                           for m in family.members},
    }


def _describe_robust(name: str) -> dict[str, Any]:
    """`organisms.robust.describe` with the member's name and the members' weight hashes added
    here (not in that module: its source is part of the robust families' cache key)."""
    from alignparadox.organisms.robust import describe, load_robust_family, split_name

    card = describe(name)
    method, member = split_name(name)
    hashes = {m["name"]: m["weight_hash"] for m in load_robust_family(method).manifest["members"]}
    members = {key: {**figures, "weight_hash": hashes.get(key)}
               for key, figures in card["family_members"].items()}
    return {**card, "member": member, "family_members": members}


def _defaults(name: str) -> dict[str, Any]:
    """Organisms run on their own world by default: its requests and stance pairs, its exact
    judge, a small value editor on their tokenizer, and the world's data tasks and injections
    (organisms.injection) for the injection attack and defenses."""
    return {"behaviours": "organisms", "judge": "organism", "editor": "small:organism:base",
            "task_set": "organisms-tasks", "injection_set": "organisms-injections"}


PROVIDER = TargetProvider(scheme="organism", resolve=_resolve, check=_check, describe=_describe,
                          default_settings=_defaults)


def _world_prompts(split: str):
    def load(path: Path | None):
        from alignparadox.organisms.prompts import organism_prompt_set

        return organism_prompt_set(split)

    return load


def _world_tasks(split: str):
    def load():
        from alignparadox.organisms.injection import task_set

        return task_set(split)

    return load


def _world_jailbreaks(path: Path | None):
    from alignparadox.organisms.jailbreaks import world_jailbreaks

    return world_jailbreaks()


def _world_injections():
    from alignparadox.organisms.injection import injection_set

    return injection_set()


def register_extension() -> None:
    """What the organisms add to the toolkit's registries by name (entry point group
    `alignparadox.extensions`): their world's prompt sets and behaviour set, and its exact
    judge, its jailbreak templates (organisms.jailbreaks), and its data tasks and injections
    (organisms.injection)."""
    from alignparadox.datasets.behaviours import register_behaviour_set
    from alignparadox.datasets.registry import register_prompt_set
    from alignparadox.datasets.tasks import register_injection_set, register_task_set
    from alignparadox.judges.registry import register_judge

    for split, description in [
        ("test", "organism world: held-out tasks and templates (generated, fictional)"),
        ("validation", "organism world: held-out validation split (generated, fictional)"),
        ("train", "organism world: training requests (generated, fictional)"),
    ]:
        register_prompt_set("organisms" if split == "test" else f"organisms-{split}",
                            _world_prompts(split), licence="Apache-2.0 (generated)",
                            description=description)
    register_prompt_set("organisms-jailbreaks", _world_jailbreaks,
                        licence="Apache-2.0 (generated)",
                        description="organism world: jailbreak templates in its vocabulary, "
                                    "the in-the-wild families (generated, fictional)")
    register_task_set("organisms-tasks", _world_tasks("test"))
    register_task_set("organisms-tasks-validation", _world_tasks("validation"))
    register_injection_set("organisms-injections", _world_injections)
    register_behaviour_set("organisms", "alignparadox.organisms.behaviours:world_behaviours")
    register_judge("organism", "alignparadox.organisms.judge:make_ground_truth_judge")
