"""PAIR with a real model as the attacker: the attacker conversation (system role, feedback
turns) is rendered by a model's chat template, its free-text replies go through the JSON
parser and its fallback, and every request ends with one recorded result.

An organism cannot be the attacker (the attacker instructions alone exceed its 256-token
context), so the attacker is a tiny random-weight Llama with a long context; its replies are
noise, which is exactly what exercises the parse fallback.
"""

from __future__ import annotations

import contextlib
import threading

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from alignparadox.attacks.input_tinkering import pair
from alignparadox.attacks.input_tinkering.base import generation_config
from alignparadox.datasets.registry import load_prompt_set
from alignparadox.judges.registry import make_judge
from alignparadox.targets import load_target, open_target, shared_target
from alignparadox.targets.random_models import byte_tokenizer
from alignparadox.targets.serve import make_server

torch.set_num_threads(1)
STREAMS, ROUNDS = 2, 2


@pytest.fixture(scope="module")
def attacker_folder(tmp_path_factory):
    tokenizer = byte_tokenizer()
    config = AutoConfig.for_model(
        "llama", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
        max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("attacker") / "llama-4k"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@contextlib.contextmanager
def attacker_spec(folder, kind: str):
    """The attacker as PAIR opens it: a model folder, or that model served on 127.0.0.1."""
    if kind == "white-box":
        yield str(folder), shared_target(str(folder))
        return
    model = load_target(folder)
    server = make_server(model, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{server.base_url}#{model.name}", model
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("kind", ["white-box", "endpoint"])
def test_pair_with_a_model_attacker_records_every_request(organism_family, attacker_folder,
                                                         monkeypatch, kind):
    target = open_target("organism:aligned-5")
    judge = make_judge("organism")
    requests = load_prompt_set("organisms").harmful().sample(2, seed=1)
    conversations: list[list[dict]] = []
    replies: list[str] = []
    with attacker_spec(attacker_folder, kind) as (spec, model):
        complete = model.complete

        def recording(prompts, config=None, progress=False, **options):
            generations = complete(prompts, config, progress, **options)
            conversations.extend(prompts)
            replies.extend(g.text for g in generations)
            return generations

        monkeypatch.setattr(model, "complete", recording)
        attacker = pair.open_attacker(spec, seed=0, max_retries=0)
        if kind == "endpoint":  # the server batches on the model itself: record at the client
            generate_results = attacker.generate_results

            def recording_client(prompts, config=None):
                outcomes = generate_results(prompts, config)
                conversations.extend(prompts)
                replies.extend(o if isinstance(o, str) else "" for o in outcomes)
                return outcomes

            monkeypatch.setattr(attacker, "generate_results", recording_client)
        results, recorded = _run(target, attacker, judge, requests)

    assert recorded == results
    assert len(conversations) == len(replies) > 0
    assert sorted(r.request_id for r in results) == sorted(r.id for r in requests)
    # The attacker saw PAIR's conversation: its system prompt per stream, then feedback turns.
    first_round = conversations[:STREAMS * len(requests)]
    assert all([m["role"] for m in c] == ["system", "user"] for c in first_round)
    assert {c[0]["content"].split("You are stream ")[1][:6] for c in first_round} == {
        "1 of 2", "2 of 2"}
    later = conversations[STREAMS * len(requests):]
    assert later  # the aligned organism refuses at least one plain request: round 2 runs
    assert all([m["role"] for m in c] == ["system", "user", "assistant", "user"]
               and "SCORE: " in c[-1]["content"] for c in later)
    # Noise is no prompt: the fallback sends the request itself, so each round asks the same.
    assert all(pair.parse_attacker_reply(reply) is None for reply in replies)
    for result in results:
        assert result.error is None and result.prompt == result.request
        answer = target.generate([result.request], generation_config(48))[0]
        expected = judge.judge([result.request], [answer])[0]
        assert (result.answer, result.label, result.success) == (
            answer, expected.label, expected.success)
        # A success stops the request after round 1 (both streams count); else all rounds.
        assert result.queries == (STREAMS if result.success else STREAMS * ROUNDS)
    assert len(later) == STREAMS * sum(not r.success for r in results)


def _run(target, attacker, judge, requests):
    recorded = []
    config = pair.PAIRConfig(streams=STREAMS, rounds=ROUNDS, max_new_tokens=48,
                             attacker_max_new_tokens=24, seed=0)
    return pair.run(target, attacker, judge, requests, config, on_result=recorded.append), \
        recorded
