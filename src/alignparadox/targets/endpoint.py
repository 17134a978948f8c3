"""A black-box target: any OpenAI-compatible chat-completions endpoint.

`EndpointTarget.generate` mirrors the white-box target: a batch of prompts (a string is one user
turn; a list of {"role", "content"} dicts is a whole conversation) and a sampling config in,
answers out, in order. Between the two sit a concurrency limit, a requests-per-minute limit,
retries with exponential backoff and jitter on 429 / 5xx / timeouts / dropped connections
(honouring Retry-After), and an optional SQLite response cache.

Sampled requests are cached only when seeded; with a seed, position i of a batch is sent seed + i
(the server's seed support is best-effort, as in the OpenAI API).

Every prompt ends with exactly one result: its answer, or an `EndpointError` that says why it
failed after the last retry. Nothing is dropped and nothing is doubled. Inside a study cell,
callers count the results into `endpoint_tally()`, so that a dead endpoint fails the cell instead
of leaving rates over nothing.

The API key is read from the named environment variable at each request and only ever placed in
the Authorization header: it is not kept on the object, not part of cache keys, reprs or error
messages. If the variable is unset no Authorization header is sent (local servers need none).
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.progress import Progress

Prompt = str | list[dict]

# Status codes worth another attempt: rate limited, request timeout, conflict, server errors.
_RETRYABLE_STATUS = {408, 409, 429}
# Never wait longer than this for one Retry-After, whatever the server asks.
_MAX_RETRY_AFTER = 600.0
# Statuses that refuse one request for what it says (too long, filtered): a fact about that
# prompt, answered the same on every rerun, not a sign the endpoint is down.
_REQUEST_REJECTED = {400, 413, 422}


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample. Any object with these attributes (the white-box config included) works."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


class EndpointError(Exception):
    """One request that failed for good: after its last retry, or on a non-retryable status."""

    def __init__(self, message: str, *, index: int, status: int | None = None, attempts: int = 0):
        super().__init__(message)
        self.message = message
        self.index = index
        self.status = status
        self.attempts = attempts

    def __repr__(self) -> str:
        return (f"EndpointError(index={self.index}, status={self.status}, "
                f"attempts={self.attempts}, message={self.message!r})")

    @property
    def rejected(self) -> bool:
        """The server refused this one request (not unreachable, not failing)."""
        return self.status in _REQUEST_REJECTED


@dataclass
class EndpointTally:
    """Requests a study cell sent to endpoint targets, and how many failed for good (dead,
    timing out or failing server; requests the server rejected for their content excluded)."""

    requests: int = 0
    failed: int = 0
    first_error: str = ""

    def count(self, results: Sequence[str | EndpointError]) -> None:
        failed = [r for r in results if isinstance(r, EndpointError) and not r.rejected]
        self.requests += len(results)
        self.failed += len(failed)
        if failed and not self.first_error:
            self.first_error = failed[0].message


_TALLY: ContextVar[EndpointTally | None] = ContextVar("alignparadox_endpoint_tally",
                                                      default=None)


@contextmanager
def endpoint_tally() -> Iterator[EndpointTally]:
    """Within the block, `count_endpoint_results` counts into the yielded tally."""
    tally = EndpointTally()
    token = _TALLY.set(tally)
    try:
        yield tally
    finally:
        _TALLY.reset(token)


def count_endpoint_results(results: Sequence[str | EndpointError]) -> None:
    """Count a target's results into the active `endpoint_tally` (outside one: nothing)."""
    tally = _TALLY.get()
    if tally is not None:
        tally.count(results)


class EndpointBatchError(Exception):
    """Raised by `generate` when some requests failed; `results` holds every outcome in order."""

    def __init__(self, results: list[str | EndpointError]):
        self.results = results
        self.errors = [result for result in results if isinstance(result, EndpointError)]
        first = self.errors[0]
        super().__init__(f"{len(self.errors)} of {len(results)} requests failed; "
                         f"first: request {first.index}: {first.message}")


class _RateLimiter:
    """Spaces request starts evenly: at most `per_minute` starts in any minute, no bursts."""

    def __init__(self, per_minute: float):
        if not per_minute > 0:
            raise ValueError("requests_per_minute must be positive")
        self._interval = 60.0 / per_minute
        self._next_start = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + self._interval
        if start > now:
            time.sleep(start - now)


class _ResponseCache:
    """answers by request hash in an `endpoint_responses` table of a SQLite file."""

    def __init__(self, path: str | Path):
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
        with self._lock, self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS endpoint_responses "
                "(key TEXT PRIMARY KEY, model TEXT NOT NULL, answer TEXT NOT NULL, "
                "created REAL NOT NULL)"
            )

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT answer FROM endpoint_responses WHERE key = ?", (key,)
            ).fetchone()
        return row[0] if row else None

    def put(self, key: str, model: str, answer: str) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO endpoint_responses VALUES (?, ?, ?, ?)",
                (key, model, answer, time.time()),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


class EndpointTarget:
    """A chat model behind an OpenAI-compatible `/chat/completions` API."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 4,
        requests_per_minute: float | None = None,
        max_retries: int = 5,
        timeout: float = 60,
        cache_path: str | Path | None = None,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.requests_per_minute = requests_per_minute
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._limiter = (_RateLimiter(requests_per_minute) if requests_per_minute is not None
                         else None)
        self._cache = _ResponseCache(cache_path) if cache_path is not None else None
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    def __repr__(self) -> str:
        return (f"EndpointTarget(base_url={self.base_url!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r}, concurrency={self.concurrency})")

    @property
    def name(self) -> str:
        return f"endpoint:{self.base_url}#{self.model}"

    def __enter__(self) -> EndpointTarget:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()
        if self._cache is not None:
            self._cache.close()

    def generate(self, prompts: list[Prompt], config: Any = None) -> list[str]:
        """Answers in prompt order; on any failure raises `EndpointBatchError` with all results."""
        results = self.generate_results(prompts, config)
        if any(isinstance(result, EndpointError) for result in results):
            raise EndpointBatchError(results)
        return results  # type: ignore[return-value]

    def generate_results(
        self, prompts: list[Prompt], config: Any = None
    ) -> list[str | EndpointError]:
        """One result per prompt, in order: the answer, or the `EndpointError` that ended it."""
        config = config if config is not None else SamplingConfig()
        bodies = [self._request_body(prompt, config, index) for index, prompt in enumerate(prompts)]
        cacheable = self._cache is not None and (
            not getattr(config, "do_sample", False) or getattr(config, "seed", None) is not None
        )
        results: list[str | EndpointError | None] = [None] * len(prompts)
        keys = [self._cache_key(body) for body in bodies]
        pending = []
        for index, key in enumerate(keys):
            cached = self._cache.get(key) if cacheable else None
            if cached is None:
                pending.append(index)
            else:
                results[index] = cached

        def run(index: int) -> None:
            outcome = self._send(bodies[index], index)
            if cacheable and isinstance(outcome, str):
                self._cache.put(keys[index], self.model, outcome)
            results[index] = outcome

        if pending:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(pending))) as pool:
                futures = [pool.submit(run, index) for index in pending]
                _wait_with_progress(futures, f"querying {self.model}")
                for future in futures:
                    future.result()  # re-raise bugs in this module instead of losing a result
        return results  # type: ignore[return-value]

    def _request_body(self, prompt: Prompt, config: Any, index: int) -> dict:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        do_sample = bool(getattr(config, "do_sample", False))
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": int(getattr(config, "max_new_tokens", 256)),
            # Greedy decoding is temperature 0 in the OpenAI API.
            "temperature": float(getattr(config, "temperature", 1.0)) if do_sample else 0.0,
            "top_p": float(getattr(config, "top_p", 1.0)) if do_sample else 1.0,
        }
        seed = getattr(config, "seed", None)
        if seed is not None:
            # Like one seeded generator serving a whole batch: each position draws its own
            # sample, so a prompt repeated N times gives N samples, reproducibly.
            body["seed"] = int(seed) + index if do_sample else int(seed)
        return body

    def _cache_key(self, body: dict) -> str:
        # The body never carries the key (it travels in a header), so hashing it is safe.
        canonical = json.dumps({"base_url": self.base_url, "body": body}, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def _headers(self) -> dict[str, str]:
        api_key = os.environ.get(self.api_key_env)
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _redact(self, text: str) -> str:
        api_key = os.environ.get(self.api_key_env)
        return text.replace(api_key, "[redacted]") if api_key else text

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        # Full jitter: uniform in [0, base * 2^attempt], so retrying clients spread out.
        delay = random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))
        if retry_after is not None:
            delay = max(delay, min(retry_after, _MAX_RETRY_AFTER))
        return delay

    def _send(self, body: dict, index: int) -> str | EndpointError:
        url = f"{self.base_url}/chat/completions"
        problem, status = "", None
        for attempt in range(self.max_retries + 1):
            if self._limiter is not None:
                self._limiter.wait()
            retry_after = None
            try:
                response = self._client.post(url, json=body, headers=self._headers())
            except httpx.TimeoutException:
                problem, status = f"timed out after {self.timeout}s", None
            except httpx.TransportError as error:  # refused, reset, or dropped mid-response
                problem, status = f"connection failed: {type(error).__name__}", None
            else:
                status = response.status_code
                if status == 200:
                    answer = _answer_text(response)
                    if answer is not None:
                        return answer
                    problem = "malformed response: no choices[0].message.content"
                elif status in _RETRYABLE_STATUS or status >= 500:
                    problem = f"HTTP {status}: {response.text[:200]}"
                    retry_after = _retry_after_seconds(response.headers.get("retry-after"))
                else:  # 400, 401, 404...: retrying cannot help
                    return EndpointError(self._redact(f"HTTP {status}: {response.text[:200]}"),
                                         index=index, status=status, attempts=attempt + 1)
            if attempt < self.max_retries:
                time.sleep(self._backoff(attempt, retry_after))
        return EndpointError(self._redact(problem), index=index, status=status,
                             attempts=self.max_retries + 1)


def _answer_text(response: httpx.Response) -> str | None:
    try:
        message = response.json()["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    if content is None:  # some APIs put a declined request in a separate `refusal` field
        content = message.get("refusal")
    return content if isinstance(content, str) else None


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _wait_with_progress(futures: list[Future], description: str) -> None:

    with Progress(transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task(description, total=len(futures))
        for _ in as_completed(futures):
            progress.advance(task)
