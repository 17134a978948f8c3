"""Studies end to end with a real (if tiny) measurement: grid expansion, storage with
provenance, resume, failures, the cache, the CLI, and a SIGKILL in the middle of a real run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from alignparadox.errors import UserError
from alignparadox.stats import wilson
from alignparadox.study import (
    CellResult,
    Measurement,
    ResultsStore,
    StudySpec,
    content_hash,
    plan_cells,
    register_measurement,
    run_study,
)

CALLS_FILE = "COIN_CALLS_FILE"  # each run() appends its cell key here (counts computations)
SLEEP = "COIN_SLEEP"  # seconds each run() sleeps (not a setting: it must not change results)


@register_measurement
class CoinFlips(Measurement):
    """Flips a seeded biased coin n times: a rate with counts, deterministic from the cell."""

    name = "coin"
    defaults = {"p": 0.5, "n": 400, "fail": False}

    def check(self, cell):
        if not 0 <= cell.settings["p"] <= 1:
            raise UserError(f"p must be in [0, 1], got {cell.settings['p']}.")

    def run(self, cell, context):
        if os.environ.get(CALLS_FILE):
            with open(os.environ[CALLS_FILE], "a") as calls:
                calls.write(cell.key + "\n")
        time.sleep(float(os.environ.get(SLEEP, "0")))
        if cell.settings["fail"]:
            raise RuntimeError("this cell is broken on purpose")
        rng = np.random.default_rng([cell.seed, int(content_hash(cell.as_dict()), 16)])
        flips = rng.random(cell.settings["n"]) < cell.settings["p"]
        context.progress(cell.settings["n"], cell.settings["n"])
        seen = context.cache.get("coin-targets", cell.target, 0)
        context.cache.put("coin-targets", cell.target, seen + 1)
        return CellResult(
            results={"heads": wilson(int(flips.sum()), len(flips)),
                     "longest_run": int(max(len(run) for run in
                                            "".join("H" if f else "T" for f in flips).split("T")))},
            target_id=f"coin:{cell.target}", weight_hash=content_hash(cell.target),
            prompt_sets={"flips-v1": content_hash(cell.settings["n"])}, judge="exact-count",
        )


def coin_spec(**overrides) -> dict:
    spec = {"name": "coins", "seed": 7, "targets": ["a", "b"],
            "measurements": [{"name": "coin", "settings": {"n": 300},
                              "grid": {"p": [0.1, 0.5, 0.9]}}]}
    spec.update(overrides)
    return spec


@pytest.fixture
def calls(tmp_path, monkeypatch):
    path = tmp_path / "calls.log"
    monkeypatch.setenv(CALLS_FILE, str(path))
    return lambda: path.read_text().split() if path.exists() else []


def test_grid_expands_over_targets_and_settings_with_defaults():
    cells = plan_cells(StudySpec.from_dict(coin_spec()))
    assert [(cell.target, cell.settings["p"]) for cell in cells] == [
        ("a", 0.1), ("a", 0.5), ("a", 0.9), ("b", 0.1), ("b", 0.5), ("b", 0.9)]
    assert all(cell.settings == {"p": cell.settings["p"], "n": 300, "fail": False}
               for cell in cells)
    assert len({cell.key for cell in cells}) == 6
    assert cells[0].key == plan_cells(StudySpec.from_dict(coin_spec()))[0].key  # stable
    assert cells[0].key != plan_cells(StudySpec.from_dict(coin_spec(seed=8)))[0].key


def test_results_are_stored_with_provenance_and_resume_skips_finished_cells(tmp_path, calls):
    spec = StudySpec.from_dict(coin_spec())
    first = run_study(spec, tmp_path / "run", progress=True)
    assert (first.planned, first.reused, first.computed, first.failed) == (6, 0, 6, [])
    assert len(calls()) == 6

    with ResultsStore.in_run_dir(tmp_path / "run", create=False) as store:
        records = store.records("coin")
        assert len(store.cache()) == 2  # one cache entry per target, written by the cells
    assert len(records) == 6
    record = records[0]
    heads = record.results["heads"]
    assert {"k", "n", "rate", "low", "high"} <= set(heads) and heads["n"] == 300
    assert heads["low"] <= heads["rate"] <= heads["high"]
    assert (record.target_id, record.weight_hash) == ("coin:a", content_hash("a"))
    assert record.prompt_sets == {"flips-v1": content_hash(300)}
    assert record.judge == "exact-count" and record.seed == 7
    assert record.settings == {"p": 0.1, "n": 300, "fail": False}
    assert {"python", "numpy", "alignparadox", "torch", "transformers"} <= set(record.versions)
    assert record.started_at <= record.finished_at and record.wall_seconds >= 0
    rates = {r.settings["p"]: r.results["heads"]["rate"] for r in records if r.target == "a"}
    assert rates[0.1] < rates[0.5] < rates[0.9]  # the arithmetic is real

    # A larger study over the same folder computes only the new cells.
    bigger = StudySpec.from_dict(coin_spec(targets=["a", "b", "c"]))
    second = run_study(bigger, tmp_path / "run", progress=False)
    assert (second.planned, second.reused, second.computed) == (9, 6, 3)
    assert len(calls()) == 9 and len(set(calls())) == 9
    assert run_study(bigger, tmp_path / "run", progress=False).computed == 0
    assert len(calls()) == 9


def test_failed_cells_are_recorded_and_retried_but_done_cells_never_rewritten(tmp_path, calls):
    spec = coin_spec(measurements=[{"name": "coin", "grid": {"fail": [False, True]}}],
                     targets=["a"])
    summary = run_study(StudySpec.from_dict(spec), tmp_path, progress=False)
    assert summary.computed == 1 and len(summary.failed) == 1
    assert "broken on purpose" in summary.failed[0].error
    with ResultsStore.in_run_dir(tmp_path) as store:
        failed = store.records(status="failed")
        assert len(failed) == 1 and "RuntimeError" in failed[0].error
        done = store.records()[0]
        # Rewriting a finished cell is refused silently: the first result stands.
        store.record(done.cell, result=None, error="late duplicate", versions={},
                     started_at="x", finished_at="y", wall_seconds=0.0)
        assert store.records()[0].results == done.results
    again = run_study(StudySpec.from_dict(spec), tmp_path, progress=False)
    assert (again.reused, len(again.failed)) == (1, 1)
    assert calls().count(failed[0].key) == 2


def test_a_rate_without_counts_is_refused(tmp_path):
    with ResultsStore.in_run_dir(tmp_path) as store:
        cell = plan_cells(StudySpec.from_dict(coin_spec()))[0]
        result = CellResult(results={"asr": {"rate": 0.5}}, target_id="a", weight_hash=None)
        with pytest.raises(ValueError, match="results.asr is a rate without its counts"):
            store.record(cell, result=result, error=None, versions={}, started_at="",
                         finished_at="", wall_seconds=0.0)
        assert store.records(status=None) == []


def test_cache_round_trips_json_by_namespace(tmp_path):
    with ResultsStore.in_run_dir(tmp_path) as store:
        cache = store.cache()
        keys = [content_hash(["judge-a", f"request {i}", f"answer {i}"]) for i in range(1200)]
        cache.put_many("judge-a", {key: {"label": "refusal", "i": i}
                                   for i, key in enumerate(keys)})
        assert cache.get("judge-a", keys[5]) == {"label": "refusal", "i": 5}
        assert cache.get("judge-b", keys[5], "missing") == "missing"
        found = cache.get_many("judge-a", [*keys, "absent"])
        assert len(found) == 1200 and found[keys[1100]]["i"] == 1100
        cache.put("judge-a", keys[0], None)
        assert cache.get("judge-a", keys[0], "missing") is None


@pytest.mark.parametrize("spec, message", [
    (coin_spec(measurements=[{"name": "nope"}]), "unknown measurement 'nope'"),
    (coin_spec(measurements=[{"name": "coin", "settings": {"pp": 1}}]), "no setting(s) pp"),
    (coin_spec(measurements=[{"name": "coin", "grid": {"p": [0.5, 2.0]}}]), "p must be in"),
    (coin_spec(measurements=[{"name": "coin", "grid": {"p": []}}]), "non-empty list"),
    (coin_spec(targets=[]), "targets must be a non-empty list"),
    (coin_spec(seeds=3), "unknown key(s) seeds"),
    (coin_spec(measurements=[{"name": "coin", "settings": {"p": 0.2},
                              "grid": {"p": [0.1]}}]), "both a fixed setting and a grid axis"),
])
def test_bad_specs_are_refused_before_anything_is_written(tmp_path, spec, message):
    with pytest.raises(UserError) as error:
        run_study(StudySpec.from_dict(spec), tmp_path / "run", progress=False)
    assert message in str(error.value)
    assert not (tmp_path / "run").exists()


def _paradox(*args: str) -> int:
    from alignparadox.cli import main  # not at the top: the SIGKILL child imports this file

    try:
        main(list(args))
    except SystemExit as exit_:
        return exit_.code
    return 0


def test_cli_runs_a_toml_study_and_reports_status(tmp_path, capsys):
    spec = tmp_path / "study.toml"
    spec.write_text('name = "coins"\nseed = 1\ntargets = ["a"]\n\n[[measurements]]\n'
                    'name = "coin"\ngrid = { p = [0.2, 0.8], fail = [false, true] }\n')
    assert _paradox("study", "run", str(spec), "--run-dir", str(tmp_path / "run"),
                    "--no-progress") == 1  # one cell fails on purpose: exit 1, results kept
    out = capsys.readouterr().out
    assert "4 cells: 2 computed, 0 already finished, 2 failed." in out
    assert _paradox("study", "status", str(tmp_path / "run")) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "coin" in line and "│" in line)
    assert [cell.strip() for cell in row.split("│")[2:6]] == ["4", "2", "2", "2"]
    assert "broken on purpose" in out


def test_cli_user_mistakes_exit_2_and_write_nothing(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(coin_spec()))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps(coin_spec(measurements=[{"name": "nope"}])))
    for args, message in [
        (["study", "run", str(tmp_path / "missing.json"), "--run-dir", str(tmp_path / "r")],
         "does not exist"),
        (["study", "run", str(bad_json), "--run-dir", str(tmp_path / "r")], "not valid JSON"),
        (["study", "run", str(unknown), "--run-dir", str(tmp_path / "r")],
         "unknown measurement"),
        (["study", "run", str(good), "--run-dir", str(blocker / "run")], "cannot write"),
        (["study", "status", str(tmp_path / "r")], "has no results store"),
    ]:
        assert _paradox(*args) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


_CHILD = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("study_coin_measurement", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
from alignparadox.study import StudySpec, run_study
run_study(StudySpec.from_file(sys.argv[2]), sys.argv[3], progress=False)
"""


def _done_keys(run_dir: Path) -> set[str]:
    path = run_dir / "results.sqlite"
    if not path.exists():
        return set()
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as connection:
            rows = connection.execute("SELECT key FROM cells WHERE status = 'done'")
            return {key for (key,) in rows}
    except sqlite3.OperationalError:  # the schema is being created this instant
        return set()


def test_sigkill_mid_study_resumes_with_identical_results_and_no_recomputation(
        tmp_path, calls, monkeypatch):
    spec_path = tmp_path / "study.json"
    spec_path.write_text(json.dumps(coin_spec(targets=["a", "b", "c"])))  # 9 cells
    run_dir = tmp_path / "killed"
    child = [sys.executable, "-c", _CHILD, __file__, str(spec_path), str(run_dir)]
    environment = {**os.environ, SLEEP: "0.25"}

    process = subprocess.Popen(child, env=environment)
    deadline = time.monotonic() + 30
    while len(_done_keys(run_dir)) < 3:
        assert process.poll() is None, "the study ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL

    finished_before = _done_keys(run_dir)
    assert 3 <= len(finished_before) < 9
    with sqlite3.connect(run_dir / "results.sqlite") as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    calls_before = len(calls())

    rerun = subprocess.run(child, env=environment, timeout=60)
    assert rerun.returncode == 0
    recomputed = calls()[calls_before:]
    all_keys = {cell.key for cell in plan_cells(StudySpec.from_file(spec_path))}
    assert set(recomputed) == all_keys - finished_before
    assert len(recomputed) == len(set(recomputed))

    monkeypatch.delenv(CALLS_FILE)
    run_study(StudySpec.from_file(spec_path), tmp_path / "clean", progress=False)
    with ResultsStore.in_run_dir(run_dir) as killed, \
            ResultsStore.in_run_dir(tmp_path / "clean") as clean:
        resumed = {record.key: record.results for record in killed.records()}
        uninterrupted = {record.key: record.results for record in clean.records()}
    assert resumed == uninterrupted and len(resumed) == 9


def test_a_new_module_in_a_discovery_package_joins_studies_without_other_changes(
        tmp_path, monkeypatch):
    from alignparadox.study import measurement as registry

    attack = tmp_path / "plugins" / "attacks" / "model_tinkering"
    attack.mkdir(parents=True)
    for folder in (tmp_path / "plugins", tmp_path / "plugins" / "attacks", attack):
        (folder / "__init__.py").write_text("")
    (attack / "nudge.py").write_text(
        "from alignparadox.stats import wilson\n"
        "from alignparadox.study import CellResult, Measurement, register_measurement\n\n"
        "@register_measurement\n"
        "class Nudge(Measurement):\n"
        "    name = 'nudge'\n"
        "    defaults = {'k': 1}\n\n"
        "    def run(self, cell, context):\n"
        "        return CellResult({'asr': wilson(cell.settings['k'], 4)}, cell.target, None)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_discovered", False)
    monkeypatch.setattr(registry, "DISCOVERY_PACKAGES", ("plugins.missing", "plugins.attacks"))

    spec = StudySpec.from_dict({"targets": ["t"],
                                "measurements": [{"name": "nudge", "grid": {"k": [1, 3]}}]})
    assert run_study(spec, tmp_path / "run", progress=False).computed == 2
    from alignparadox.report import write_report

    assert "(3/4)" in write_report(tmp_path / "run").read_text()

    # A module that cannot be imported is an error, not a silently missing measurement.
    (attack / "broken.py").write_text("import a_dependency_that_is_not_installed\n")
    monkeypatch.setattr(registry, "_discovered", False)
    with pytest.raises(ModuleNotFoundError, match="a_dependency_that_is_not_installed"):
        registry.get_measurement("not-there")


@pytest.mark.parametrize("target, settings, message", [
    ("organism:typo", "", "unknown organism 'typo'; known: base, aligned-1"),
    ("/no/such/model", "", "model folder /no/such/model does not exist."),
    ("EMPTY", "", "holds no model weights"),
    ("organism:aligned-1", 'judge = "nope"', "unknown judge 'nope'"),
    ("organism:aligned-1", 'prompt_set = "nope"', "unknown prompt set 'nope'"),
    ("organism:aligned-1", "n_per_kind = 0", "n_per_kind must be a whole number"),
])
def test_alignment_study_with_a_bad_cell_exits_2_before_writing(tmp_path, capsys, target,
                                                                settings, message):
    (tmp_path / "empty").mkdir()
    target = str(tmp_path / "empty") if target == "EMPTY" else target
    spec = tmp_path / "study.toml"
    spec.write_text(f'targets = ["organism:base", "{target}"]\n\n[[measurements]]\n'
                    f'name = "alignment"\nsettings = {{ {settings} }}\n')
    assert _paradox("study", "run", str(spec), "--run-dir", str(tmp_path / "run")) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert not (tmp_path / "run").exists()
