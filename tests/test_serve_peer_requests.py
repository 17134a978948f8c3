"""Peer tools' exact requests, replayed against `paradox serve` on an organism.

garak and PyRIT are too heavy to install in CI's time, so each fixture in tests/fixtures/ holds
the request bodies the real tool sent to `paradox serve` (captured once by a recording proxy; the
tool versions and settings are in each file). The README gives the recipes. Inspect (a dev
dependency) and, where installed, PyRIT also run for real in test_serve_peer_clients.py.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from alignparadox.targets import GenerationConfig, open_target
from alignparadox.targets.serve import make_server

FIXTURES = Path(__file__).parent / "fixtures"
ORGANISM = "organism:aligned-3"  # the model name in every captured request


def requests_of(name: str) -> list[dict]:
    data = json.loads((FIXTURES / name).read_text())
    return data.get("requests", [data])


@pytest.fixture(scope="module")
def organism(organism_family):
    return open_target(ORGANISM)


@pytest.fixture(scope="module")
def http(organism):
    server = make_server(organism, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=server.base_url.removesuffix("/v1"), timeout=120) as client:
            yield client
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def local_greedy(organism, body: dict) -> str:
    config = GenerationConfig(max_new_tokens=body.get("max_completion_tokens")
                              or body["max_tokens"])
    return organism.complete([body["messages"]], config)[0].text


def test_garak_default_request_gets_a_real_generation(http):
    """garak's OpenAICompatible sends stop ["#", ";"] and zero penalties by default; each of
    its generations must come back as text (garak records None for a failed one)."""
    (request,) = requests_of("garak_chat_request.json")
    assert request["body"]["stop"] == ["#", ";"]
    with ThreadPoolExecutor(3) as pool:  # garak --parallel_attempts; batched by the server
        replies = list(pool.map(lambda _: http.post(request["path"], json=request["body"]),
                                range(3)))
    assert [reply.status_code for reply in replies] == [200, 200, 200]
    for reply in replies:
        choice = reply.json()["choices"][0]
        assert choice["message"]["content"].strip()
        assert not {"#", ";"} & set(choice["message"]["content"])
        assert choice["finish_reason"] in ("stop", "length")


def test_pyrit_attack_is_answered_and_its_json_scorer_is_refused_clearly(http, organism):
    attack, scorer = requests_of("pyrit_chat_requests.json")
    reply = http.post(attack["path"], json=attack["body"])
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["content"] == local_greedy(organism,
                                                                          attack["body"])
    assert scorer["body"]["response_format"] == {"type": "json_object"}
    refused = http.post(scorer["path"], json=scorer["body"])
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "response_format" and error["type"] == "invalid_request_error"
    assert "cannot constrain generation to JSON" in error["message"]


def test_inspect_stop_seqs_are_honoured(http, organism):
    for request in requests_of("inspect_chat_requests.json"):
        (stop,) = request["body"]["stop"]
        reply = http.post(request["path"], json=request["body"])
        assert reply.status_code == 200
        full = local_greedy(organism, request["body"])
        content = reply.json()["choices"][0]["message"]["content"]
        assert content == (full[:full.index(stop)] if stop in full else full)
        assert reply.json()["choices"][0]["finish_reason"] == "stop"
