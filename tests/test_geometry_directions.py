"""Direction extractors, saved directions, separability, on synthetic data with planted axes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alignparadox.errors import UserError
from alignparadox.geometry import (
    DiffInMeans,
    Direction,
    PairedPCA,
    ProbeDirection,
    fisher_ratio,
    projection_2d,
    separability,
    separability_by_layer,
)

D_MODEL = 32


def planted(n: int = 200, shift: float = 3.0, seed: int = 0):
    """Pairs that share a random "content" vector; `pos` is moved by `shift` along a hidden axis."""
    generator = torch.Generator().manual_seed(seed)
    axis = torch.randn(D_MODEL, generator=generator)
    axis /= axis.norm()
    content = torch.randn(n, D_MODEL, generator=generator) + 5.0
    neg = content + 0.3 * torch.randn(n, D_MODEL, generator=generator)
    pos = content + shift * axis + 0.3 * torch.randn(n, D_MODEL, generator=generator)
    return pos, neg, axis


@pytest.mark.parametrize("extractor", [DiffInMeans(), PairedPCA(), ProbeDirection(C=0.1)])
def test_extractors_recover_a_planted_direction(extractor):
    pos, neg, axis = planted()
    fitted = extractor.fit(pos, neg)
    assert fitted is extractor
    assert fitted.direction_.shape == (D_MODEL,)
    assert abs(float(fitted.direction_.norm()) - 1.0) < 1e-5
    assert float(fitted.direction_ @ axis) > 0.9  # right axis and oriented towards `pos`
    assert float(fitted.transform(pos).mean()) > float(fitted.transform(neg).mean())


def test_extractors_find_nothing_in_pure_noise():
    pos, neg, axis = planted(shift=0.0)
    assert abs(float(DiffInMeans().fit(pos, neg).direction_ @ axis)) < 0.5


def test_paired_pca_reports_the_share_along_its_axis():
    pos, neg, _ = planted()
    assert PairedPCA().fit(pos, neg).explained_variance_ratio_ > 0.5
    assert PairedPCA().fit(*planted(shift=0.0)[:2]).explained_variance_ratio_ < 0.2
    with pytest.raises(UserError, match="as many"):
        PairedPCA().fit(pos, neg[:-1])


def test_diff_in_means_keeps_the_raw_difference():
    pos, neg, axis = planted(shift=4.0)
    raw = DiffInMeans().fit(pos, neg).mean_difference_
    assert abs(float(raw @ axis) - 4.0) < 0.3


def test_extractors_reject_bad_activations():
    pos, neg, _ = planted(n=10)
    with pytest.raises(UserError, match="empty"):
        DiffInMeans().fit(pos[:0], neg)
    with pytest.raises(UserError, match="widths"):
        DiffInMeans().fit(pos, neg[:, :-1])
    with pytest.raises(UserError, match="non-finite"):
        DiffInMeans().fit(pos * float("nan"), neg)
    with pytest.raises(UserError, match="2-D"):
        DiffInMeans().fit(pos[None], neg[None])
    with pytest.raises(UserError, match="zero direction"):
        DiffInMeans().fit(pos, pos)


def make_direction(**changes) -> Direction:
    fields = dict(vector=torch.arange(1.0, D_MODEL + 1), method="diff_in_means", layer=2,
                  positions=(-2, -1), model_hash="abc123",
                  prompt_hashes={"harmful": "h1", "harmless": "h2"}, metadata={"norm": 3.5})
    return Direction(**{**fields, **changes})


def test_direction_round_trips_through_safetensors_and_json(tmp_path):
    direction = make_direction()
    assert abs(float(direction.vector.norm()) - 1.0) < 1e-6
    recipe_path = direction.save(tmp_path / "refusal")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["refusal.json", "refusal.safetensors"]
    recipe = json.loads(recipe_path.read_text())
    assert recipe["method"] == "diff_in_means" and recipe["d_model"] == D_MODEL
    loaded = Direction.load(tmp_path / "refusal", model_hash="abc123", d_model=D_MODEL)
    assert torch.equal(loaded.vector, direction.vector)
    assert loaded.recipe() == direction.recipe()
    assert Direction.load(recipe_path).layer == 2  # the .json path works too


def test_direction_refuses_another_model(tmp_path):
    make_direction().save(tmp_path / "refusal")
    with pytest.raises(UserError, match="made on model abc123"):
        Direction.load(tmp_path / "refusal", model_hash="other", d_model=D_MODEL)
    with pytest.raises(UserError, match="width"):
        Direction.load(tmp_path / "refusal", model_hash="abc123", d_model=D_MODEL * 2)
    with pytest.raises(UserError, match="does not exist"):
        Direction.load(tmp_path / "missing")
    (tmp_path / "refusal.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid direction"):
        Direction.load(tmp_path / "refusal")
    with pytest.raises(UserError, match="zero"):
        make_direction(vector=torch.zeros(D_MODEL))


def test_separability_is_high_for_a_planted_split_and_chance_for_noise():
    pos, neg, axis = planted(n=100)
    strong = separability(pos, neg, seed=0)
    assert strong.auroc > 0.9 and strong.fisher > 2.0  # true Fisher ratio: 9 / 2.18 ≈ 4.1
    assert strong.n_train + strong.n_test == 200
    assert separability(pos, neg, seed=0) == strong  # seeded split
    assert separability(pos, neg, axis).fisher > 2.0
    # Pairs share their content: a split that separated pos[i] from neg[i] would leak it.
    noise = separability(*planted(n=100, shift=0.0)[:2], seed=0)
    assert 0.3 < noise.auroc < 0.7 and noise.fisher < 0.2
    with pytest.raises(UserError, match="at least 4"):
        separability(pos[:3], neg[:3])


def test_fisher_ratio_matches_its_formula():
    pos, neg = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([5.0, 6.0, 7.0])
    assert fisher_ratio(pos, neg) == pytest.approx(16.0 / 2.0)


def test_separability_by_layer_grows_with_the_planted_shift():
    layers = {0: 0.0, 1: 2.0, 2: 5.0}
    data = {layer: planted(n=60, shift=shift, seed=layer) for layer, shift in layers.items()}
    rows = separability_by_layer({k: v[0] for k, v in data.items()},
                                 {k: v[1] for k, v in data.items()})
    assert [row.layer for row in rows] == [0, 1, 2]
    fishers = [row.fisher for row in rows]
    assert fishers == sorted(fishers)


def test_projection_2d_puts_the_direction_on_x():
    pos, neg, axis = planted(n=50)
    projection = projection_2d(pos, neg, 2.0 * axis)
    assert projection.pos.shape == (50, 2) and projection.neg.shape == (50, 2)
    assert np.allclose(projection.pos[:, 0], (pos @ axis).numpy(), atol=1e-4)
    assert abs(float(projection.x_axis @ projection.y_axis)) < 1e-6
    assert projection.pos[:, 0].mean() - projection.neg[:, 0].mean() == pytest.approx(3.0, abs=0.3)
    steered = projection.transform(neg + 1.5 * axis)  # steering moves states along x only
    assert np.allclose(steered - projection.neg, [1.5, 0.0], atol=1e-4)
