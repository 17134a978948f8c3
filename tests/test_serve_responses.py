"""`POST /v1/responses` (OpenAI's Responses API) through the real openai client on 127.0.0.1,
against local generation on the same random tiny Llama: string and message-list input,
`instructions`, `max_output_tokens`, streaming, logprobs, seeds, and fields this server does not
implement refused with a 400 naming them before anything is generated."""

from __future__ import annotations

import openai
import pytest

from alignparadox.targets import GenerationConfig, load_target
from alignparadox.targets.random_models import make_random_model
from alignparadox.targets.serve import make_server
from serving import running

PROMPT = "Tell me a story."
USER = [{"role": "user", "content": PROMPT}]


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return load_target(make_random_model("llama", tmp_path_factory.mktemp("responses")))


@pytest.fixture(scope="module")
def served(target):
    server = make_server(target, "127.0.0.1", 0)
    submitted = []
    submit = server.worker.submit
    server.worker.submit = lambda job: (submitted.append(job), submit(job))[1]
    with running(server) as client:
        yield client, submitted


@pytest.fixture
def client(served):
    return served[0]


def local(target, messages, max_tokens, **config):
    return target.complete([messages], GenerationConfig(max_new_tokens=max_tokens, **config))[0]


def test_string_and_message_input_with_instructions_are_the_local_answer(target, client):
    expected = local(target, USER, 9)
    reply = client.responses.create(model=target.name, input=PROMPT, max_output_tokens=9,
                                    temperature=0)
    assert reply.object == "response" and reply.id.startswith("resp_")
    assert reply.output_text == expected.text
    assert reply.usage.output_tokens == len(expected.token_ids) == 9
    assert reply.usage.input_tokens == len(target.token_ids(USER))
    # cut by max_output_tokens: incomplete, as OpenAI reports it
    assert reply.status == "incomplete"
    assert reply.incomplete_details.reason == "max_output_tokens"
    (message,) = reply.output
    assert message.type == "message" and message.role == "assistant"

    system = [{"role": "system", "content": "Be brief."}, *USER]
    expected = local(target, system, 6).text
    as_instructions = client.responses.create(model=target.name, instructions="Be brief.",
                                              input=PROMPT, max_output_tokens=6, temperature=0)
    parts = client.responses.create(model=target.name, max_output_tokens=6, temperature=0, input=[
        {"type": "message", "role": "developer",
         "content": [{"type": "input_text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "input_text", "text": PROMPT}]}])
    assert as_instructions.output_text == parts.output_text == expected
    assert as_instructions.instructions == "Be brief."

    # a multi-turn conversation, the earlier answer replayed as OpenAI returned it
    turns = [*USER, {"role": "assistant", "content": "Once."}, {"role": "user", "content": "More"}]
    again = client.responses.create(model=target.name, max_output_tokens=5, temperature=0, input=[
        *USER, {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
                "content": [{"type": "output_text", "text": "Once.", "annotations": []}]},
        {"role": "user", "content": "More"}])
    assert again.output_text == local(target, turns, 5).text


def test_streamed_events_add_up_to_the_answer(target, client):
    expected = local(target, USER, 10).text
    events = list(client.responses.create(model=target.name, input=PROMPT, max_output_tokens=10,
                                          temperature=0, stream=True))
    kinds = [event.type for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.incomplete"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == expected
    assert events[-1].response.output_text == expected
    assert events[-1].response.usage.output_tokens == 10
    assert len({e.item_id for e in events if hasattr(e, "item_id")}) == 1


def test_logprobs_and_seeded_sampling(target, client):
    reply = client.responses.create(model=target.name, input=PROMPT, max_output_tokens=4,
                                    temperature=0, top_logprobs=2,
                                    include=["message.output_text.logprobs"])
    logprobs = reply.output[0].content[0].logprobs
    assert len(logprobs) == 4 and all(len(item.top_logprobs) == 2 for item in logprobs)
    assert logprobs[0].top_logprobs[0].token == logprobs[0].token
    assert b"".join(bytes(item.bytes) for item in logprobs).decode(errors="replace") \
        == reply.output_text

    def sample(seed):  # `seed` is this server's extension: the Responses API has none
        return client.responses.create(model=target.name, input=PROMPT, max_output_tokens=8,
                                       temperature=1.0, extra_body={"seed": seed}).output_text

    assert sample(5) == sample(5) == local(target, USER, 8, do_sample=True, seed=5).text


def test_what_is_not_implemented_is_refused_before_generation(target, served):
    client, submitted = served
    before = len(submitted)

    def refused(**fields):
        with pytest.raises(openai.BadRequestError) as error:
            client.responses.create(model=target.name, **{"input": PROMPT, **fields})
        return error.value.body

    body = refused(tools=[{"type": "web_search"}], previous_response_id="resp_1",
                   extra_body={"frobnicate": 1})
    assert body["code"] == "unsupported_parameter" and body["param"] == "frobnicate"
    for name in ("'frobnicate'", "'tools'", "'previous_response_id'"):
        assert name in body["message"]
    assert refused(reasoning={"effort": "low"})["param"] == "reasoning"
    assert refused(background=True)["param"] == "background"
    assert refused(extra_body={"n": 2})["param"] == "n"  # no `n` in the Responses API
    for kind in ("json_object", "json_schema"):
        body = refused(text={"format": {"type": kind, "name": "x", "schema": {}}})
        assert body["param"] == "text.format"
        assert "cannot constrain generation to JSON" in body["message"]
    assert refused(input=[{"role": "banana", "content": "hi"}])["param"] == "input[0].role"
    assert refused(input=[{"type": "function_call_output", "call_id": "c", "output": "x"}]
                   )["param"] == "input[0].type"
    assert refused(input=[{"role": "user", "content": [
        {"type": "input_image", "image_url": "data:,"}]}])["param"] == "input[0].content[0]"
    assert refused(max_output_tokens=0)["param"] == "max_output_tokens"
    assert refused(input="x " * 5000)["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError) as error:
        client.responses.create(model="gpt-4o-mini", input=PROMPT)
    assert error.value.code == "model_not_found"
    assert len(submitted) == before  # nothing reached the generation worker
    # fields that cannot change the answer are accepted
    ok = client.responses.create(model=target.name, input=PROMPT, max_output_tokens=2,
                                 temperature=0, store=False, metadata={"run": "1"},
                                 include=["reasoning.encrypted_content"], truncation="disabled",
                                 text={"format": {"type": "text"}})
    assert ok.output_text == local(target, USER, 2).text and len(submitted) == before + 1
