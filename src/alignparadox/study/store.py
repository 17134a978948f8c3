"""The results store: one SQLite file per run folder, written one finished cell at a time.

Each cell is written in a single transaction the moment it finishes, with its provenance, in
WAL mode with full sync: a study killed at any instant (SIGKILL, power loss) leaves every
finished cell intact and no half-written one. Only the driver process writes results; any
process may use the content-keyed `cache` table (`RunContext.cache`) and the `verdicts` table
that `judges.cache.CachedJudge` keeps while cells run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import math
import os
import platform
import sqlite3
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignparadox.errors import UserError
from alignparadox.study.cells import Cell, canonical_json

if TYPE_CHECKING:
    from alignparadox.study.measurement import CellResult

RESULTS_FILE = "results.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    spec TEXT NOT NULL,
    planned TEXT NOT NULL,
    started_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY,
    measurement TEXT NOT NULL,
    target TEXT NOT NULL,
    settings TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    results TEXT,
    error TEXT,
    target_id TEXT,
    weight_hash TEXT,
    prompt_sets TEXT NOT NULL,
    judge TEXT,
    versions TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    wall_seconds REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS cells_by_measurement ON cells (measurement, status);
CREATE TABLE IF NOT EXISTS cache (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
"""

_TRACKED_LIBRARIES = ("torch", "transformers", "tokenizers", "safetensors", "peft", "numpy",
                      "scipy", "scikit-learn")


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Versions of Python, this package (and its git commit when run from a checkout), and
    the libraries that decide the numbers."""
    versions = {"python": platform.python_version(), "platform": platform.platform(),
                "alignparadox": metadata.version("alignparadox")}
    for library in _TRACKED_LIBRARIES:
        try:
            versions[library] = metadata.version(library)
        except metadata.PackageNotFoundError:
            continue
    commit = _git_commit(Path(__file__).resolve().parent)
    if commit:
        versions["alignparadox_git"] = commit
    return versions


def _git_commit(folder: Path) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def to_json(value: Any) -> str:
    """Serialise results: dataclasses with `as_dict` (Rate, Correlation), numpy scalars and
    arrays, and paths become plain JSON. NaN and infinities (a rate over zero items) become
    null: bare NaN is not JSON, and SQLite's JSON functions and other readers refuse it."""
    return json.dumps(_finite(value), sort_keys=True, ensure_ascii=False, allow_nan=False)


def _finite(value: Any) -> Any:
    """`value` as plain JSON values, with every non-finite float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int):
        return value
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return _finite(_jsonable(value))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# Numbers that are NaN when undefined (a rate over zero items, a correlation of constants):
# stored as null, read back as NaN so that readers compare numbers as when they were computed.
_NAN_WHEN_NULL = {frozenset({"k", "n", "rate"}): ("rate", "low", "high"),
                  frozenset({"rho", "n"}): ("rho", "low", "high")}


def _nan_for_null(value: Any) -> Any:
    if isinstance(value, list):
        return [_nan_for_null(item) for item in value]
    if not isinstance(value, dict):
        return value
    value = {key: _nan_for_null(item) for key, item in value.items()}
    for marks, fields in _NAN_WHEN_NULL.items():
        if marks <= value.keys():
            value.update((name, math.nan) for name in fields if name in value
                         and value[name] is None)
    return value


def is_disk_full(error: BaseException | None) -> bool:
    """Whether `error`, or an error behind it, says the disk (or the user's quota) is full."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(error, sqlite3.Error) and (
                getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
                or "database or disk is full" in str(error)):
            return True
        if os.strerror(errno.ENOSPC) in str(error):  # e.g. torch.save's RuntimeError
            return True
        error = error.__cause__ or error.__context__
    return False


def check_rates_have_counts(results: Any, path: str = "results") -> None:
    """Every rate (a dict with a "rate" entry) must carry its counts "k" and "n"."""
    if isinstance(results, Mapping):
        if "rate" in results and not {"k", "n"} <= set(results):
            raise ValueError(f"{path} is a rate without its counts (needs 'k' and 'n')")
        for name, value in results.items():
            check_rates_have_counts(value, f"{path}.{name}")
    elif isinstance(results, list | tuple):
        for index, value in enumerate(results):
            check_rates_have_counts(value, f"{path}[{index}]")


@dataclass(frozen=True)
class CellRecord:
    """One stored cell with its provenance, as reports read it."""

    key: str
    measurement: str
    target: str
    settings: dict[str, Any]
    seed: int
    status: str
    results: dict[str, Any] | None
    error: str | None
    target_id: str | None
    weight_hash: str | None
    prompt_sets: dict[str, str]
    judge: str | None
    versions: dict[str, str]
    started_at: str
    finished_at: str
    wall_seconds: float

    @property
    def cell(self) -> Cell:
        return Cell(self.target, self.measurement, self.settings, self.seed)


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=60)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    return connection


class Cache:
    """A namespaced key → JSON value cache in the run's SQLite file (safe across processes).

    Keys should be content hashes (`alignparadox.study.content_hash`) of everything the value
    depends on, e.g. a model's weight hash and the settings that made the value.
    """

    _CHUNK = 500  # stays under SQLite's limit on query parameters

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._connection = _connect(self.path)
        with self._connection:
            self._connection.executescript(_SCHEMA)

    def get(self, namespace: str, key: str, default: Any = None) -> Any:
        row = self._connection.execute(
            "SELECT value FROM cache WHERE namespace = ? AND key = ?", (namespace, key)
        ).fetchone()
        return json.loads(row[0]) if row else default

    def get_many(self, namespace: str, keys: Iterable[str]) -> dict[str, Any]:
        """The cached values among `keys` (missing keys are absent from the answer)."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}
        for start in range(0, len(keys), self._CHUNK):
            chunk = keys[start:start + self._CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._connection.execute(
                f"SELECT key, value FROM cache WHERE namespace = ? AND key IN ({marks})",
                (namespace, *chunk),
            )
            found.update((key, json.loads(value)) for key, value in rows)
        return found

    def put(self, namespace: str, key: str, value: Any) -> None:
        self.put_many(namespace, {key: value})

    def put_many(self, namespace: str, items: Mapping[str, Any]) -> None:
        """Store all items in one transaction (later values replace earlier ones)."""
        rows = [(namespace, key, to_json(value)) for key, value in items.items()]
        with self._connection:
            self._connection.executemany(
                "INSERT OR REPLACE INTO cache (namespace, key, value) VALUES (?, ?, ?)", rows
            )

    def __len__(self) -> int:
        return self._connection.execute("SELECT COUNT(*) FROM cache").fetchone()[0]

    def close(self) -> None:
        self._connection.close()


class ResultsStore:
    """Finished cells of one run folder, with provenance; see the module docstring."""

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise UserError(f"{self.path.parent} has no results store ({RESULTS_FILE}); "
                            "run a study there first.")
        new = not self.path.exists()
        connection = None
        try:
            connection = self._connection = _connect(self.path)
            with self._connection:
                self._connection.executescript(_SCHEMA)
                self._connection.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)",
                                         (str(SCHEMA_VERSION),))
            schema = self._connection.execute(
                "SELECT value FROM meta WHERE name = 'schema'").fetchone()[0]
        except (sqlite3.Error, OSError) as error:
            if connection is not None:
                connection.close()
            if new:  # leave nothing behind, not an empty file that looks like a store
                for suffix in ("", "-wal", "-shm", "-journal"):
                    with contextlib.suppress(OSError):
                        Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            if is_disk_full(error):
                raise UserError(f"cannot write {self.path}: the disk is full.") from None
            if isinstance(error, OSError):
                raise
            raise UserError(f"{self.path} is not a results store ({error}).") from None
        if schema != str(SCHEMA_VERSION):
            raise UserError(f"{self.path} uses results schema {schema}; this version of "
                            f"alignparadox reads schema {SCHEMA_VERSION}.")

    @classmethod
    def in_run_dir(cls, run_dir: str | Path, *, create: bool = True) -> ResultsStore:
        return cls(Path(run_dir) / RESULTS_FILE, create=create)

    def cache(self) -> Cache:
        return Cache(self.path)

    def record_study(self, spec: Mapping[str, Any], planned: Iterable[Cell],
                     started_at: str) -> None:
        """Remember a study's spec and planned cells (for `study status` and the report)."""
        plan = [[cell.key, cell.measurement, cell.target] for cell in planned]
        with self._connection:
            self._connection.execute(
                "INSERT INTO studies (spec, planned, started_at) VALUES (?, ?, ?)",
                (canonical_json(spec), json.dumps(plan), started_at),
            )

    def studies(self) -> list[dict[str, Any]]:
        rows = self._connection.execute(
            "SELECT id, spec, planned, started_at FROM studies ORDER BY id")
        return [{"id": id_, "spec": json.loads(spec), "planned": json.loads(planned),
                 "started_at": started_at} for id_, spec, planned, started_at in rows]

    def finished_keys(self) -> set[str]:
        rows = self._connection.execute("SELECT key FROM cells WHERE status = 'done'")
        return {key for (key,) in rows}

    def record(self, cell: Cell, *, result: CellResult | None, error: str | None,
               versions: Mapping[str, str], started_at: str, finished_at: str,
               wall_seconds: float) -> None:
        """Write one finished cell (a CellResult, or an error) in one transaction.

        A failed cell is replaced when it is computed again; a done cell is never replaced.
        """
        if (result is None) == (error is None):
            raise ValueError("a cell finishes with either a result or an error")
        if result is not None:
            results_json = to_json(dict(result.results))
            check_rates_have_counts(json.loads(results_json))
        row = {
            "key": cell.key, "measurement": cell.measurement, "target": cell.target,
            "settings": canonical_json(dict(cell.settings)), "seed": cell.seed,
            "status": "done" if result is not None else "failed",
            "results": results_json if result is not None else None,
            "error": error,
            "target_id": result.target_id if result is not None else None,
            "weight_hash": result.weight_hash if result is not None else None,
            "prompt_sets": canonical_json(dict(result.prompt_sets) if result else {}),
            "judge": result.judge if result is not None else None,
            "versions": canonical_json(dict(versions)),
            "started_at": started_at, "finished_at": finished_at,
            "wall_seconds": wall_seconds if math.isfinite(wall_seconds) else 0.0,
        }
        columns = ", ".join(row)
        marks = ", ".join(f":{name}" for name in row)
        updates = ", ".join(f"{name} = excluded.{name}" for name in row if name != "key")
        with self._connection:
            self._connection.execute(
                f"INSERT INTO cells ({columns}) VALUES ({marks}) ON CONFLICT (key) DO UPDATE "
                f"SET {updates} WHERE cells.status != 'done'",
                row,
            )

    def records(self, measurement: str | None = None,
                status: str | None = "done") -> list[CellRecord]:
        """Stored cells in the order they finished, optionally filtered."""
        query = "SELECT * FROM cells WHERE 1 = 1"
        parameters: list[str] = []
        if measurement is not None:
            query += " AND measurement = ?"
            parameters.append(measurement)
        if status is not None:
            query += " AND status = ?"
            parameters.append(status)
        cursor = self._connection.execute(query + " ORDER BY finished_at, rowid", parameters)
        names = [column[0] for column in cursor.description]
        return [_record(dict(zip(names, row, strict=True))) for row in cursor]

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _record(row: dict[str, Any]) -> CellRecord:
    for name in ("settings", "prompt_sets", "versions"):
        row[name] = json.loads(row[name])
    row["results"] = (_nan_for_null(json.loads(row["results"])) if row["results"] is not None
                      else None)
    return CellRecord(**row)
