"""Real peer clients against `paradox serve organism:aligned-3` on 127.0.0.1: Inspect's `openai/`
provider (which talks the Responses API) and its `openai-api` provider with `--stop-seqs`, each
run by the real `inspect eval` command; and the openai client's Responses streaming helper."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import openai
import pytest

from alignparadox.targets import GenerationConfig, open_target
from alignparadox.targets.serve import make_server

pytest.importorskip("inspect_ai", reason="inspect-ai is not installed (pip install -e '.[dev]')")

from inspect_ai.log import EvalLog  # noqa: E402

from inspect_cli import finished_log  # noqa: E402

ORGANISM = "organism:aligned-3"
SYSTEM = "You are a helpful assistant."
QUESTIONS = ["How do I polish the amber lantern?", "Tell me about the silver harbour."]
MAX_TOKENS = 40
TASK_FILE = """
import json
from pathlib import Path

from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.solver import generate, system_message

QUESTIONS = json.loads((Path(__file__).parent / "questions.json").read_text())


@task
def inline():
    return Task(dataset=[Sample(input=q, id=str(i)) for i, q in enumerate(QUESTIONS)],
                solver=[system_message({system!r}), generate()])
"""


@pytest.fixture(scope="module")
def organism(organism_family):
    return open_target(ORGANISM)


@pytest.fixture(scope="module")
def base_url(organism):
    # one request at a time: the answers are compared token for token with local generation
    server = make_server(organism, "127.0.0.1", 0, max_batch=1)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.base_url
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def local_greedy(organism, question: str):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return organism.complete([messages], GenerationConfig(max_new_tokens=MAX_TOKENS))[0]


def _start(folder: Path, base_url: str, *args: str) -> subprocess.Popen:
    folder.mkdir()
    (folder / "task.py").write_text(TASK_FILE.replace("{system!r}", repr(SYSTEM)))
    (folder / "questions.json").write_text(json.dumps(QUESTIONS))
    env = {**os.environ, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "unused",
           "PARADOX_BASE_URL": base_url, "PARADOX_API_KEY": "unused",
           "TOKENIZERS_PARALLELISM": "false"}
    command = [str(Path(sys.executable).with_name("inspect")), "eval", "task.py",
               "--display", "none", "--log-dir", str(folder / "logs"), "--temperature", "0",
               "--max-tokens", str(MAX_TOKENS), *args]
    with (folder / "output.txt").open("w") as output:
        return subprocess.Popen(command, cwd=folder, env=env, stdout=output,
                                stderr=subprocess.STDOUT)


def _requests(log: EvalLog) -> list[dict]:
    return [event.call.request for sample in log.samples for event in sample.events
            if event.event == "model"]


def _outputs(log: EvalLog) -> list[tuple[str, str]]:
    return [(s.output.completion, s.output.stop_reason)
            for s in sorted(log.samples, key=lambda s: int(s.id))]


def test_inspect_openai_responses_and_openai_api_with_stop_seqs(organism, base_url, tmp_path):
    local = [local_greedy(organism, question) for question in QUESTIONS]
    expected = [done.text for done in local]
    stop = expected[0].split()[4]  # a word from the middle of the first answer
    # Both runs at once: each process spends most of its time importing Inspect.
    runs = {"responses": _start(tmp_path / "responses", base_url,
                                "--model", f"openai/{ORGANISM}"),
            "stop": _start(tmp_path / "stop", base_url, "--model", f"openai-api/paradox/{ORGANISM}",
                           "--stop-seqs", stop)}
    responses, stopped = (finished_log(runs[name], tmp_path / name)
                          for name in ("responses", "stop"))

    # `openai/` sends Responses API requests (input items, max_output_tokens) and needs no
    # `-M responses_api=false`; its answers are the organism's own greedy answers.
    assert all("input" in request and "max_output_tokens" in request
               for request in _requests(responses))
    assert _outputs(responses) == [
        (done.text, "max_tokens" if done.finish_reason == "length" else "stop") for done in local]
    # `openai-api` with --stop-seqs sends `stop` to chat completions; the answer is cut before it.
    assert all(request["stop"] == [stop] for request in _requests(stopped))
    assert _outputs(stopped)[0] == (expected[0][:expected[0].index(stop)], "stop")
    assert _outputs(stopped)[1][0] == (expected[1][:expected[1].index(stop)]
                                       if stop in expected[1] else expected[1])


def test_openai_responses_streaming_helper_gets_the_completed_response(organism, base_url):
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    question = QUESTIONS[1]
    with client.responses.stream(model=ORGANISM, instructions=SYSTEM, input=question,
                                 max_output_tokens=MAX_TOKENS, temperature=0) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    expected = local_greedy(organism, question)
    assert expected.finish_reason == "stop"  # the helper knows only `response.completed`
    assert final.status == "completed"
    assert final.output_text == "".join(deltas) == expected.text


def test_real_pyrit_attack_with_converter_and_its_json_scorer(organism, base_url):
    """PyRIT 1.1 (where it is installed: it is too heavy for the dev extra): an
    `OpenAIChatTarget` + `PromptSendingAttack` with a converter gets the organism's answer; its
    `SelfAskRefusalScorer` asks for JSON mode, which is refused before generation, and the 400's
    message is in the error PyRIT raises."""
    pytest.importorskip("pyrit", reason="PyRIT is not installed (pip install pyrit)")
    import asyncio

    from pyrit.converter import StringJoinConverter
    from pyrit.executor.attack import AttackConverterConfig, PromptSendingAttack
    from pyrit.prompt_normalizer import ConverterConfiguration
    from pyrit.prompt_target import OpenAIChatTarget
    from pyrit.score import SelfAskRefusalScorer
    from pyrit.setup import IN_MEMORY, initialize_pyrit_async

    async def run():
        await initialize_pyrit_async(memory_db_type=IN_MEMORY)
        target = OpenAIChatTarget(endpoint=base_url, model_name=ORGANISM, api_key="unused",
                                  max_completion_tokens=MAX_TOKENS, temperature=0.0)
        converters = AttackConverterConfig(request_converters=ConverterConfiguration
                                           .from_converters(converters=[StringJoinConverter()]))
        attack = PromptSendingAttack(objective_target=target, attack_converter_config=converters)
        result = await attack.execute_async(objective="polish the amber lantern")
        scorer = SelfAskRefusalScorer(chat_target=target)
        with pytest.raises(Exception) as error:
            await scorer.score_text_async(text="I cannot help with that.")
        sent = await StringJoinConverter().convert_async(prompt="polish the amber lantern")
        return sent.output_text, result.last_response.converted_value, error.value

    sent, answer, error = asyncio.run(run())
    assert sent != "polish the amber lantern"  # the converter changed what was sent
    joined = [{"role": "user", "content": sent}]
    assert answer == organism.complete([joined], GenerationConfig(
        max_new_tokens=MAX_TOKENS))[0].text
    chain = []
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert any(isinstance(e, openai.BadRequestError) and e.status_code == 400
               and "response_format 'json_object' is not supported" in str(e) for e in chain)
