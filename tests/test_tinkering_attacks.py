"""Model-tinkering attacks on a tiny random-weight Llama: exact effects, clean-up, export."""

from __future__ import annotations

import pytest
import torch

from alignparadox.attacks.model_tinkering import (
    ActivationAddition,
    DirectionalAblation,
    WeightOrthogonalization,
)
from alignparadox.errors import UserError
from alignparadox.geometry import Direction
from alignparadox.hooks import capture
from alignparadox.targets import load_target
from alignparadox.targets.random_models import make_random_model

PROMPTS = ["Please tell me about the river.", "What is a lantern?"]


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_target(make_random_model("llama", tmp_path_factory.mktemp("tinker") / "llama"))
    torch.set_num_threads(threads)


def direction_for(target, *, layer: int = 2, norm: float = 3.0, seed: int = 0) -> Direction:
    vector = torch.randn(target.model.config.hidden_size,
                         generator=torch.Generator().manual_seed(seed))
    return Direction(vector, "diff_in_means", layer, (-1,), target.weight_hash,
                     metadata={"mean_norm": norm, "misaligned_sign": -1})


def logits(target) -> torch.Tensor:
    return target.next_token_logits(PROMPTS)


def residual_shift(target, attack, layer: int) -> torch.Tensor:
    """How `attack` moves the residual stream at `layer` on PROMPTS."""
    batch = target.encode(PROMPTS)
    with torch.no_grad(), capture(target.model, [layer]) as plain:
        target.model(**batch)
        before = plain[layer].clone()
    with torch.no_grad(), attack.applied(target), capture(target.model, [layer]) as steered:
        target.model(**batch)
        return steered[layer] - before


def test_addition_adds_alpha_times_mean_norm_along_the_direction(target):
    direction = direction_for(target)
    attack = ActivationAddition(direction, alpha=-0.5)
    assert attack.coefficient == pytest.approx(-1.5)
    shift = residual_shift(target, attack, layer=2)
    assert torch.allclose(shift, -1.5 * direction.vector.expand_as(shift), atol=1e-5)
    with ActivationAddition(direction, alpha=0.0).applied(target) as same:
        unchanged = logits(same)
    assert torch.allclose(unchanged, logits(target), atol=1e-6)


def test_addition_at_another_layer_is_scaled_by_the_norm_there(target):
    direction = direction_for(target)  # layer 2, mean norm 3
    by_layer = Direction(direction.vector, "diff_in_means", 2, (-1,), target.weight_hash,
                         metadata={"mean_norm": 3.0, "mean_norm_by_layer": {"1": 5.0, "2": 3.0}})
    attack = ActivationAddition(by_layer, alpha=-0.5, layer=1)
    assert attack.coefficient == pytest.approx(-2.5)
    shift = residual_shift(target, attack, layer=1)
    assert torch.allclose(shift, -2.5 * direction.vector.expand_as(shift), atol=1e-5)
    # Layer 3's norm is not recorded, nor any layer but its own for `direction`: no scale.
    for unscaled in (ActivationAddition(by_layer, alpha=1.0, layer=3),
                     ActivationAddition(direction, alpha=1.0, layer=1)):
        with pytest.raises(UserError, match="no scale"), unscaled.applied(target):
            pass


def test_orthogonalized_copy_matches_ablation_and_leaves_the_original(target):
    direction = direction_for(target, seed=1)
    original = logits(target)
    with DirectionalAblation(direction).applied(target) as ablated:
        by_hooks = logits(ablated)
    with WeightOrthogonalization(direction).applied(target) as edited:
        assert edited.model is target.model  # edited in place, restored on exit
        by_weights = logits(edited)
    assert not torch.allclose(by_hooks, original, atol=1e-3)  # the attack does something
    assert torch.allclose(by_weights, by_hooks, atol=1e-4)
    assert torch.equal(logits(target), original)  # hooks removed, original weights untouched


def test_attacks_refuse_bad_input(target):
    with pytest.raises(UserError, match="finite"):
        ActivationAddition(direction_for(target), alpha=float("inf"))
    other = Direction(torch.ones(target.model.config.hidden_size), "diff_in_means", 1, (-1,),
                      "0" * 64, metadata={"mean_norm": 1.0})
    with pytest.raises(UserError, match="made on model"), \
            DirectionalAblation(other).applied(target):
        pass
    with pytest.raises(UserError, match="out of range"), \
            ActivationAddition(direction_for(target, layer=99), alpha=1.0).applied(target):
        pass
    unscaled = Direction(torch.ones(target.model.config.hidden_size), "probe", 1, (-1,),
                         target.weight_hash)
    with pytest.raises(UserError, match="mean residual norm"):
        ActivationAddition(unscaled, alpha=1.0)
