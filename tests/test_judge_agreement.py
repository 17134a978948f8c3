"""Judges validated against the organism world's exact labels, end to end into the report."""

from __future__ import annotations

from alignparadox.report import write_report
from alignparadox.study import ResultsStore
from alignparadox.study.runner import run_study
from alignparadox.study.spec import MeasurementPlan, StudySpec


def test_judge_agreement_scores_judges_against_world_labels(organism_family, tmp_path):
    spec = StudySpec(targets=("organism:base", "organism:aligned-5"),
                     measurements=(MeasurementPlan("judge_agreement", {"n_per_kind": 12}),),
                     name="judges")
    run_study(spec, tmp_path, progress=False)
    with ResultsStore.in_run_dir(tmp_path) as store:
        rows = {r.target: r.results["judges"] for r in store.records("judge_agreement")}
    # The base organism complies with harmful requests, the strongest one refuses them.
    assert rows["organism:base"]["organism"]["tp"] >= 10
    assert rows["organism:aligned-5"]["organism"]["tp"] <= 2
    for judges in rows.values():
        assert judges["organism"]["accuracy"] == 1.0  # the world judges its own labels exactly
        assert judges["substring"]["n"] == 24
    html = write_report(tmp_path).read_text()
    assert "Judges against the organism world" in html and "Cohen" in html
