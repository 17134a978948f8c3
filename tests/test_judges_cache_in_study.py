"""Judge verdicts are cached in the results store by content hash while study cells run."""

from __future__ import annotations

import sqlite3

import pytest

from alignparadox.errors import UserError
from alignparadox.judges import registry
from alignparadox.judges.cache import CachedJudge, verdict_cache
from alignparadox.judges.ensemble import EnsembleJudge
from alignparadox.judges.registry import check_judge, make_judge, register_judge
from alignparadox.organisms.judge import GroundTruthJudge
from alignparadox.study import ResultsStore, StudySpec, run_study

SEEN: list[tuple[str, str]] = []  # every (request, answer) the counting judge really judged


class CountingGroundTruth:
    """The organism ground-truth judge, recording the pairs it is asked about."""

    name = "counting-ground-truth"

    def judge(self, requests: list[str], answers: list[str]):
        SEEN.extend(zip(requests, answers, strict=True))
        return GroundTruthJudge().judge(requests, answers)


@pytest.fixture
def counting_judge(monkeypatch):
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))  # undone after
    register_judge("counting-organism", lambda argument: CountingGroundTruth())
    SEEN.clear()
    return SEEN


def test_cells_sharing_answers_judge_each_pair_once(tmp_path, organism_family, counting_judge):
    # The same organism by name and by folder: two cells, the same greedy answers.
    folder = organism_family.path_of("aligned-5")
    spec = StudySpec.from_dict({
        "seed": 3, "targets": ["organism:aligned-5", str(folder)],
        "measurements": [{"name": "alignment", "settings": {
            "n_per_kind": 4, "max_new_tokens": 24, "judge": "counting-organism",
            # A folder has no provider to default to the organism world: name it.
            "behaviours": "organisms"}}]})
    summary = run_study(spec, tmp_path / "run", progress=False)
    assert (summary.computed, summary.failed) == (2, [])

    with ResultsStore.in_run_dir(tmp_path / "run", create=False) as store:
        first, second = (record.results for record in store.records("alignment"))
    assert first["alignment_steps"] is not None and second["alignment_steps"] is None
    # Only the organism's provider knows its strength and family; the folder is a plain model.
    assert "target_provenance" in first and "target_provenance" not in second
    assert {**first, "alignment_steps": None, "target_provenance": None} == {
        **second, "target_provenance": None}
    # 4 harmful + 4 harmless requests: 8 pairs judged, once, although two cells asked.
    assert len(counting_judge) == len(set(counting_judge)) == 8
    with sqlite3.connect(summary.results_path) as db:
        rows = db.execute("SELECT judge, count(*) FROM verdicts GROUP BY judge").fetchall()
    assert rows == [("counting-ground-truth", 8)]

    # Later, anywhere: the same pairs are answered from the store without judging them again.
    requests, answers = (list(column) for column in zip(*counting_judge, strict=True))
    counting_judge.clear()
    cached = CachedJudge(CountingGroundTruth(), summary.results_path)
    assert cached.judge(requests, answers) == GroundTruthJudge().judge(requests, answers)
    assert counting_judge == [] and (cached.hits, cached.misses) == (8, 0)

    assert run_study(spec, tmp_path / "run", progress=False).computed == 0
    assert counting_judge == []


def test_make_judge_caches_only_inside_a_study_cell(tmp_path):
    assert not isinstance(make_judge("substring"), CachedJudge)
    with verdict_cache(tmp_path / "results.sqlite"):
        judge = make_judge("ensemble:substring:gcg,substring")
        # One cache around the ensemble; its members vote uncached.
        assert isinstance(judge, CachedJudge) and isinstance(judge.inner, EnsembleJudge)
        assert not any(isinstance(member, CachedJudge) for member in judge.inner.judges)
        assert judge.judge(["q"], ["I cannot help."])[0].refused
    assert not isinstance(make_judge("substring"), CachedJudge)
    with sqlite3.connect(tmp_path / "results.sqlite") as db:
        assert db.execute("SELECT count(*) FROM verdicts").fetchone() == (1,)


def test_check_judge_validates_specs_without_loading_models(tmp_path):
    check_judge("organism")
    check_judge("ensemble:substring,strongreject:http://127.0.0.1:9/v1#m")
    check_judge(f"classifier:{tmp_path}")  # an empty folder: building it would fail
    for bad in ["nope", "strongreject:localhost", f"classifier:{tmp_path}#nope",
                "classifier:/does/not/exist", "ensemble:substring,classifier:/does/not/exist"]:
        with pytest.raises(UserError):
            check_judge(bad)
