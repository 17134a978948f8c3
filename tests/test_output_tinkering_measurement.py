"""The `output_tinkering` study measurement on organisms, and its report section."""

from __future__ import annotations

import torch

from alignparadox.report.writer import write_report
from alignparadox.study.runner import run_study
from alignparadox.study.spec import StudySpec
from alignparadox.study.store import ResultsStore

torch.set_num_threads(1)


def test_measurement_runs_on_organisms_and_renders(organism_family, tmp_path):
    spec = StudySpec.from_dict({
        "name": "editor", "seed": 0, "targets": ["organism:base", "organism:aligned-5"],
        "measurements": [{"name": "output_tinkering", "settings": {
            "sizes": [4], "n_eval": 4, "steps": 8, "self_pool": 16, "max_new_tokens": 64}}]})
    summary = run_study(spec, tmp_path, progress=False)
    assert summary.failed == []
    with ResultsStore.in_run_dir(tmp_path, create=False) as store:
        rows = {r.target: r.results for r in store.records("output_tinkering")}
    aligned = rows["organism:aligned-5"]
    # The aligned organism refuses held-out harmful requests, the base organism never does.
    assert aligned["aligned_heldout"]["refusal"] >= 3
    assert rows["organism:base"]["aligned_heldout"]["refusal"] == 0
    assert aligned["alignment_steps"] > rows["organism:base"]["alignment_steps"] == 0
    for source in ("ground_truth", "self"):
        result = aligned["sources"][source]
        assert [point["pairs"] for point in result["curve"]] == [4]
        assert result["success"]["refusal"]["n"] == aligned["aligned_heldout"]["refusal"]
    # Its own steered answers give pairs: the refusal-direction attack works on it.
    assert aligned["sources"]["self"]["pairs_available"]["refusal"] >= 4
    assert aligned["sources"]["self"]["attack"] is not None
    html = write_report(tmp_path).read_text()
    assert "Output tinkering: the value editor" in html and "pairs to 80% (refusal)" in html
    assert "Spearman rho" in html
