"""`paradox serve`: a real HTTP server on 127.0.0.1, queried with the official openai client."""

from __future__ import annotations

import contextlib

import httpx
import openai
import pytest
import torch

from alignparadox.attacks.model_tinkering import ActivationAddition, DirectionalAblation
from alignparadox.datasets import load_prompt_set
from alignparadox.errors import UserError
from alignparadox.geometry import Direction
from alignparadox.organisms.judge import GroundTruthJudge
from alignparadox.targets import GenerationConfig, load_target
from alignparadox.targets.random_models import make_random_model
from alignparadox.targets.serve import make_server, steering_context
from serving import running

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return load_target(make_random_model("llama", tmp_path_factory.mktemp("served")))


@pytest.fixture(scope="module")
def server(target):
    server = make_server(target, "127.0.0.1", 0)
    with running(server) as client:
        yield server, client


def test_chat_completion_equals_local_greedy_generation(target, server):
    _, client = server
    expected = target.complete([MESSAGES], GenerationConfig(max_new_tokens=12))[0]
    reply = client.chat.completions.create(model=target.name, messages=MESSAGES, max_tokens=12,
                                           temperature=0)
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == expected.finish_reason
    assert reply.usage.completion_tokens == len(expected.token_ids)
    assert reply.usage.prompt_tokens == len(target.token_ids(MESSAGES))


def test_streamed_chat_completion_equals_local_greedy_generation(target, server):
    _, client = server
    expected = target.generate([MESSAGES], GenerationConfig(max_new_tokens=12))[0]
    chunks = list(client.chat.completions.create(
        model=target.name, messages=MESSAGES, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12


def test_seeded_sampling_repeats_and_models_are_listed(target, server):
    _, client = server
    def ask(seed):
        return client.chat.completions.create(
            model=target.name, messages=MESSAGES, max_tokens=8, temperature=1.0, top_p=0.9,
            seed=seed).choices[0].message.content
    assert ask(3) == ask(3) != ask(4)
    assert [model.id for model in client.models.list()] == [target.name]


def test_bad_requests_get_openai_style_errors(target, server):
    httpd, client = server
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(model=target.name,
                                       messages=[{"role": "user", "content": "x" * 400}])
    with pytest.raises(openai.BadRequestError, match="frequency_penalty.*not supported"):
        client.chat.completions.create(model=target.name, messages=MESSAGES,
                                       frequency_penalty=0.5)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    with httpx.Client(base_url=httpd.base_url) as http:  # one keep-alive connection
        response = http.post("/chat/completions", content=b"{not json")
        assert response.status_code == 400
        assert "not valid JSON" in response.json()["error"]["message"]
        assert http.post("/nowhere", json={"a": 1}).status_code == 404
        assert http.get("/models").status_code == 200


def test_generation_context_wraps_every_generation(target):
    """The hook a steering option will use: here it pins the logits on the byte 'a'."""
    token = target.tokenizer.convert_tokens_to_ids("a")
    head = target.model.get_output_embeddings()

    @contextlib.contextmanager
    def favour_a():
        def hook(module, inputs, output):
            output[..., token] += 1e4
            return output
        handle = head.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    with running(make_server(target, "127.0.0.1", 0, generation_context=favour_a)) as client:
        reply = client.chat.completions.create(model=target.name, messages=MESSAGES,
                                               max_tokens=5, temperature=0)
    assert reply.choices[0].message.content == "aaaaa"
    assert not head._forward_hooks
    assert target.generate([MESSAGES], GenerationConfig(max_new_tokens=5))[0] != "aaaaa"
    assert torch.is_grad_enabled()



@pytest.mark.parametrize("steering", [{"alpha": -1.0}, {"ablate": True}])
def test_steered_server_answers_as_local_steered_generation(organism, refusal_direction,
                                                            steering):
    requests = [r.text for r in load_prompt_set("organisms").harmful().sample(3, 0)]
    config = GenerationConfig(max_new_tokens=24)
    loaded = Direction.load(refusal_direction)
    attack = (DirectionalAblation(loaded) if steering.get("ablate")
              else ActivationAddition(loaded, alpha=steering["alpha"]))
    plain = [organism.generate([request], config)[0] for request in requests]
    with attack.applied(organism) as attacked:
        expected = [attacked.generate([request], config)[0] for request in requests]

    context = steering_context(organism, refusal_direction, **steering)
    with running(make_server(organism, "127.0.0.1", 0, generation_context=context)) as client:
        def ask(request, **options):
            return client.chat.completions.create(
                model=organism.name, messages=[{"role": "user", "content": request}],
                max_tokens=24, temperature=0, **options)
        served = [ask(request).choices[0].message.content for request in requests]
        streamed = "".join(chunk.choices[0].delta.content or ""
                           for chunk in ask(requests[0], stream=True) if chunk.choices)
    assert served == expected and streamed == expected[0]
    # The steering is real: the aligned organism refuses these, steered it does not.
    judge = GroundTruthJudge()
    assert all(v.refused for v in judge.judge(requests, plain))
    assert not any(v.refused for v in judge.judge(requests, served))
    # ... and only inside the server's generations.
    assert [organism.generate([request], config)[0] for request in requests] == plain


def test_steering_options_are_checked(organism, refusal_direction, target, tmp_path, capsys):
    from alignparadox.cli import main

    with pytest.raises(UserError, match="width"):
        steering_context(target, refusal_direction, alpha=1.0)  # another model's direction
    with pytest.raises(UserError, match="layer"):
        steering_context(organism, refusal_direction, alpha=1.0, layer=99)
    with pytest.raises(UserError, match="does not exist"):
        steering_context(organism, tmp_path / "missing", ablate=True)
    for args, message in [(["--alpha", "1"], "steer along a --direction"),
                          (["--direction", str(refusal_direction)], "exactly one of"),
                          (["--direction", str(refusal_direction), "--alpha", "1", "--ablate"],
                           "exactly one of"),
                          (["--direction", str(refusal_direction), "--ablate", "--layer", "2"],
                           "--layer applies to --alpha only")]:
        with pytest.raises(SystemExit) as exit_:
            main(["serve", "organism:no-such-organism", "--port", "0", *args])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
