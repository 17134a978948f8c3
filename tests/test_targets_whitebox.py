"""White-box targets on every supported architecture: real random-weight models and tokenizer."""

from __future__ import annotations

import pytest
import torch

from alignparadox.targets import GenerationConfig, WhiteBoxTarget, load_target
from alignparadox.targets.random_models import ARCHITECTURES, make_random_model

PROMPTS = [
    "hi",
    "Write three sentences about the sea, please.",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
]
GREEDY = GenerationConfig(max_new_tokens=6, batch_size=3)


@pytest.fixture(scope="session", params=ARCHITECTURES)
def target(request, tmp_path_factory) -> WhiteBoxTarget:
    folder = make_random_model(request.param, tmp_path_factory.mktemp(request.param))
    return load_target(folder, device="cpu")


def test_chat_template_is_applied(target):
    assert target.format_chat("hi") == "<|user|>hi<|end|><|assistant|>"
    with_system = "<|system|>s<|end|><|user|>hi<|end|><|assistant|>"
    assert target.format_chat("hi", system="s") == with_system
    batch = target.encode(["hi", "a longer prompt"])
    short_row = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    assert short_row == target.tokenizer.encode(target.format_chat("hi"), add_special_tokens=False)
    # Left padding: the short prompt's padding comes first, the last column is real for both.
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][:, -1].all()
    assert target.context_length == 256 and target.stop_token_ids == {target.tokenizer.eos_token_id}


def test_batched_greedy_equals_one_by_one(target):
    batched = target.complete(PROMPTS, GREEDY)
    alone = [target.complete([prompt], GREEDY)[0] for prompt in PROMPTS]
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]
    assert [g.text for g in batched] == target.generate(PROMPTS, GREEDY)
    for generation in batched:  # "length" exactly when the answer used all 6 new tokens
        assert len(generation.token_ids) <= 6
        assert (generation.finish_reason == "length") == (len(generation.token_ids) == 6)
    assert any(g.finish_reason == "length" for g in batched)


def test_generation_stops_at_end_token(target):
    reference = target.complete(PROMPTS[:2], GREEDY)
    head = target.model.get_output_embeddings().weight
    eos = target.tokenizer.eos_token_id
    saved = head[eos].detach().clone()
    # Make the end token beat the greedy choice of step 3 of a reference answer: that answer
    # must become a strict prefix of the reference, ending with "stop".
    row = next(index for index, g in enumerate(reference) if len(g.token_ids) >= 4)
    with torch.no_grad():
        head[eos] = 2 * head[reference[row].token_ids[3]]
    try:
        stopped = target.complete(PROMPTS[:2], GREEDY)
    finally:
        with torch.no_grad():
            head[eos] = saved
    assert stopped[row].finish_reason == "stop" and len(stopped[row].token_ids) <= 3
    for before, after in zip(reference, stopped, strict=True):
        assert before.token_ids[: len(after.token_ids)] == after.token_ids
        assert eos not in after.token_ids


def test_sampling_is_reproducible_with_a_seed(target):
    sampled = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=1.0, top_p=0.95,
                               seed=7, batch_size=3)
    first = target.generate(PROMPTS, sampled)
    assert target.generate(PROMPTS, sampled) == first
    sampled.seed = 8
    assert target.generate(PROMPTS, sampled) != first


def test_stream_pieces_join_to_the_full_answer(target):
    stream = target.stream(PROMPTS[1], GREEDY)
    pieces = list(stream)
    assert "".join(pieces) == stream.generation.text == target.generate([PROMPTS[1]], GREEDY)[0]


def test_next_token_logits_match_greedy_first_token(target):
    logits = target.next_token_logits(PROMPTS)
    assert logits.shape == (3, target.model.get_output_embeddings().weight.shape[0])
    first_tokens = [g.token_ids[0] for g in target.complete(PROMPTS, GenerationConfig(1))]
    assert logits.argmax(-1).tolist() == first_tokens
