"""The Ray back end on a local 2-CPU cluster: a worker killed mid-cell (the cell is retried and
stored once), a worker lost for good (the cell fails and a rerun retries it), resume, and a
UserError on a worker stopping the study with its sentence (exit 2)."""

from __future__ import annotations

import json
import os
import signal
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
from alignparadox.study.ray_backend import RayBackend

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'alignparadox[ray]'")


@register_measurement
class DyingCoin(Measurement):
    """Seeded coin flips whose worker, when told, kills itself mid-cell: `die` = "once" (the
    first run of the cell only), "always", or "never"; `user_error` raises a user's mistake."""

    name = "dying-coin"
    defaults = {"n": 200, "die": "never", "user_error": False}

    def run(self, cell, context):
        calls = context.run_dir / "calls"  # the run folder: workers do not see env changes
        calls.mkdir(exist_ok=True)
        with open(calls / cell.key, "a") as log:
            log.write(f"{os.getpid()}\n")
        context.cache.put("dying-coin", cell.key, True)  # mid-cell: some work already written
        marker = calls / f"{cell.key}.died"
        if cell.settings["die"] == "always" or (cell.settings["die"] == "once"
                                                and not marker.exists()):
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        if cell.settings["user_error"]:
            raise UserError("this cell's setting is wrong on purpose.")
        rng = np.random.default_rng(int(content_hash(cell.as_dict()), 16))
        heads = int((rng.random(cell.settings["n"]) < 0.5).sum())
        return CellResult({"heads": wilson(heads, cell.settings["n"])}, target_id=cell.target,
                          weight_hash=content_hash(cell.target), judge="exact-count")


@pytest.fixture(scope="module")
def cluster():
    # Workers import this module (to unpickle DyingCoin) from the tests folder.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}})
    yield
    ray.shutdown()


def spec(**grid) -> StudySpec:
    return StudySpec.from_dict({"name": "dying", "seed": 3, "targets": ["a", "b"],
                                "measurements": [{"name": "dying-coin", "grid": grid}]})


def runs(run_dir: Path) -> dict[str, int]:
    """How many times each cell's run() started."""
    return {path.name: len(path.read_text().split())
            for path in (run_dir / "calls").iterdir() if path.suffix != ".died"}


def stored(run_dir: Path) -> list:
    with ResultsStore.in_run_dir(run_dir, create=False) as store:
        return store.records(status=None)


def test_a_worker_killed_mid_cell_is_retried_and_every_cell_ends_done_once(cluster, tmp_path):
    study = spec(die=["never", "once"], n=[100, 200])
    cells = plan_cells(study)
    summary = run_study(study, tmp_path / "ray", backend="ray", progress=False)
    assert (summary.planned, summary.computed, summary.failed) == (8, 8, [])
    records = stored(tmp_path / "ray")
    assert sorted(r.key for r in records) == sorted(c.key for c in cells)  # each once
    assert {r.status for r in records} == {"done"}
    started = runs(tmp_path / "ray")
    assert {key: started[key] for key in started} == {
        c.key: 2 if c.settings["die"] == "once" else 1 for c in cells}  # killed ones ran again

    # The same numbers as the local back end (killed cells rerun from scratch).
    run_study(spec(die=["never"], n=[100, 200]), tmp_path / "local", progress=False)
    local = {r.key: r.results for r in stored(tmp_path / "local")}
    assert all(r.results == local[r.key] for r in records if r.key in local) and len(local) == 4

    again = run_study(study, tmp_path / "ray", backend="ray", progress=False)
    assert (again.reused, again.computed) == (8, 0)
    assert runs(tmp_path / "ray") == started


def test_a_worker_lost_for_good_fails_its_cell_and_a_rerun_retries_it(cluster, tmp_path):
    study = spec(die=["never", "always"])
    backend = RayBackend(max_retries=1)
    summary = run_study(study, tmp_path / "run", backend=backend, progress=False)
    assert (summary.computed, len(summary.failed)) == (2, 2)
    for outcome in summary.failed:
        assert outcome.cell.settings["die"] == "always"
        assert "Ray worker computing this cell was lost 2 times" in outcome.error
        assert "a rerun retries the cell" in outcome.error.splitlines()[-1]
    assert sorted((r.settings["die"], r.status) for r in stored(tmp_path / "run")) == [
        ("always", "failed"), ("always", "failed"), ("never", "done"), ("never", "done")]
    rerun = run_study(study, tmp_path / "run", backend=RayBackend(max_retries=0),
                      progress=False)
    assert (rerun.reused, rerun.computed, len(rerun.failed)) == (2, 0, 2)
    assert sorted(runs(tmp_path / "run").values()) == [1, 1, 3, 3]  # 2 tries, then 1 more


def test_a_user_error_on_a_worker_stops_the_study_with_its_sentence(cluster, tmp_path, capsys):
    from alignparadox.cli import main

    spec_file = tmp_path / "study.json"
    spec_file.write_text(json.dumps(spec(user_error=[False, True]).as_dict()))
    with pytest.raises(SystemExit) as exit_:
        main(["study", "run", str(spec_file), "--run-dir", str(tmp_path / "run"),
              "--backend", "ray", "--no-progress"])
    assert exit_.value.code == 2
    assert "this cell's setting is wrong on purpose." in capsys.readouterr().err
    assert all(r.status == "done" and not r.settings["user_error"]
               for r in stored(tmp_path / "run"))


def test_the_demo_runs_a_cell_per_worker_on_ray_and_one_worker_locally():
    from rich.console import Console

    from alignparadox.demo import demo_backend

    console = Console(stderr=True)
    assert demo_backend(1, console) == "local"
    backend = demo_backend(2, console)
    assert isinstance(backend, RayBackend)
    assert (backend.num_cpus, backend.cpus_per_cell, backend.address) == (2, 1, None)
    default = demo_backend(None, console)  # this machine's CPUs, no GPU in CI
    cpus = len(os.sched_getaffinity(0))
    assert (default == "local") if cpus == 1 else (default.num_cpus == cpus)
