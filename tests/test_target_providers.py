"""Target providers: `organism:NAME` reaches the targets box through an entry point, and what the
provider knows of a target (family, steps, validation refusal) lands in every report."""

from __future__ import annotations

import pytest

from alignparadox.errors import UserError
from alignparadox.report import write_report
from alignparadox.study import (
    CellResult,
    Measurement,
    ResultsStore,
    StudySpec,
    register_measurement,
    run_study,
)
from alignparadox.targets.providers import (
    alignment_strength,
    describe_target,
    provider_for,
    providers,
)


@register_measurement
class TargetEcho(Measurement):
    """Records only which target it ran on: the provenance is added by the runner."""

    name = "target_echo"
    defaults = {}

    def run(self, cell, context):
        return CellResult(results={"target": cell.target}, target_id=cell.target,
                          weight_hash=None)


def test_the_organism_provider_is_found_through_its_entry_point(tmp_path):
    assert "organism" in providers()
    provider, name = provider_for("organism:aligned-2")
    assert (provider.scheme, name) == ("organism", "aligned-2")
    # Folders, Hub ids and endpoints belong to no provider, even with a colon in them.
    folder = tmp_path / "organism:base"
    folder.mkdir()
    for spec in (str(folder), "meta-llama/Llama-3.1-8B-Instruct", "http://127.0.0.1:9/v1#m",
                 "unknownscheme:thing"):
        assert provider_for(spec) is None
    with pytest.raises(UserError, match="names no organism"):
        provider_for("organism:")
    with pytest.raises(UserError, match="unknown organism 'typo'"):
        provider.check("typo")
    assert describe_target(str(folder)) == {} and alignment_strength(str(folder)) is None


def test_reports_carry_each_family_members_steps_and_validation_refusal(organism_family,
                                                                          tmp_path):
    spec = StudySpec.from_dict({"name": "echo", "targets": ["organism:base", "organism:aligned-3"],
                                "measurements": [{"name": "target_echo"}]})
    run_study(spec, tmp_path / "run", progress=False)
    with ResultsStore.in_run_dir(tmp_path / "run", create=False) as store:
        cards = {r.target: r.results["target_provenance"] for r in store.records("target_echo")}
    member = organism_family.member("aligned-3")
    assert cards["organism:aligned-3"]["alignment_strength"] == member.alignment_steps
    assert cards["organism:aligned-3"]["validation_refusal"] == member.validation_refusal
    assert cards["organism:base"]["family"] == organism_family.path.name
    assert alignment_strength("organism:aligned-3") == member.alignment_steps

    html = write_report(tmp_path / "run").read_text()
    assert "Target provenance" in html and f"Family {organism_family.path.name}" in html
    for every in organism_family.members:  # the whole family as built, not only the targets
        assert f"<td>{every.name}</td><td>{every.alignment_steps}</td>" in html
