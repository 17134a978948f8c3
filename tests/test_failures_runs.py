"""A failure is a failure, never a result, for the run itself: one `study run` per run folder,
a full disk and Ctrl-C stop the study in one sentence with every finished cell stored, and
the stored results are JSON every reader can read (no bare NaN)."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from alignparadox.cli import main
from alignparadox.errors import UserError
from alignparadox.stats import wilson
from alignparadox.study import (
    CellResult,
    Measurement,
    ResultsStore,
    StudySpec,
    register_measurement,
    run_study,
)

STARTED = threading.Event()  # the "held" measurement is computing a cell
RELEASE = threading.Event()  # ... and may finish it
HELD_CALLS: list[str] = []
FILL_DISK = "FAILURES_FILL_DISK"  # a file to grow until the disk is full (cell "b" only)
NO_SPACE = "FAILURES_NO_SPACE"  # cell "b" fails writing an artifact: no space left


@register_measurement
class Held(Measurement):
    """Computes its cell only once the test releases it."""

    name = "failures_held"
    defaults = {"i": 0}

    def run(self, cell, context):
        HELD_CALLS.append(cell.key)
        STARTED.set()
        RELEASE.wait(timeout=10)
        return CellResult({"ok": wilson(1, 1)}, cell.target, None)


def fill(path: Path) -> None:
    """Write to `path` until its disk is full."""
    chunk = b"\0" * 65536
    with path.open("ab", buffering=0) as handle:
        while True:
            try:
                handle.write(chunk)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return
                chunk = chunk[: len(chunk) // 2]


@register_measurement
class Disk(Measurement):
    """A cell per target; on target "b" the disk fills up (really, or an injected ENOSPC)."""

    name = "failures_disk"
    defaults = {"undefined": False}

    def run(self, cell, context):
        if cell.target == "b" and os.environ.get(NO_SPACE):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                          str(context.artifact_dir / "weights.safetensors"))
        if cell.target == "b" and os.environ.get(FILL_DISK):
            fill(Path(os.environ[FILL_DISK]))
        results = {"heads": wilson(3, 4)}
        if cell.settings["undefined"]:
            results.update(none_answered=wilson(0, 0), kappa=float("nan"), ratio=math.inf,
                           curve=[{"x": np.float64("nan"), "asr": wilson(0, 0)}])
        return CellResult(results, f"disk:{cell.target}", None, judge="none")


def paradox(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as exited:
        return exited.code
    return 0


def write_spec(folder: Path, measurement: str, targets: list[str], **settings) -> Path:
    spec = folder / f"{measurement}.json"
    spec.write_text(json.dumps({"name": measurement, "targets": targets, "measurements": [
        {"name": measurement, "settings": settings}]}))
    return spec


def done_targets(run_dir: Path) -> list[str]:
    with ResultsStore.in_run_dir(run_dir, create=False) as store:
        return sorted(record.target for record in store.records())


# -- one run per run folder ------------------------------------------------------------------


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_computes(tmp_path,
                                                                              capsys):
    STARTED.clear()
    RELEASE.clear()
    HELD_CALLS.clear()
    spec = write_spec(tmp_path, "failures_held", ["a"])
    run_dir = tmp_path / "run"
    first = threading.Thread(target=run_study, args=(StudySpec.from_file(spec), run_dir),
                             kwargs={"progress": False})
    first.start()
    try:
        assert STARTED.wait(timeout=30)
        # Before: the second run computed the same cell again.
        assert paradox("study", "run", str(spec), "--run-dir", str(run_dir),
                       "--no-progress") == 2
        error = capsys.readouterr().err.strip()
        assert "another study is running in" in error and len(error.splitlines()) == 1
        # Readers take no lock: status works while the study runs.
        assert paradox("study", "status", str(run_dir)) == 0
    finally:
        RELEASE.set()
        first.join(timeout=30)
    assert len(HELD_CALLS) == 1
    assert done_targets(run_dir) == ["a"]
    # The lock ends with its run (and leaves no file behind): the next run may go.
    assert sorted(path.name for path in run_dir.iterdir() if "lock" in path.name) == []
    assert run_study(StudySpec.from_file(spec), run_dir, progress=False).reused == 1


# -- a full disk ------------------------------------------------------------------------------


def test_no_space_mid_study_is_one_sentence_and_keeps_the_store(tmp_path, capsys, monkeypatch):
    spec = write_spec(tmp_path, "failures_disk", ["a", "b", "c"])
    run_dir = tmp_path / "run"
    monkeypatch.setenv(NO_SPACE, "1")
    # Before: a failed cell (or a traceback when the store itself could not be written).
    assert paradox("study", "run", str(spec), "--run-dir", str(run_dir), "--no-progress") == 2
    error = capsys.readouterr().err.strip()
    assert f"the disk holding {run_dir} is full: 1 of 3 cells are finished and stored" in \
        " ".join(error.split())
    assert len(error.splitlines()) <= 2 and "Traceback" not in error  # one (wrapped) sentence
    assert done_targets(run_dir) == ["a"]
    with ResultsStore.in_run_dir(run_dir, create=False) as store:
        assert store.records(status="failed") == []  # space, not the cell, was missing

    monkeypatch.delenv(NO_SPACE)
    assert paradox("study", "run", str(spec), "--run-dir", str(run_dir), "--no-progress") == 0
    assert done_targets(run_dir) == ["a", "b", "c"]


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (skipped where mounting is not permitted)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs",
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_disk_filling_up_mid_study_is_one_sentence_and_keeps_the_store(small_disk, capsys,
                                                                          monkeypatch):
    spec = write_spec(small_disk.parent, "failures_disk", ["a", "b", "c"])
    run_dir = small_disk / "run"
    filler = small_disk / "filler"
    monkeypatch.setenv(FILL_DISK, str(filler))
    # Before: sqlite3.OperationalError: database or disk is full, as a traceback.
    assert paradox("study", "run", str(spec), "--run-dir", str(run_dir), "--no-progress") == 2
    error = " ".join(capsys.readouterr().err.split())
    assert f"the disk holding {run_dir} is full: 1 of 3 cells are finished and stored" in error

    filler.unlink()
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert done_targets(run_dir) == ["a"]
    monkeypatch.delenv(FILL_DISK)
    assert paradox("study", "run", str(spec), "--run-dir", str(run_dir), "--no-progress") == 0
    assert done_targets(run_dir) == ["a", "b", "c"]


def test_a_full_disk_before_the_start_leaves_nothing_behind(small_disk, capsys):
    spec = write_spec(small_disk.parent, "failures_disk", ["a"])
    fill(small_disk / "filler")
    # Before: exit 2 with "... is not a results store", and a 0-byte results.sqlite left.
    assert paradox("study", "run", str(spec), "--run-dir", str(small_disk / "run"),
                   "--no-progress") == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "No space left on device" in error and "Traceback" not in error
    assert sorted(path.name for path in small_disk.iterdir()) == ["filler"]

    (small_disk / "existing").mkdir()  # a folder whose write probe fits in the last bytes
    with pytest.raises(UserError, match="the disk is full"):
        ResultsStore.in_run_dir(small_disk / "existing")
    assert list((small_disk / "existing").iterdir()) == []


# -- Ctrl-C -----------------------------------------------------------------------------------


_CHILD = """
import os, sys, time
from alignparadox.cli import main
from alignparadox.stats import wilson
from alignparadox.study import CellResult, Measurement, register_measurement

@register_measurement
class Nap(Measurement):
    name = "failures_nap"
    defaults = {"i": 0}

    def run(self, cell, context):
        if cell.settings["i"] == 1:
            open(sys.argv[2], "w").close()  # the test may interrupt now
            time.sleep(float(os.environ["NAP_SECONDS"]))
        return CellResult({"ok": wilson(1, 1)}, cell.target, None)

main(["study", "run", sys.argv[1], "--run-dir", sys.argv[3], "--no-progress"])
"""


def test_ctrl_c_says_what_was_kept_and_a_rerun_continues(tmp_path):
    spec = tmp_path / "study.json"
    spec.write_text(json.dumps({"name": "nap", "targets": ["t"], "measurements": [
        {"name": "failures_nap", "grid": {"i": [0, 1, 2]}}]}))
    marker, run_dir = tmp_path / "napping", tmp_path / "run"
    child = [sys.executable, "-c", _CHILD, str(spec), str(marker), str(run_dir)]
    process = subprocess.Popen(child, env={**os.environ, "NAP_SECONDS": "60"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    # Before: exit 130 and not a word about what was kept.
    assert process.returncode == 130, stderr
    assert stderr.strip() == "stopped: 1 of 3 cells finished and stored; rerun to continue."
    assert done_targets(run_dir) == ["t"]

    rerun = subprocess.run(child, env={**os.environ, "NAP_SECONDS": "0"}, capture_output=True,
                           text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "3 cells: 2 computed, 1 already finished, 0 failed." in rerun.stdout


# -- results are standard JSON ----------------------------------------------------------------


def test_undefined_numbers_are_stored_as_null_and_read_back_as_undefined(tmp_path):
    spec = StudySpec.from_dict({"targets": ["a"], "measurements": [
        {"name": "failures_disk", "settings": {"undefined": True}}]})
    summary = run_study(spec, tmp_path / "run", progress=False)
    assert summary.failed == []
    with sqlite3.connect(summary.results_path) as db:
        [(raw, valid, rate, kappa)] = db.execute(
            "SELECT results, json_valid(results), json_extract(results, '$.none_answered.rate'),"
            " json_type(results, '$.kappa') FROM cells").fetchall()
    # Before: bare NaN and Infinity, which SQLite's JSON functions and strict parsers refuse.
    assert "NaN" not in raw and "Infinity" not in raw
    json.loads(raw, parse_constant=lambda name: pytest.fail(f"non-JSON constant {name}"))
    assert (valid, rate, kappa) == (1, None, "null")

    with ResultsStore.in_run_dir(tmp_path / "run", create=False) as store:
        [record] = store.records()
    results = record.results
    assert math.isnan(results["none_answered"]["rate"]) and results["none_answered"]["n"] == 0
    assert math.isnan(results["curve"][0]["asr"]["rate"])
    assert results["kappa"] is None and results["ratio"] is None
    assert results["curve"][0]["x"] is None
    assert results["heads"] == wilson(3, 4).as_dict()

    from alignparadox.report import write_report

    html = write_report(tmp_path / "run").read_text(encoding="utf-8")
    assert "(0/0)" in html and "(3/4)" in html
