"""`paradox serve` as a real process: the official openai client and the StrongREJECT rubric
judge talk to it over HTTP on 127.0.0.1, exactly as black-box tools would."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from alignparadox.datasets.registry import load_prompt_set
from alignparadox.judges.base import JUDGE_ERROR, UNPARSEABLE
from alignparadox.judges.registry import make_judge
from alignparadox.targets import GenerationConfig, open_target

ORGANISM = "organism:aligned-5"
_URL = re.compile(r"at (http://127\.0\.0\.1:\d+/v1)")


@contextlib.contextmanager
def paradox_serve(spec: str, log: Path) -> Iterator[str]:
    """Run `paradox serve SPEC --port 0` until the block ends; yield its base URL once ready."""
    command = [sys.executable, "-m", "alignparadox.cli", "serve", spec, "--port", "0"]
    environment = {**os.environ, "COLUMNS": "400"}  # keep the "serving ... at URL" line whole
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                   env=environment)
    try:
        yield _wait_until_ready(process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_ready(process: subprocess.Popen, log: Path, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"paradox serve exited early:\n{log.read_text()}"
        found = _URL.search(log.read_text(errors="replace"))
        if found:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(found.group(1) + "/models", timeout=5).status_code == 200:
                    return found.group(1)
        time.sleep(0.2)
    raise AssertionError(f"paradox serve was not ready in {timeout:.0f} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def organism_server(organism_family, tmp_path_factory) -> Iterator[str]:
    with paradox_serve(ORGANISM, tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


@pytest.fixture(scope="module")
def requests() -> list[str]:
    """One held-out harmful and one harmless request of the organism world."""
    heldout = load_prompt_set("organisms")
    return [heldout.harmful().records[0].text, heldout.harmless().records[0].text]


def test_openai_client_gets_the_local_greedy_answer(organism_server, requests):
    local = open_target(ORGANISM)
    client = openai.OpenAI(base_url=organism_server, api_key="unused", max_retries=0,
                           timeout=120)
    assert [model.id for model in client.models.list()] == [ORGANISM]
    for request in requests:
        messages = [{"role": "user", "content": request}]
        expected = local.complete([messages], GenerationConfig(max_new_tokens=60))[0]
        assert expected.text.strip()
        reply = client.chat.completions.create(model=ORGANISM, messages=messages,
                                               max_tokens=60, temperature=0)
        assert reply.choices[0].message.content == expected.text
        assert reply.choices[0].finish_reason == expected.finish_reason
        chunks = client.chat.completions.create(model=ORGANISM, messages=messages,
                                                max_tokens=60, temperature=0, stream=True)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == expected.text


def test_rubric_judge_against_the_organism_server_records_every_pair(organism_server,
                                                                     requests):
    """The rubric prompt (~1,600 organism tokens) does not fit the organism's 256-token window:
    the server refuses it with a 400, and the judge records a judge error per pair."""
    judge = make_judge(f"strongreject:{organism_server}#{ORGANISM}")
    answers = ["Sure. Step 1: find the fictional vault.", "I can't help with that."]
    verdicts = judge.judge(requests, answers)
    assert [v.label for v in verdicts] == [JUDGE_ERROR, JUDGE_ERROR]
    assert all("context" in v.raw for v in verdicts)
    assert not any(v.success or v.complied or v.refused for v in verdicts)


def test_rubric_judge_records_organism_output_as_unparseable(organism_family, tmp_path,
                                                             requests):
    """The same organism with its position limit raised (same weights) reads the whole rubric
    prompt; what it writes has no `#scores` block, so every verdict is unparseable."""
    folder = tmp_path / "aligned-5-long"
    shutil.copytree(organism_family.path_of("aligned-5"), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))
    with paradox_serve(str(folder), tmp_path / "serve.log") as url:
        judge = make_judge(f"strongreject:{url}#{folder.name}")
        answers = ["Sure. Step 1: find the fictional vault.", "I can't help with that."]
        verdicts = judge.judge(requests, answers)
    assert [v.label for v in verdicts] == [UNPARSEABLE, UNPARSEABLE]
    assert all(v.raw for v in verdicts)  # the organism's own text, kept for audit
    assert not any(v.success or v.complied or v.refused or v.harmfulness for v in verdicts)
