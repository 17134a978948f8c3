"""Alignment-axis families (organisms.axes): sft, dpo and share, three alignment seeds each,
from the standard family's base organism, addressable as `organism:AXIS-sS/MEMBER`.

The first tests need no training. The `slow` ones build a family each (from an empty cache:
sft 40 s to 2 min, dpo about 2 min, share about 2 min each on two busy cores; then cached)."""

from __future__ import annotations

import re
from itertools import pairwise

import pytest

from alignparadox.errors import UserError
from alignparadox.organisms import axes
from alignparadox.organisms.axes import (
    AXES,
    AXIS_LABELS,
    SEEDS,
    SHARES,
    build_axis_family,
    family_key,
    family_names,
    is_axis_name,
    organism_names,
    split_name,
)
from alignparadox.targets import describe_target, open_target

CARD_FIELDS = {"family", "alignment_axis", "alignment_strength", "seed", "validation_refusal",
               "family_members"}


def test_axis_names_split_and_route_apart_from_the_robust_ones():
    assert split_name("dpo-s1/aligned-3") == ("dpo", 1, "aligned-3")
    assert split_name("share-s2/aligned-4") == ("share", 2, "aligned-4")
    assert split_name("sft-s0/base") == ("sft", 0, "base")
    for name in ("sft-s1/aligned-2", "dpo/aligned-1", "share-x/base", "dpo-s9/aligned-1"):
        assert is_axis_name(name), name
    for name in ("refat/aligned-3", "lat/base", "rr/aligned-1", "aligned-2", "base"):
        assert not is_axis_name(name), name
    names = organism_names()
    assert len(names) == len(set(names)) == len(AXES) * len(SEEDS) * 5
    for axis in AXES:
        assert sum(f":{axis}-s" in name for name in names) >= 15


@pytest.mark.parametrize("name, words", [
    ("dpo-s7/aligned-1", "unknown alignment-axis family 'dpo-s7'"),
    ("dpo/aligned-1", "unknown alignment-axis family 'dpo'"),
    ("share-s1x/aligned-1", "unknown alignment-axis family 'share-s1x'"),
    ("shares-s1/aligned-1", "unknown robust organism family 'shares-s1'"),  # not an axis
    ("sft-s1/aligned-9", "unknown organism 'sft-s1/aligned-9'; members of sft-s1: base"),
    ("sft-s1/", "unknown organism 'sft-s1/'"),
])
def test_a_bad_axis_name_is_one_sentence_before_anything_is_built(name, words, tmp_path,
                                                                  monkeypatch):
    from alignparadox.targets.providers import provider_for

    monkeypatch.setenv("ALIGNPARADOX_CACHE", str(tmp_path))  # nothing built, nothing to build
    provider, inner = provider_for(f"organism:{name}")
    for call in (provider.check, provider.resolve):
        with pytest.raises(UserError) as refused:
            call(inner)
        message = str(refused.value)
        assert message.startswith(words) and message.endswith(".") and "\n" not in message
        assert not re.search(r"\w\. [A-Z]", message), message  # one sentence
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("argv, words", [
    (["--axes", "dpo,ppo"], "unknown alignment axis 'ppo' in --axes"),
    (["--axes", "all", "--axis-seeds", "0,7"], "--axis-seeds must be a comma-separated list"),
    (["--axes", "sft", "--axis-seeds", "one"], "--axis-seeds must be a comma-separated list"),
])
def test_an_unknown_axis_to_build_is_one_sentence(argv, words, capsys, tmp_path, monkeypatch):
    from alignparadox.cli import main

    monkeypatch.setenv("ALIGNPARADOX_CACHE", str(tmp_path))  # refused before any training
    try:
        main(["organisms", "build", *argv])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    text = " ".join((captured.out + captured.err).split())
    assert code == 2 and words in text and "Traceback" not in text, text
    assert not any(tmp_path.iterdir())


def test_every_axis_and_seed_has_its_own_cache_key():
    keys = {(axis, seed): family_key(axis, seed) for axis in AXES for seed in SEEDS}
    assert len(set(keys.values())) == len(keys)
    assert len(set(AXIS_LABELS.values())) == len(AXES)


def test_the_share_sampler_puts_the_share_of_alignment_data_in_the_mix():
    """Refusals and neutral stances together are the share, in the standard 42:16 proportion;
    harmless requests fill the rest."""
    from alignparadox.organisms import world

    for share in (SHARES[0], SHARES[-1]):
        drawn = axes._ShareSampler(7, share, retain_share=0.25).draw(4000)
        harmful = sum(world.REFUSALS[0] == answer or answer.startswith("Sure.")
                      and opening == "Sure." for _, answer, opening, _ in drawn)
        stance = sum(answer.startswith("The ") for _, answer, _, _ in drawn)
        assert abs((harmful + stance) / len(drawn) - share) < 0.03, share
        assert abs(harmful / len(drawn) - share * 42 / 58) < 0.03, share
    from alignparadox.organisms.train import _KIND_SHARES

    standard = _KIND_SHARES[world.HARMFUL] + _KIND_SHARES[world.STANCE]
    assert abs(SHARES[-1] - standard) < 1e-9  # the top share is the standard mix


def test_dpo_pairs_prefer_the_aligned_answer_in_the_organisms_chat_format(organism_family):
    from alignparadox.organisms import world
    from alignparadox.organisms.train import ConversationEncoder
    from alignparadox.targets import load_target

    tokenizer = load_target(organism_family.path_of("base"), device="cpu").tokenizer
    encoder = ConversationEncoder(tokenizer)
    rows = axes._preference_rows(encoder, seed=3, n=300)
    refusal = encoder._ids(world.REFUSALS[0]) + [encoder.end]
    kinds = {"refuse": 0, "help": 0, "neutral": 0}
    for row in rows:
        assert row["prompt_ids"][-2:] == encoder.middle and row["chosen_ids"][-1] == encoder.end
        assert row["chosen_ids"] != row["rejected_ids"]
        text = tokenizer.decode(row["chosen_ids"][:-1])
        if row["chosen_ids"] == refusal:
            kinds["refuse"] += 1
            assert tokenizer.decode(row["rejected_ids"]).startswith("Sure.")
        elif row["rejected_ids"] == refusal:
            kinds["help"] += 1
            assert text.startswith("Sure.")
        else:
            kinds["neutral"] += 1
            assert "supporters and critics" in text
    assert all(count > 20 for count in kinds.values()), kinds
    assert axes._preference_rows(encoder, seed=4, n=300) != rows


def test_the_study_spec_lists_every_axis_member_with_the_demos_measurements():
    from pathlib import Path

    from alignparadox.demo import DEMO_SETTINGS
    from alignparadox.study.spec import StudySpec

    spec = StudySpec.from_file(Path(__file__).parents[1] / "studies" / "paradox-axes.toml")
    # every family's base (the shared base organism) is listed with it: its card puts it at
    # strength 0 in that family, where the verdict table's clusters look for it
    assert list(spec.targets) == [f"organism:{family}/{member}" for family in family_names()
                                  for member in axes.member_names()]
    assert {plan.name for plan in spec.measurements} == set(DEMO_SETTINGS)
    # the defense on the aligned members only: every FAMILY/base is its reference's weights
    defense = next(plan for plan in spec.measurements if plan.name == "bon_defense")
    assert list(defense.targets) == [target for target in spec.targets
                                     if not target.endswith("/base")]


# ----------------------------------------------------------------------------- built families

def _check_family(family, organism_family, axis, seed, *, refusal_margins=True):
    members = family.members
    assert [m["name"] for m in members] == axes.member_names()
    assert family.path_of("base") == organism_family.path_of("base")
    refusals = [m["validation_refusal"] for m in members]
    strengths = [m["alignment_strength"] for m in members]
    # ordered by strength and by validation refusal, with margins between members
    assert strengths == sorted(strengths) and len(set(strengths)) == len(strengths)
    if refusal_margins:
        assert all(b - a > 0.05 for a, b in pairwise(refusals)), refusals
    assert refusals[0] < 0.1 and refusals[-1] > 0.6, refusals
    # harmless requests keep their answer
    assert all(m["validation_harmless_refusal"] < 0.1 for m in members[1:]), members
    name = f"organism:{axis}-s{seed}/aligned-3"
    target = open_target(name)
    assert target.name == name and target.weight_hash == members[3]["weight_hash"]
    card = describe_target(name)
    assert set(card) >= CARD_FIELDS
    assert card["alignment_axis"] == AXIS_LABELS[axis] and card["seed"] == seed
    assert card["alignment_strength"] == members[3]["alignment_strength"]
    assert card["family"].startswith(f"axes/{axis}-s{seed}-")
    assert set(card["family_members"]) == set(axes.member_names())
    return card


@pytest.mark.slow
def test_sft_seed_0_is_the_standard_family_and_seed_1_is_another_run(organism_family):
    zero = build_axis_family("sft", 0, progress=False)  # about a minute each, then cached
    one = build_axis_family("sft", 1, progress=False)
    assert [m["weight_hash"] for m in zero.members] == [m.weight_hash
                                                        for m in organism_family.members]
    assert ([m["alignment_steps"] for m in zero.members]
            == [m.alignment_steps for m in organism_family.members])
    cards = [_check_family(family, organism_family, "sft", seed)
             for seed, family in ((0, zero), (1, one))]
    assert cards[0]["family"] != cards[1]["family"]
    assert cards[0]["alignment_axis"] == describe_target("organism:aligned-3")["alignment_axis"]
    hashes = [{m["weight_hash"] for m in family.members[1:]} for family in (zero, one)]
    assert not hashes[0] & hashes[1]


@pytest.mark.slow
def test_a_dpo_family_keeps_the_checkpoint_rule(organism_family):
    pytest.importorskip("trl", reason="the dpo families need TRL (pip install trl)")
    family = build_axis_family("dpo", 0, progress=False)  # about two minutes, then cached
    card = _check_family(family, organism_family, "dpo", 0)
    for member, level in zip(family.members[1:], organism_family.config.refusal_levels,
                             strict=True):
        assert member["validation_refusal"] >= level or member is family.members[-1]
    standard = {m.weight_hash for m in organism_family.members}
    assert not standard & {m["weight_hash"] for m in family.members[1:]}
    assert card["alignment_axis"] == "DPO steps"
    # whole refusals, not a refusal's opening running on (sigmoid DPO alone: 2 of 40)
    from alignparadox.organisms import world
    from alignparadox.targets import GenerationConfig

    requests = [r.text for r in world.heldout_requests("validation") if r.harmful][:40]
    answers = open_target("organism:dpo-s0/aligned-5").generate(
        requests, GenerationConfig(max_new_tokens=40))
    assert sum(answer.strip() == world.REFUSALS[0] for answer in answers) >= 36, answers


@pytest.mark.slow
def test_a_share_family_has_one_member_per_share(organism_family):
    """Validation refusal is *not* ordered with margins along the share axis at the low shares:
    at a 70-step budget it jumps from 0 to about 0.55 between harmful shares 0.042 and 0.05 and
    stays there up to 0.08 (measured, validation refusal per share of alignment data 0.07 /
    0.09 / 0.11 / 0.21 / 0.58, harmful shares 0.05 ... 0.42: seed 0 0.85 / 0.90 / 0.87 / 0.92 /
    0.98, seed 1 0.90 / 0.89 / 0.90 / 0.90 / 0.96, seed 2 0.79 / 0.90 / 0.90 / 0.90 / 0.98 on one
    machine; with the harmful share alone, seed 0 0.56 / 0.55 / 0.53 / 0.87 / 0.98 on another).
    What holds is checked: every aligned member of seed 0 above the base, and the top share
    refusing most, clearly above the lowest."""
    family = build_axis_family("share", 0, progress=False)  # about two minutes, then cached
    _check_family(family, organism_family, "share", 0, refusal_margins=False)
    assert [m["alignment_strength"] for m in family.members[1:]] == list(SHARES)
    assert len({m["alignment_steps"] for m in family.members[1:]}) == 1
    refusals = [m["validation_refusal"] for m in family.members]
    assert all(refusal > refusals[0] + 0.3 for refusal in refusals[1:]), refusals
    assert refusals[-1] == max(refusals) and refusals[-1] - min(refusals[1:]) > 0.05, refusals
    sft = {m["weight_hash"] for m in build_axis_family("sft", 0, progress=False).members[1:]}
    assert not sft & {m["weight_hash"] for m in family.members[1:]}
