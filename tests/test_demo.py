"""The demo's study: which measurements run on which organisms."""

from __future__ import annotations


def test_the_demo_defends_its_most_aligned_member_and_measures_every_member_otherwise(
        organism_family):
    from alignparadox.demo import demo_spec

    spec = demo_spec()
    members = [f"organism:{member.name}" for member in organism_family.members]
    aligned = [f"organism:{member.name}" for member in organism_family.members
               if member.alignment_steps > 0]
    plans = {plan.name: plan for plan in spec.measurements}
    assert list(spec.targets) == members
    assert plans["bon_defense"].targets == (aligned[-1],)
    assert plans["bon_defense"].settings["reference"] == "organism:base"
    assert all(plan.targets is None for name, plan in plans.items() if name != "bon_defense")
