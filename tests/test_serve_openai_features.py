"""What peers send to `paradox serve`, through the real openai client on 127.0.0.1: stop strings,
n > 1, logprobs, seeds, max_completion_tokens, roles, model names, /v1/completions, JSON mode,
and 64 concurrent clients, against local generation on the same random tiny Llama."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch

from alignparadox.targets import GenerationConfig, load_target
from alignparadox.targets.random_models import make_random_model
from alignparadox.targets.serve import make_server
from serving import running

USER = [{"role": "user", "content": "Tell me a story."}]


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return load_target(make_random_model("llama", tmp_path_factory.mktemp("features")))


@pytest.fixture(scope="module")
def client(target):
    with running(make_server(target, "127.0.0.1", 0)) as client:
        yield client


def local(target, prompt, max_tokens=24, **kwargs):
    return target.complete([prompt], GenerationConfig(max_new_tokens=max_tokens), **kwargs)[0]


def test_stop_strings_cut_the_answer_before_them_also_when_streamed(target, client):
    full = local(target, USER).text
    stop = full[6:8]  # some text from the middle of the greedy answer
    expected = full[:full.index(stop)]
    reply = client.chat.completions.create(model=target.name, messages=USER, max_tokens=24,
                                           temperature=0, stop=[stop, "never-there"])
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == "stop"
    chunks = client.chat.completions.create(model=target.name, messages=USER, max_tokens=24,
                                            temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    unmatched = client.chat.completions.create(model=target.name, messages=USER, max_tokens=24,
                                               temperature=0, stop=["never-there"])
    assert unmatched.choices[0].message.content == full
    assert unmatched.choices[0].finish_reason == "length"


def test_n_choices_are_seeded_per_choice_and_reproducible(target, client):
    def ask(n, seed):
        reply = client.chat.completions.create(model=target.name, messages=USER, max_tokens=10,
                                               temperature=1.0, n=n, seed=seed)
        assert [choice.index for choice in reply.choices] == list(range(n))
        return [choice.message.content for choice in reply.choices]

    three = ask(3, 11)
    assert three == ask(3, 11) and len(set(three)) == 3
    assert ask(1, 11) == three[:1] and ask(1, 12) == three[1:2]
    sampled = target.complete([USER], GenerationConfig(max_new_tokens=10, do_sample=True,
                                                       seed=11))[0]
    assert three[0] == sampled.text
    chunks = client.chat.completions.create(model=target.name, messages=USER, max_tokens=10,
                                            temperature=1.0, n=3, seed=11, stream=True)
    streamed = ["", "", ""]
    for chunk in chunks:
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert streamed == three


def test_bad_serving_options_get_one_sentence_and_exit_2(capsys):
    from alignparadox.cli import main

    for args, message in [(["--max-batch", "0"], "--max-batch must be at least 1"),
                          (["--threads", "0"], "--threads must be at least 1"),
                          (["--port", "70000"], "--port must be between 0 and 65535")]:
        with pytest.raises(SystemExit) as exit_:
            main(["serve", "organism:no-such-organism", *args])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


def test_logprobs_are_the_model_s_own(target, client):
    reply = client.chat.completions.create(model=target.name, messages=USER, max_tokens=5,
                                           temperature=0, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens == 5
    expected = torch.log_softmax(target.next_token_logits([USER])[0], -1)
    first = content[0]
    assert first.logprob == pytest.approx(float(expected.max()), abs=1e-4)
    assert first.top_logprobs[0].token == first.token
    assert [t.logprob for t in first.top_logprobs] == sorted(
        (t.logprob for t in first.top_logprobs), reverse=True)
    assert b"".join(bytes(item.bytes) for item in content).decode(errors="replace") \
        == reply.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="needs logprobs"):
        client.chat.completions.create(model=target.name, messages=USER, top_logprobs=2)


def test_roles_and_model_names(target, client):
    def ask(messages, **options):
        return client.chat.completions.create(model=target.name, messages=messages,
                                              max_tokens=8, temperature=0, **options)

    as_system = ask([{"role": "system", "content": "Be brief."}, *USER])
    as_developer = ask([{"role": "developer", "content": "Be brief."}, *USER])
    assert as_developer.choices[0].message.content == as_system.choices[0].message.content
    assert ask(USER, max_completion_tokens=3).usage.completion_tokens == 3
    for role in ("banana", "tool"):
        with pytest.raises(openai.BadRequestError) as error:
            ask([{"role": role, "content": "hi"}])
        assert error.value.body["param"] == "messages[0].role" or role == "tool"
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert error.value.code == "model_not_found"
    assert client.models.retrieve(target.name).id == target.name


def test_json_mode_is_refused_before_generation(target, client):
    for response_format in ({"type": "json_object"},
                            {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}):
        with pytest.raises(openai.BadRequestError, match="cannot constrain generation to JSON"
                           ) as error:
            client.chat.completions.create(model=target.name, messages=USER,
                                           response_format=response_format)
        assert error.value.body["param"] == "response_format"


def test_legacy_completions_serve_raw_text(target, client):
    expected = [local(target, prompt, 12, chat=False) for prompt in ("Once upon", "The end")]
    reply = client.completions.create(model=target.name, prompt=["Once upon", "The end"],
                                      max_tokens=12, temperature=0, logprobs=2)
    assert [choice.text for choice in reply.choices] == [e.text for e in expected]
    assert [choice.finish_reason for choice in reply.choices] == [e.finish_reason
                                                                  for e in expected]
    assert len(reply.choices[0].logprobs.tokens) == len(expected[0].token_ids)
    # keyed by token text, so byte pieces that all decode to U+FFFD share one key
    assert all(1 <= len(top) <= 2 for top in reply.choices[0].logprobs.top_logprobs)
    ids = target.token_ids("Once upon", chat=False)
    by_ids = client.completions.create(model=target.name, prompt=ids, max_tokens=12,
                                       temperature=0)
    assert by_ids.choices[0].text == expected[0].text
    streamed = client.completions.create(model=target.name, prompt="Once upon", max_tokens=12,
                                         temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) \
        == expected[0].text


def test_64_concurrent_clients_lose_nothing_and_max_batch_1_is_bit_exact(target):
    prompts = [[{"role": "user", "content": f"Question {i}: {'why ' * (i % 7)}?"}]
               for i in range(64)]
    lengths = [4 + i % 9 for i in range(64)]
    expected = [local(target, p, n).text for p, n in zip(prompts, lengths, strict=True)]
    for max_batch in (1, 16):
        server = make_server(target, "127.0.0.1", 0, max_batch=max_batch)
        with running(server):
            def ask(index, server=server):  # one connection per client, as 64 tools would
                with httpx.Client(base_url=server.base_url, timeout=120) as http:
                    response = http.post("/chat/completions", json={
                        "model": target.name, "messages": prompts[index],
                        "max_tokens": lengths[index], "temperature": 0})
                    response.raise_for_status()
                    return response.json()["choices"][0]

            with ThreadPoolExecutor(64) as pool:
                choices = list(pool.map(ask, range(64)))
        assert len(choices) == 64
        assert all(choice["finish_reason"] in ("stop", "length") for choice in choices)
        if max_batch == 1:
            assert [choice["message"]["content"] for choice in choices] == expected


def test_window_batching_for_caches_that_cannot_be_merged(tmp_path):
    """Gemma 2's sliding-window cache cannot take rows joining mid-batch: such batches run
    until their last row ends, and every concurrent request still gets its full answer."""
    gemma = load_target(make_random_model("gemma2", tmp_path / "gemma2"))
    server = make_server(gemma, "127.0.0.1", 0, batch_window=0.2)
    with running(server) as client, ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda n: client.chat.completions.create(
            model=gemma.name, messages=USER, max_tokens=n, temperature=0), range(2, 8)))
    assert [reply.usage.completion_tokens for reply in replies] == [
        min(n, len(local(gemma, USER, n).token_ids) or n) for n in range(2, 8)]
