"""Run a study: expand the grid, skip finished cells, compute the rest, store each at once.

Execution is pluggable. A back end maps cells to outcomes, yielding each outcome as soon as
its cell finishes (in any order); only this driver writes the results store. The local back
end runs cells one after another in this process; a distributed one (e.g. Ray) only has to
ship `execute_cell` to workers and yield what comes back.

A failure is never a result: a cell whose judge or endpoint target failed on more than the
cell's `max_error_share` of its verdicts or requests is stored as failed and retried on the
next run. One `run_study` at a time holds a lock on the run folder; a full disk or Ctrl-C
stops the study with every finished cell stored and a sentence saying so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from alignparadox.errors import UserError
from alignparadox.judges.cache import JudgeTally, verdict_cache
from alignparadox.study.cells import Cell
from alignparadox.study.measurement import (
    COMMON_SETTINGS,
    TARGET_PROVENANCE,
    CellResult,
    RunContext,
    get_measurement,
)
from alignparadox.study.ray_backend import RayBackend  # light: imports ray when it runs
from alignparadox.study.spec import StudySpec
from alignparadox.study.store import (
    RESULTS_FILE,
    Cache,
    ResultsStore,
    check_rates_have_counts,
    is_disk_full,
    library_versions,
    to_json,
)

if TYPE_CHECKING:
    from alignparadox.targets.endpoint import EndpointTally

MAX_ERROR_SHARE = "max_error_share"


class CellFailed(Exception):
    """A cell that ran, but on failed judge verdicts or endpoint requests: stored as failed."""


class StudyStopped(KeyboardInterrupt):
    """Ctrl-C during `run_study`; what was kept is in the message."""

    def __init__(self, finished: int, planned: int):
        super().__init__(f"stopped: {finished} of {planned} cells finished and stored; "
                         "rerun to continue.")
        self.finished, self.planned = finished, planned


@dataclass(frozen=True)
class CellOutcome:
    """A finished cell: its result or the traceback of the bug that stopped it."""

    cell: Cell
    result: CellResult | None
    error: str | None
    versions: dict[str, str]
    started_at: str
    finished_at: str
    wall_seconds: float


class Monitor(Protocol):
    """How a back end tells the driver what is running (for the progress display)."""

    def started(self, cell: Cell) -> None: ...

    def progress(self, cell: Cell, done: int, total: int) -> None: ...


Backend = Callable[[Sequence[Cell], Path, Monitor], Iterator[CellOutcome]]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def execute_cell(cell: Cell, run_dir: Path,
                 progress: Callable[[int, int], None] | None = None) -> CellOutcome:
    """Compute one cell wherever this runs. A UserError or a full disk propagates (the study
    stops: it is the user's to fix); a cell whose judge or endpoint failed too often, or any
    other exception, becomes a failed outcome (with the traceback of a bug).
    Judges the cell makes with `make_judge` cache their verdicts in the results store."""
    from alignparadox.targets.endpoint import endpoint_tally  # here: keeps httpx off startup

    measurement = get_measurement(cell.measurement)
    cache = Cache(run_dir / RESULTS_FILE)
    context = RunContext(run_dir=run_dir, cell=cell, cache=cache,
                         progress=progress or (lambda done, total: None))
    started_at, clock = _now(), time.perf_counter()
    result: CellResult | None = None
    error: str | None = None
    try:
        with verdict_cache(run_dir / RESULTS_FILE) as judged, endpoint_tally() as requested:
            result = measurement.run(cell, context)
        if not isinstance(result, CellResult):
            raise TypeError(f"{type(measurement).__name__}.run returned "
                            f"{type(result).__name__}, not CellResult")
        result = _account_failures(cell, result, judged, requested)
        result = _with_target_provenance(cell, result)
        check_rates_have_counts(json.loads(to_json(dict(result.results))))
    except UserError:
        raise
    except CellFailed as failure:
        result, error = None, str(failure)
    except Exception as exception:
        if is_disk_full(exception):
            raise
        result, error = None, traceback.format_exc()
    finally:
        cache.close()
    return CellOutcome(cell, result, error, library_versions(), started_at, _now(),
                       time.perf_counter() - clock)


def _with_target_provenance(cell: Cell, result: CellResult) -> CellResult:
    """Record beside the results what the target's provider knows of it (an organism's family,
    steps and validation refusal); nothing for plain folders, Hub ids and endpoints."""
    from alignparadox.targets.providers import describe_target

    card = describe_target(cell.target)
    if not card:
        return result
    return dataclasses.replace(result, results={**result.results, TARGET_PROVENANCE: card})


def _account_failures(cell: Cell, result: CellResult, judged: JudgeTally,
                      requested: EndpointTally) -> CellResult:
    """Raise CellFailed when the cell's judge verdicts or endpoint requests failed on more than
    its `max_error_share`; failures within it are stored with the results, with their count."""
    allowed = cell.settings.get(MAX_ERROR_SHARE, COMMON_SETTINGS[MAX_ERROR_SHARE])
    tolerated = {}
    for name, what, failed, total, first in [
            ("judge_errors", "judge verdicts", judged.errors, judged.verdicts,
             judged.first_error),
            ("endpoint_errors", "endpoint requests", requested.failed, requested.requests,
             requested.first_error)]:
        if failed and failed / total > allowed:
            raise CellFailed(f"{failed} of {total} {what} failed (first: {first}), more than "
                             f"{MAX_ERROR_SHARE} = {allowed:g} allows; a rerun retries the cell.")
        if failed:
            tolerated[name] = {"k": failed, "n": total, MAX_ERROR_SHARE: allowed}
    if not tolerated:
        return result
    return dataclasses.replace(result, results={**result.results, **tolerated})


def local_backend(cells: Sequence[Cell], run_dir: Path, monitor: Monitor
                  ) -> Iterator[CellOutcome]:
    """Cells one after another in this process (models stay on this machine's device)."""
    for cell in cells:
        monitor.started(cell)
        yield execute_cell(cell, run_dir,
                           lambda done, total, cell=cell: monitor.progress(cell, done, total))


# Back ends by name; `run_study` also takes a Backend itself (e.g. `RayBackend(address)`).
BACKENDS: dict[str, Backend] = {"local": local_backend, "ray": RayBackend()}


def plan_cells(spec: StudySpec) -> list[Cell]:
    """Every cell of the study, in order, without duplicates; UserError for anything that
    cannot run (unknown measurement or setting, a check that fails)."""
    planned: dict[str, Cell] = {}
    for plan in spec.measurements:
        measurement = get_measurement(plan.name)
        targets = plan.targets if plan.targets is not None else spec.targets
        for cell in measurement.cells(targets, plan.settings, plan.grid, spec.seed):
            _check_common_settings(cell)
            measurement.check(cell)
            planned.setdefault(cell.key, cell)
    return list(planned.values())


def _check_common_settings(cell: Cell) -> None:
    share = cell.settings.get(MAX_ERROR_SHARE, COMMON_SETTINGS[MAX_ERROR_SHARE])
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
        raise UserError(f"{MAX_ERROR_SHARE} must be a number from 0 to 1, got {share!r}.")


def prepare_run_dir(run_dir: str | Path) -> Path:
    """Create the run folder and prove it is writable, or say why not in one sentence (and
    leave no folder behind that this call created)."""
    run_dir = Path(run_dir).expanduser()
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} exists and is not a folder.")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # A byte written and synced: creating an empty file still works on a full disk.
        descriptor, probe = tempfile.mkstemp(dir=run_dir, prefix=".write-test-")
        try:
            os.write(descriptor, b"\0")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
            os.unlink(probe)
    except OSError as error:
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise UserError(
            f"cannot write to run folder {run_dir}: {error.strerror or error}.") from None
    return run_dir


@contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder itself (no lock file to leave behind), so two
    `run_study` never compute the same cells; the OS releases it if the process dies.
    Readers (report, status) take no lock."""
    descriptor = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another study is running in {run_dir}; wait for it to finish, "
                            "or give this one another --run-dir.") from None
        yield
    finally:
        os.close(descriptor)


@dataclass(frozen=True)
class StudySummary:
    planned: int
    reused: int
    computed: int
    failed: list[CellOutcome] = field(default_factory=list)
    results_path: Path | None = None


class _ProgressMonitor:
    def __init__(self, progress: Progress, overall: TaskID):
        self._progress, self._overall = progress, overall
        self._inner: TaskID | None = None

    def started(self, cell: Cell) -> None:
        if self._inner is not None:
            self._progress.remove_task(self._inner)
            self._inner = None
        self._progress.update(self._overall, description=f"{cell.measurement} · {cell.target}")

    def progress(self, cell: Cell, done: int, total: int) -> None:
        if self._inner is None:
            self._inner = self._progress.add_task("  within cell", total=total)
        self._progress.update(self._inner, completed=done, total=total)


class _QuietMonitor:
    def started(self, cell: Cell) -> None:
        pass

    def progress(self, cell: Cell, done: int, total: int) -> None:
        pass


def run_study(spec: StudySpec, run_dir: str | Path, *, backend: str | Backend = "local",
              progress: bool = True) -> StudySummary:
    """Compute every cell of `spec` not already finished in `run_dir`'s results store, with
    `backend`: a name in BACKENDS or a Backend."""
    if isinstance(backend, str):
        if backend not in BACKENDS:
            raise UserError(f"unknown execution back end {backend!r}; "
                            f"available: {', '.join(sorted(BACKENDS))}.")
        backend = BACKENDS[backend]
    cells = plan_cells(spec)
    run_dir = prepare_run_dir(run_dir)
    failed: list[CellOutcome] = []
    todo: list[Cell] = []
    stored = 0  # cells of this plan finished and stored (reused ones included)
    try:
        with run_folder_lock(run_dir), ResultsStore.in_run_dir(run_dir) as store:
            store.record_study(spec.as_dict(), cells, _now())
            finished = store.finished_keys()
            todo = [cell for cell in cells if cell.key not in finished]
            stored = len(cells) - len(todo)
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TimeRemainingColumn(),
                          console=Console(stderr=True), disable=not progress,
                          transient=False) as bar:
                overall = bar.add_task("cells", total=len(cells), completed=stored)
                monitor = _ProgressMonitor(bar, overall) if progress else _QuietMonitor()
                for outcome in backend(todo, run_dir, monitor):
                    store.record(outcome.cell, result=outcome.result, error=outcome.error,
                                 versions=outcome.versions, started_at=outcome.started_at,
                                 finished_at=outcome.finished_at,
                                 wall_seconds=outcome.wall_seconds)
                    if outcome.error is not None:
                        failed.append(outcome)
                    else:
                        stored += 1
                    bar.advance(overall)
    except KeyboardInterrupt:
        raise StudyStopped(stored, len(cells)) from None
    except UserError:
        raise
    except Exception as error:
        if is_disk_full(error):  # each cell is one transaction: the stored ones are intact
            raise UserError(f"the disk holding {run_dir} is full: {stored} of {len(cells)} "
                            "cells are finished and stored; free some space and rerun to "
                            "continue.") from None
        raise
    return StudySummary(planned=len(cells), reused=len(cells) - len(todo),
                        computed=len(todo) - len(failed), failed=failed,
                        results_path=run_dir / RESULTS_FILE)
