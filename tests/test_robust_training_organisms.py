"""Robust organism families: built from the standard family's base with its checkpoint rule,
cached, and addressable as `organism:METHOD/MEMBER` targets."""

from __future__ import annotations

import pytest

from alignparadox.organisms.robust import (
    METHODS,
    build_robust_family,
    family_key,
    rerouting_cosines,
)
from alignparadox.targets import describe_target, open_target

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_the_cache_key_follows_the_recipe_config(monkeypatch):
    import alignparadox.organisms.robust as robust

    keys = {method: family_key(method) for method in METHODS}
    assert len(set(keys.values())) == len(METHODS)
    original = robust.recipe_config

    def other(method, config=None):
        from dataclasses import replace

        return replace(original(method, config), learning_rate=1e-4)

    monkeypatch.setattr(robust, "recipe_config", other)
    assert family_key("lat") != keys["lat"]


@pytest.mark.parametrize("method", METHODS)
def test_a_robust_family_keeps_the_standard_checkpoint_rule(method, organism_family):
    family = build_robust_family(method, progress=False)  # about a minute, then cached
    members = family.manifest["members"]
    assert [m["name"] for m in members] == [m.name for m in organism_family.members]
    steps = [m["alignment_steps"] for m in members]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    for member, level in zip(members[1:], organism_family.config.refusal_levels, strict=True):
        # rr puts circuit breakers on the standard member saved at that level
        refusal = member["start_validation_refusal" if method == "rr" else "validation_refusal"]
        assert refusal >= level or member is members[-1]
    if method == "rr":
        assert steps == [m.alignment_steps for m in organism_family.members]
        assert all(m["rr_steps"] > 0 for m in members[1:])
    assert family.path_of("base") == organism_family.path_of("base")
    target = open_target(f"organism:{method}/aligned-3")
    assert target.name == f"organism:{method}/aligned-3"
    description = describe_target(f"organism:{method}/aligned-3")
    assert description["defense"] == method
    assert description["alignment_strength"] == members[3]["alignment_steps"]


def test_the_rr_family_reroutes_harmful_states_and_keeps_harmless_ones(organism_family):
    """Held-out (test split) text, at the rerouted layers, against the standard member each rr
    member started from: harmful completions' states turned away, harmless ones kept (margins
    around the measured figures: harmful −0.12 to 0.01, harmless 0.955 to 0.982)."""
    measured = rerouting_cosines("rr", "test", limit=32)
    assert measured["layers"] == [1, 2]
    for name, member in measured["members"].items():
        for layer in measured["layers"]:
            assert member["standard"]["harmful"][layer] < 0.9, (name, layer, member)
            assert member["standard"]["harmless"][layer] > 0.9, (name, layer, member)
