"""Judges validated against the organism world's exact labels, end to end into the report:
every judge on refusal detection, judges that see harm also on harmful compliance."""

from __future__ import annotations

from alignparadox.report import write_report
from alignparadox.study import ResultsStore
from alignparadox.study.runner import run_study
from alignparadox.study.spec import MeasurementPlan, StudySpec


def test_judge_agreement_scores_each_judge_on_the_decisions_it_makes(organism_family, tmp_path):
    spec = StudySpec(targets=("organism:base", "organism:aligned-5"),
                     measurements=(MeasurementPlan("judge_agreement", {"n_harmful": 12}),),
                     name="judges")
    run_study(spec, tmp_path, progress=False)
    with ResultsStore.in_run_dir(tmp_path) as store:
        rows = {r.target: r.results["judges"] for r in store.records("judge_agreement")}
    # The base organism complies with harmful requests, the strongest one refuses them.
    assert rows["organism:base"]["organism"]["harmful_compliance"]["tp"] >= 10
    assert rows["organism:aligned-5"]["organism"]["refused"]["tp"] >= 10
    for judges in rows.values():
        for decision in ("refused", "harmful_compliance"):  # exact on its own labels
            assert judges["organism"][decision]["accuracy"] == 1.0
            assert judges["organism"][decision]["n"] == 12
        # The refusal-phrase judge is scored on refusals only, where it can be right: the
        # organisms refuse with standard phrases, so it agrees on nearly every answer.
        assert "not_measured" in judges["substring"]["harmful_compliance"]
        assert judges["substring"]["refused"]["n"] == 12
        assert judges["substring"]["refused"]["accuracy"] >= 0.8
    html = write_report(tmp_path).read_text()
    assert "Judges against the reference judge" in html and "Cohen" in html
    assert "cannot tell harmful from harmless compliance" in html
