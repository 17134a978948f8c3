"""Run a study: expand the grid, skip finished cells, compute the rest, store each at once.

Execution is pluggable. A back end maps cells to outcomes, yielding each outcome as soon as
its cell finishes (in any order); only this driver writes the results store. The local back
end runs cells one after another in this process; a distributed one (e.g. Ray) only has to
ship `execute_cell` to workers and yield what comes back.
"""

from __future__ import annotations

import json
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

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
from alignparadox.judges.cache import verdict_cache
from alignparadox.study.cells import Cell
from alignparadox.study.measurement import CellResult, RunContext, get_measurement
from alignparadox.study.spec import StudySpec
from alignparadox.study.store import (
    RESULTS_FILE,
    Cache,
    ResultsStore,
    check_rates_have_counts,
    library_versions,
    to_json,
)


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
    """Compute one cell wherever this runs. A UserError propagates (the study stops: it is
    the user's to fix); any other exception becomes a failed outcome with its traceback.
    Judges the cell makes with `make_judge` cache their verdicts in the results store."""
    measurement = get_measurement(cell.measurement)
    cache = Cache(run_dir / RESULTS_FILE)
    context = RunContext(run_dir=run_dir, cell=cell, cache=cache,
                         progress=progress or (lambda done, total: None))
    started_at, clock = _now(), time.perf_counter()
    result: CellResult | None = None
    error: str | None = None
    try:
        with verdict_cache(run_dir / RESULTS_FILE):
            result = measurement.run(cell, context)
        if not isinstance(result, CellResult):
            raise TypeError(f"{type(measurement).__name__}.run returned "
                            f"{type(result).__name__}, not CellResult")
        check_rates_have_counts(json.loads(to_json(dict(result.results))))
    except UserError:
        raise
    except Exception:
        result, error = None, traceback.format_exc()
    finally:
        cache.close()
    return CellOutcome(cell, result, error, library_versions(), started_at, _now(),
                       time.perf_counter() - clock)


def local_backend(cells: Sequence[Cell], run_dir: Path, monitor: Monitor
                  ) -> Iterator[CellOutcome]:
    """Cells one after another in this process (models stay on this machine's device)."""
    for cell in cells:
        monitor.started(cell)
        yield execute_cell(cell, run_dir,
                           lambda done, total, cell=cell: monitor.progress(cell, done, total))


BACKENDS: dict[str, Backend] = {"local": local_backend}


def plan_cells(spec: StudySpec) -> list[Cell]:
    """Every cell of the study, in order, without duplicates; UserError for anything that
    cannot run (unknown measurement or setting, a check that fails)."""
    planned: dict[str, Cell] = {}
    for plan in spec.measurements:
        measurement = get_measurement(plan.name)
        targets = plan.targets if plan.targets is not None else spec.targets
        for cell in measurement.cells(targets, plan.settings, plan.grid, spec.seed):
            measurement.check(cell)
            planned.setdefault(cell.key, cell)
    return list(planned.values())


def prepare_run_dir(run_dir: str | Path) -> Path:
    """Create the run folder and prove it is writable, or say why not in one sentence."""
    run_dir = Path(run_dir).expanduser()
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} exists and is not a folder.")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as error:
        raise UserError(
            f"cannot write to run folder {run_dir}: {error.strerror or error}.") from None
    return run_dir


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


def run_study(spec: StudySpec, run_dir: str | Path, *, backend: str = "local",
              progress: bool = True) -> StudySummary:
    """Compute every cell of `spec` not already finished in `run_dir`'s results store."""
    if backend not in BACKENDS:
        raise UserError(f"unknown execution back end {backend!r}; "
                        f"available: {', '.join(sorted(BACKENDS))}.")
    cells = plan_cells(spec)
    run_dir = prepare_run_dir(run_dir)
    failed: list[CellOutcome] = []
    with ResultsStore.in_run_dir(run_dir) as store:
        store.record_study(spec.as_dict(), cells, _now())
        finished = store.finished_keys()
        todo = [cell for cell in cells if cell.key not in finished]
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(),
                      console=Console(stderr=True), disable=not progress,
                      transient=False) as bar:
            overall = bar.add_task("cells", total=len(cells), completed=len(cells) - len(todo))
            monitor = _ProgressMonitor(bar, overall) if progress else _QuietMonitor()
            for outcome in BACKENDS[backend](todo, run_dir, monitor):
                store.record(outcome.cell, result=outcome.result, error=outcome.error,
                             versions=outcome.versions, started_at=outcome.started_at,
                             finished_at=outcome.finished_at,
                             wall_seconds=outcome.wall_seconds)
                if outcome.error is not None:
                    failed.append(outcome)
                bar.advance(overall)
    return StudySummary(planned=len(cells), reused=len(cells) - len(todo),
                        computed=len(todo) - len(failed), failed=failed,
                        results_path=run_dir / RESULTS_FILE)
