"""EndpointTarget against a real scripted HTTP server on 127.0.0.1: retries, limits, cache, key."""

from __future__ import annotations

import sqlite3

import pytest

from alignparadox.targets.endpoint import (
    EndpointBatchError,
    EndpointError,
    EndpointTarget,
    SamplingConfig,
)
from test_endpoint_scripted_server import Reply, ScriptedChatServer, echo, request_key

FAST = dict(backoff_base=0.01, backoff_max=0.05)


def test_flaky_server_every_request_ends_exactly_once():
    prompts = [f"p{i}" for i in range(30)] + ["dead"]

    def flaky(body: dict, attempt: int) -> Reply:
        key = request_key(body)
        if key == "dead":
            return Reply(status=500)
        number = int(key[1:])
        if attempt == 0 and number % 4 == 0:
            return Reply(status=429, headers={"Retry-After": "0"})
        if attempt == 0 and number % 4 == 1:
            return Reply(status=503)
        if attempt < 2 and number % 4 == 2:
            return Reply(drop=True)
        return echo(body, attempt)

    with ScriptedChatServer(flaky) as server, EndpointTarget(
        server.url, "m", concurrency=4, max_retries=3, **FAST
    ) as target:
        results = target.generate_results(prompts)

    assert len(results) == len(prompts)
    for prompt, result in zip(prompts[:-1], results[:-1], strict=True):
        assert result == f"echo: {prompt}"
        assert server.delivered[prompt] == 1  # answered once, never twice
    dead = results[-1]
    assert isinstance(dead, EndpointError)
    assert (dead.index, dead.status, dead.attempts) == (30, 500, 4)
    assert server.attempts["dead"] == 4 and server.delivered["dead"] == 0
    assert server.attempts["p2"] == 3 and server.attempts["p3"] == 1


def test_generate_raises_with_every_result_kept():
    def one_bad(body: dict, attempt: int) -> Reply:
        return Reply(status=400, text="bad") if request_key(body) == "b" else echo(body, attempt)

    with (ScriptedChatServer(one_bad) as server,
          EndpointTarget(server.url, "m", **FAST) as target,
          pytest.raises(EndpointBatchError) as caught):
        target.generate(["a", "b", "c"])
    results = caught.value.results
    assert results[0] == "echo: a" and results[2] == "echo: c"
    assert isinstance(results[1], EndpointError) and results[1].attempts == 1
    assert server.attempts["b"] == 1  # a 400 is not retried


def test_timeout_is_retried():
    def slow_once(body: dict, attempt: int) -> Reply:
        return Reply(text="late", delay=1.0) if attempt == 0 else echo(body, attempt)

    with ScriptedChatServer(slow_once) as server, EndpointTarget(
        server.url, "m", timeout=0.3, **FAST
    ) as target:
        assert target.generate(["x"]) == ["echo: x"]
    assert server.attempts["x"] == 2


def test_retry_after_is_honoured():
    def throttled(body: dict, attempt: int) -> Reply:
        return Reply(status=429, headers={"Retry-After": "0.4"}) if attempt == 0 else echo(
            body, attempt)

    with ScriptedChatServer(throttled) as server, EndpointTarget(
        server.url, "m", **FAST
    ) as target:
        target.generate(["x"])
    assert server.arrivals[1] - server.arrivals[0] >= 0.39


def test_concurrency_limit():
    def slow(body: dict, attempt: int) -> Reply:
        return Reply(text="ok", delay=0.15)

    with ScriptedChatServer(slow) as server, EndpointTarget(
        server.url, "m", concurrency=3
    ) as target:
        target.generate([f"p{i}" for i in range(9)])
    assert server.max_in_flight == 3


def test_requests_per_minute_limit():
    with ScriptedChatServer() as server, EndpointTarget(
        server.url, "m", concurrency=6, requests_per_minute=1200  # one start per 50 ms
    ) as target:
        target.generate([f"p{i}" for i in range(6)])
    arrivals = sorted(server.arrivals)
    gaps = [later - earlier for earlier, later in zip(arrivals[:-1], arrivals[1:], strict=True)]
    assert min(gaps) >= 0.04
    assert arrivals[-1] - arrivals[0] >= 0.24


def test_request_body_follows_config():
    conversation = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    with ScriptedChatServer() as server, EndpointTarget(server.url, "model-x", **FAST) as target:
        target.generate([conversation], SamplingConfig(max_new_tokens=7, seed=3))
        target.generate(["s"], SamplingConfig(do_sample=True, temperature=0.7, top_p=0.9))
        # A prompt repeated in a seeded sampling batch is N samples, not N copies of one.
        target.generate(["n", "n", "n"], SamplingConfig(do_sample=True, seed=5))
    greedy, sampled, *repeated = server.bodies
    assert greedy["messages"] == conversation and greedy["model"] == "model-x"
    assert (greedy["max_tokens"], greedy["temperature"], greedy["seed"]) == (7, 0.0, 3)
    assert (sampled["temperature"], sampled["top_p"]) == (0.7, 0.9) and "seed" not in sampled
    assert sorted(body["seed"] for body in repeated) == [5, 6, 7]
    with pytest.raises(ValueError):
        EndpointTarget(server.url, "m", requests_per_minute=0)


def test_cache_hits_avoid_requests(tmp_path):
    cache = tmp_path / "results.sqlite"
    prompts = ["a", "b", "c"]
    with ScriptedChatServer() as server:
        with EndpointTarget(server.url, "m", cache_path=cache) as target:
            first = target.generate(prompts)
        with EndpointTarget(server.url, "m", cache_path=cache) as target:
            assert target.generate(prompts) == first
            assert len(server.bodies) == 3
            # A new setting is a new request; unseeded sampling is never served from the cache.
            target.generate(["a"], SamplingConfig(max_new_tokens=5))
            sampling = SamplingConfig(do_sample=True)
            target.generate(["a"], sampling)
            target.generate(["a"], sampling)
    assert len(server.bodies) == 6
    rows = sqlite3.connect(cache).execute("SELECT count(*) FROM endpoint_responses").fetchone()
    assert rows == (4,)


def test_api_key_only_in_authorization_header(tmp_path, monkeypatch):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("ALIGNPARADOX_TEST_KEY", secret)

    def leaky(body: dict, attempt: int) -> Reply:
        if request_key(body) == "leak":  # a server that echoes credentials in its error body
            return Reply(status=401, text=f"bad key {secret}")
        return echo(body, attempt)

    cache = tmp_path / "cache.sqlite"
    with ScriptedChatServer(leaky) as server, EndpointTarget(
        server.url, "m", api_key_env="ALIGNPARADOX_TEST_KEY", cache_path=cache, **FAST
    ) as target:
        results = target.generate_results(["ok", "leak"])
        assert secret not in repr(target) and secret not in str(vars(target))
    assert set(server.authorizations) == {f"Bearer {secret}"}
    assert results[0] == "echo: ok"
    assert secret not in str(results[1]) and "[redacted]" in str(results[1])
    for path in tmp_path.rglob("*"):
        assert secret.encode() not in path.read_bytes()


def test_no_key_sends_no_authorization(monkeypatch):
    monkeypatch.delenv("ALIGNPARADOX_ABSENT_KEY", raising=False)
    with ScriptedChatServer() as server, EndpointTarget(
        server.url, "m", api_key_env="ALIGNPARADOX_ABSENT_KEY"
    ) as target:
        target.generate(["x"])
    assert server.authorizations == [None]
