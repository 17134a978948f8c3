"""Layer and position selection of a refusal direction, on a tiny random-weight Llama."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignparadox.errors import UserError
from alignparadox.geometry import (
    mean_difference_candidates,
    refusal_log_odds,
    select_direction,
)
from alignparadox.hooks import ablate, add_vectors, collect_activations, next_token_logits
from alignparadox.targets.random_models import make_random_model

# Placeholder requests: the two groups only need to differ, not to be harmful.
GROUP_A = [f"<|user|>Please do task A{i} right now!<|end|><|assistant|>" for i in range(6)]
GROUP_B = [f"<|user|>what is item b{i}?<|end|><|assistant|>" for i in range(6)]
POSITIONS = [-2, -1]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread avoids OpenMP spin-waiting on a busy box
    path = make_random_model("llama", tmp_path_factory.mktemp("selection") / "llama")
    yield AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def candidates(llama):
    model, tokenizer = llama
    layers = range(4)  # tiny models have 3 blocks: stream layers 0..3
    acts_a = collect_activations(model, tokenizer, GROUP_A[:4], layers, POSITIONS, progress=False)
    acts_b = collect_activations(model, tokenizer, GROUP_B[:4], layers, POSITIONS, progress=False)
    return mean_difference_candidates(acts_a, acts_b, POSITIONS)


def test_refusal_log_odds_is_the_log_odds_of_the_token_set():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    ids = [4, 7, 7, 30]
    p = logits.softmax(-1)[:, [4, 7, 30]].sum(-1)
    assert torch.allclose(refusal_log_odds(ids)(logits), (p / (1 - p)).log(), atol=1e-5)
    with pytest.raises(UserError, match="outside the vocabulary"):
        refusal_log_odds([99])(logits)
    with pytest.raises(UserError, match="empty"):
        refusal_log_odds([])


def test_candidates_are_mean_differences_per_layer_and_position(llama, candidates):
    assert sorted(candidates) == [(layer, p) for layer in range(4) for p in sorted(POSITIONS)]
    assert all(vector.shape == (64,) for vector in candidates.values())


@torch.no_grad()
def test_selection_scores_every_candidate_and_picks_the_lowest_bypass(llama, candidates):
    model, tokenizer = llama
    score = refusal_log_odds(tokenizer.convert_tokens_to_ids(["I", "S"]))
    selection = select_direction(model, tokenizer, candidates, GROUP_A[4:], GROUP_B[4:], score,
                                 kl_threshold=math.inf, induce_threshold=-math.inf,
                                 progress=False)
    assert len(selection.scores) == len(candidates)
    # 3 blocks: the last fifth is layer >= 3 * 0.8 = 2.4, so layer 3 is pruned and layer 2 is not.
    pruned = [s for s in selection.scores if s.dropped == "in the last layers"]
    assert {s.layer for s in pruned} == {3} and all(math.isnan(s.bypass) for s in pruned)
    # Layer 0 holds the embeddings of the same template tokens in both groups: zero difference.
    assert all(s.dropped == "zero vector" for s in selection.scores if s.layer == 0)
    kept = [s for s in selection.scores if s.dropped is None]
    assert {(s.layer, s.position) for s in kept} == {(1, -2), (1, -1), (2, -2), (2, -1)}
    best = selection.best
    assert best.bypass == min(s.bypass for s in kept)
    vector = candidates[(best.layer, best.position)]
    assert torch.allclose(selection.direction, vector / vector.norm())
    # The reported scores are what the hooks give when run by hand.
    with ablate(model, vector):
        bypass = score(next_token_logits(model, tokenizer, GROUP_A[4:])).mean().item()
    with add_vectors(model, {best.layer: vector}):
        induce = score(next_token_logits(model, tokenizer, GROUP_B[4:])).mean().item()
    assert bypass == pytest.approx(best.bypass, abs=1e-5)
    assert induce == pytest.approx(best.induce, abs=1e-5)
    assert all(s.kl >= -1e-6 for s in kept) and any(s.kl > 1e-6 for s in kept)
    baseline = score(next_token_logits(model, tokenizer, GROUP_A[4:])).mean().item()
    assert selection.baseline_harmful == pytest.approx(baseline, abs=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("prune_fraction, first_pruned", [(1 / 3, 2), (0.6, 2), (0.7, 1)])
def test_pruning_starts_at_the_first_layer_at_or_past_the_boundary(llama, candidates,
                                                                    prune_fraction, first_pruned):
    # 3 blocks, boundary 3·(1 - fraction): exactly 2.0 (layer 2 pruned), 1.2 (layer 1 kept), 0.9.
    model, tokenizer = llama
    selection = select_direction(model, tokenizer, candidates, GROUP_A[4:], GROUP_B[4:],
                                 refusal_log_odds([5]), kl_threshold=math.inf,
                                 induce_threshold=-math.inf, prune_fraction=prune_fraction,
                                 progress=False)
    for s in selection.scores:
        assert (s.dropped == "in the last layers") == (s.layer >= first_pruned), s


@torch.no_grad()
def test_selection_drops_candidates_that_fail_the_filters(llama, candidates):
    model, tokenizer = llama
    score = refusal_log_odds([5])
    strict = select_direction(model, tokenizer, candidates, GROUP_A[4:], GROUP_B[4:], score,
                              kl_threshold=-1.0, progress=False)
    assert strict.best is None and strict.direction is None
    assert all(s.dropped.startswith("KL") for s in strict.scores if s.layer == 1)
    no_induce = select_direction(model, tokenizer, candidates, GROUP_A[4:], GROUP_B[4:], score,
                                 kl_threshold=math.inf, induce_threshold=math.inf,
                                 progress=False)
    assert all(s.dropped == "does not induce refusal" for s in no_induce.scores if s.layer == 1)


def test_selection_rejects_bad_input(llama, candidates):
    model, tokenizer = llama
    score = refusal_log_odds([5])
    with pytest.raises(UserError, match="empty"):
        select_direction(model, tokenizer, candidates, [], GROUP_B, score, progress=False)
    with pytest.raises(UserError, match="no candidate"):
        select_direction(model, tokenizer, {}, GROUP_A, GROUP_B, score, progress=False)
    with pytest.raises(UserError, match="width"):
        select_direction(model, tokenizer, {(0, -1): torch.ones(3)}, GROUP_A, GROUP_B, score,
                         progress=False)
