"""Verdict cache: a judge's verdicts stored by content hash in a SQLite file.

The key is sha256 over the judge's fingerprint (name + config), the request and the answer, so
changing any of them misses the cache. Verdicts live in a `verdicts` table of the given file
(usually the study's results database). Judge errors are not stored: a rerun may succeed.

Studies cache every judge centrally: while a cell runs, `verdict_cache(results_path)` is active
and `judges.registry.make_judge` wraps each judge it builds in a `CachedJudge` on that file, so
measurements get cached verdicts without knowing about the cache. The same block counts every
verdict its judges give and how many were judge errors (`JudgeTally`): the study fails a cell
whose judge failed too often, instead of computing rates from errors.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from alignparadox.judges.base import Judge, Verdict, judge_fingerprint

_CHUNK = 500  # stays under SQLite's limit on query parameters

_SCHEMA = """CREATE TABLE IF NOT EXISTS verdicts (
    key TEXT PRIMARY KEY,
    judge TEXT NOT NULL,
    label TEXT NOT NULL,
    refused INTEGER NOT NULL,
    complied INTEGER NOT NULL,
    harmfulness REAL NOT NULL,
    raw TEXT NOT NULL,
    created REAL NOT NULL
)"""

@dataclass
class JudgeTally:
    """Verdicts the judges of one `verdict_cache` block gave, and how many were judge errors."""

    verdicts: int = 0
    errors: int = 0
    first_error: str = ""

    def count(self, verdicts: list[Verdict]) -> None:
        failed = [verdict for verdict in verdicts if verdict.failed]
        self.verdicts += len(verdicts)
        self.errors += len(failed)
        if failed and not self.first_error:
            self.first_error = failed[0].raw


# The SQLite file judges made now should cache their verdicts in (None: no caching), and the
# tally they count into.
_ACTIVE: ContextVar[Path | None] = ContextVar("alignparadox_verdict_cache", default=None)
_TALLY: ContextVar[JudgeTally | None] = ContextVar("alignparadox_judge_tally", default=None)


@contextmanager
def verdict_cache(sqlite_path: str | Path | None) -> Iterator[JudgeTally]:
    """Within the block, `make_judge` returns judges cached in `sqlite_path` (None: uncached)
    that count their verdicts and errors in the yielded tally."""
    tally = JudgeTally()
    token = _ACTIVE.set(Path(sqlite_path) if sqlite_path is not None else None)
    tally_token = _TALLY.set(tally)
    try:
        yield tally
    finally:
        _TALLY.reset(tally_token)
        _ACTIVE.reset(token)


def active_verdict_cache() -> Path | None:
    """The file `verdict_cache` made active here, if any."""
    return _ACTIVE.get()


class CachedJudge:
    """`judge` with memory: pairs it has seen before are answered from `sqlite_path`."""

    def __init__(self, judge: Judge, sqlite_path: str | Path):
        self.inner = judge
        self.name = judge.name
        self.config = getattr(judge, "config", {})
        self.path = Path(sqlite_path)
        self._fingerprint = judge_fingerprint(judge)
        self.hits = 0
        self.misses = 0
        # Taken now, not per call: the judge may be called from another thread of the cell.
        self._tally = _TALLY.get()
        with closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")  # as the results store: readers never block
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(str(self.path), timeout=30)
        # WAL with NORMAL sync stays consistent; a verdict lost in a power cut is only
        # recomputed, and a per-commit fsync would dominate judge calls made per search step.
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    def key(self, request: str, answer: str) -> str:
        content = json.dumps([self._fingerprint, request, answer], ensure_ascii=False)
        return hashlib.sha256(content.encode()).hexdigest()

    def judge(self, requests: list[str], answers: list[str]) -> list[Verdict]:
        if len(requests) != len(answers):
            raise ValueError("requests and answers must have the same length")
        keys = [self.key(*pair) for pair in zip(requests, answers, strict=True)]
        found = self._load(keys)
        # Each distinct missing pair is judged once, even if it repeats within the batch.
        missing = list({key: index for index, key in enumerate(keys) if key not in found}.items())
        if missing:
            fresh = self.inner.judge([requests[index] for _, index in missing],
                                     [answers[index] for _, index in missing])
            computed = {key: verdict for (key, _), verdict in zip(missing, fresh, strict=True)}
            self._store({key: verdict for key, verdict in computed.items()
                         if not verdict.failed})
            found.update(computed)
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        verdicts = [found[key] for key in keys]
        if self._tally is not None:
            self._tally.count(verdicts)
        return verdicts

    def _load(self, keys: list[str]) -> dict[str, Verdict]:
        unique = list(dict.fromkeys(keys))
        found: dict[str, Verdict] = {}
        with closing(self._connect()) as db:
            for start in range(0, len(unique), _CHUNK):
                chunk = unique[start:start + _CHUNK]
                rows = db.execute(
                    "SELECT key, label, refused, complied, harmfulness, raw FROM verdicts "
                    f"WHERE key IN ({','.join('?' * len(chunk))})", chunk,
                )
                for key, label, refused, complied, harmfulness, raw in rows:
                    found[key] = Verdict(label, bool(refused), bool(complied), harmfulness, raw)
        return found

    def _store(self, verdicts: dict[str, Verdict]) -> None:
        now = time.time()
        rows = [(key, self.name, v.label, int(v.refused), int(v.complied), v.harmfulness, v.raw,
                 now) for key, v in verdicts.items()]
        with closing(self._connect()) as db, db:
            db.executemany("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
