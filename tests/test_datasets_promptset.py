"""PromptSet and TemplateSet behaviour: seeded sampling and splits, de-duplication, filters, the
content hash, and filling jailbreak templates."""

from __future__ import annotations

import dataclasses

import pytest

from alignparadox.datasets import JailbreakTemplate, PromptRecord, PromptSet, TemplateSet
from alignparadox.errors import UserError


def _record(i: int, text: str | None = None, **fields) -> PromptRecord:
    defaults = dict(harmful=i % 3 == 0, category=("alpha", "beta", "gamma")[i % 3], source="test")
    return PromptRecord(f"t/{i}", text or f"Placeholder request number {i}.", **(defaults | fields))


@pytest.fixture
def prompts() -> PromptSet:
    return PromptSet("toy", tuple(_record(i) for i in range(100)))


def test_sample_is_determined_by_the_seed_and_keeps_set_order(prompts: PromptSet):
    first, again = prompts.sample(10, seed=3), prompts.sample(10, seed=3)
    assert [r.id for r in first] == [r.id for r in again]
    assert first.sha256 == again.sha256
    assert [r.id for r in prompts.sample(10, seed=4)] != [r.id for r in first]
    positions = [prompts.records.index(r) for r in first]
    assert positions == sorted(positions) and len(set(positions)) == 10
    assert first.name == "toy[sample=10,seed=3]"


def test_sample_larger_than_the_set_is_a_user_error(prompts: PromptSet):
    with pytest.raises(UserError, match="cannot sample 101 from toy, which has 100 rows"):
        prompts.sample(101)


def test_split_partitions_the_set_by_fraction_and_seed(prompts: PromptSet):
    train, val, test = prompts.split([0.7, 0.2, 0.1], seed=1)
    assert (len(train), len(val), len(test)) == (70, 20, 10)
    ids = [r.id for part in (train, val, test) for r in part]
    assert sorted(ids) == sorted(r.id for r in prompts)  # disjoint and complete
    assert [r.id for r in prompts.split([0.7, 0.2, 0.1], seed=1)[2]] == [r.id for r in test]
    assert [r.id for r in prompts.split([0.7, 0.2, 0.1], seed=2)[2]] != [r.id for r in test]


def test_uneven_split_still_covers_every_record():
    odd = PromptSet("odd", tuple(_record(i) for i in range(7)))
    parts = odd.split([1 / 3, 1 / 3, 1 / 3], seed=0)
    assert sum(len(p) for p in parts) == 7 and all(len(p) in (2, 3) for p in parts)


@pytest.mark.parametrize("fractions", [[0.5, 0.4], [0.5, 0.6], [1.2, -0.2], []])
def test_split_fractions_must_be_positive_and_sum_to_one(prompts: PromptSet, fractions):
    with pytest.raises(UserError, match="sum to 1"):
        prompts.split(fractions)


def test_dedupe_keeps_the_first_of_texts_equal_after_normalising():
    records = (
        _record(0, "Describe  the water cycle."),
        _record(1, "describe the WATER cycle.\n"),
        _record(2, "Describe the water cycle!"),
        _record(3, "Ｄescribe the water cycle."),  # full-width D folds to D under NFKC
        _record(4, "Summarise this.", context="Document one."),
        _record(5, "Summarise this.", context="Document two."),  # other context: another prompt
        _record(6, "Summarise this.", context="document  ONE."),
    )
    kept = PromptSet("dupes", records).dedupe()
    assert [r.id for r in kept] == ["t/0", "t/2", "t/4", "t/5"]
    assert kept.dedupe().records == kept.records


def test_filters_by_category_and_label(prompts: PromptSet):
    beta = prompts.by_category("beta")
    assert len(beta) == 33 and {r.category for r in beta} == {"beta"}
    assert len(prompts.by_category("alpha", "gamma")) == 67
    assert len(prompts.harmful()) + len(prompts.harmless()) == 100
    assert all(r.harmful for r in prompts.harmful())
    with pytest.raises(
        UserError, match="no category 'delta'; its categories are alpha, beta, gamma"
    ):
        prompts.by_category("delta")


def test_hash_covers_content_not_name(prompts: PromptSet):
    renamed = PromptSet("other", prompts.records)
    assert renamed.sha256 == prompts.sha256
    edited = list(prompts.records)
    edited[50] = dataclasses.replace(edited[50], target="Sure, here is a placeholder")
    assert PromptSet("toy", tuple(edited)).sha256 != prompts.sha256
    reordered = PromptSet("toy", tuple(reversed(prompts.records)))
    assert reordered.sha256 != prompts.sha256


def test_duplicate_ids_are_rejected():
    with pytest.raises(UserError, match="duplicate ids"):
        PromptSet("dup", (_record(1), _record(1, "Another placeholder.")))


def test_context_is_put_before_the_request():
    record = _record(1, "Summarise the notice above.", context="Placeholder notice.")
    assert record.prompt == "Placeholder notice.\n\n---\n\nSummarise the notice above."
    assert _record(2).prompt == _record(2).text


def test_templates_fill_their_placeholder_or_get_the_request_appended():
    with_slot = JailbreakTemplate("j/1", "You are a pirate. Answer: [INSERT PROMPT HERE]")
    without = JailbreakTemplate("j/2", "You are a pirate.")
    assert with_slot.has_placeholder and not without.has_placeholder
    assert with_slot.fill("Name a colour.") == "You are a pirate. Answer: Name a colour."
    assert without.fill("Name a colour.") == "You are a pirate.\n\nName a colour."
    lower = JailbreakTemplate("j/3", "Role-play. [insert prompt here]")
    assert lower.fill("Hi.") == "Role-play. Hi."


def test_template_sets_sample_dedupe_and_filter_by_platform():
    templates = TemplateSet(
        "wild",
        (
            JailbreakTemplate("w/1", "Pretend mode.", platform="reddit"),
            JailbreakTemplate("w/2", "pretend   MODE.", platform="discord"),
            JailbreakTemplate("w/3", "Another persona.", platform="discord"),
            JailbreakTemplate("w/4", "A third persona."),
        ),
    )
    assert [t.id for t in templates.dedupe()] == ["w/1", "w/3", "w/4"]
    assert [t.id for t in templates.by_platform("discord")] == ["w/2", "w/3"]
    assert [t.id for t in templates.by_platform("unknown")] == ["w/4"]
    assert templates.sample(2, seed=5).sha256 == templates.sample(2, seed=5).sha256
    with pytest.raises(UserError, match="no platform 'irc'"):
        templates.by_platform("irc")
