"""How cleanly two groups of residual-stream states split: Fisher ratio along a direction,
held-out linear-probe AUROC, and a 2-D projection (direction axis × first orthogonal PC)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from alignparadox.errors import UserError
from alignparadox.geometry.directions import DiffInMeans, _pair, as_matrix


@dataclass(frozen=True)
class Separability:
    """Held-out separability of one layer; `fisher` = (μ₊ − μ₋)² / (σ₊² + σ₋²) on the direction."""

    fisher: float
    auroc: float
    n_train: int
    n_test: int
    layer: int | None = None


def fisher_ratio(pos_proj: torch.Tensor, neg_proj: torch.Tensor) -> float:
    """Fisher ratio of two sets of 1-D projections (unbiased variances)."""
    gap = float(pos_proj.mean() - neg_proj.mean())
    if min(len(pos_proj), len(neg_proj)) < 2:
        raise UserError("a Fisher ratio needs at least 2 projections in each group")
    spread = float(pos_proj.var() + neg_proj.var())
    if spread == 0.0:
        return 0.0 if gap == 0.0 else float("inf")
    return gap**2 / spread


def separability(
    pos_acts, neg_acts, direction: torch.Tensor | None = None, *, layer: int | None = None,
    test_fraction: float = 0.3, seed: int = 0,
) -> Separability:
    """Fisher ratio and probe AUROC, both measured on a seeded held-out part of each group.

    The probe (standardised logistic regression) is trained on the rest; so is the direction
    (difference in means) when none is given. Both groups are split with the same permutation, so
    contrast pairs (pos[i], neg[i]) land on the same side and their shared content cannot leak.
    """
    pos, neg = _pair(pos_acts, neg_acts)
    if min(len(pos), len(neg)) < 4:
        raise UserError("separability needs at least 4 examples in each group for a held-out split")
    (pos_train, pos_test), (neg_train, neg_test) = (
        train_test_split(group, test_size=test_fraction, random_state=seed) for group in (pos, neg)
    )
    if direction is None:
        direction = DiffInMeans().fit(pos_train, neg_train).direction_
    direction = torch.as_tensor(direction).float()
    if direction.shape != (pos.shape[1],):
        raise UserError(f"the direction has width {direction.shape[-1]} but the activations "
                        f"have width {pos.shape[1]}")
    direction = direction / direction.norm()
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(*_labelled(pos_train, neg_train))
    test_features, test_labels = _labelled(pos_test, neg_test)
    return Separability(
        fisher=fisher_ratio(pos_test @ direction, neg_test @ direction),
        auroc=float(roc_auc_score(test_labels, probe.decision_function(test_features))),
        n_train=len(pos_train) + len(neg_train), n_test=len(test_labels), layer=layer,
    )


def _labelled(pos: torch.Tensor, neg: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    features = torch.cat([pos, neg]).double().numpy()
    return features, np.r_[np.ones(len(pos)), np.zeros(len(neg))]


def separability_by_layer(
    pos_acts: Mapping[int, torch.Tensor], neg_acts: Mapping[int, torch.Tensor],
    directions: Mapping[int, torch.Tensor] | None = None, *, test_fraction: float = 0.3,
    seed: int = 0,
) -> list[Separability]:
    """`separability` at every layer present in both groups, with the same split at each."""
    layers = sorted(set(pos_acts) & set(neg_acts))
    if not layers:
        raise UserError("the two activation sets share no layer")
    return [
        separability(pos_acts[layer], neg_acts[layer],
                     None if directions is None else directions.get(layer),
                     layer=layer, test_fraction=test_fraction, seed=seed)
        for layer in layers
    ]


@dataclass(frozen=True)
class Projection2D:
    """Plot coordinates: x = projection on the direction, y = first PC orthogonal to it."""

    x_axis: torch.Tensor
    y_axis: torch.Tensor
    center: torch.Tensor  # mean of the fitted states' part orthogonal to x_axis
    pos: np.ndarray  # (n_pos, 2)
    neg: np.ndarray  # (n_neg, 2)

    def transform(self, acts) -> np.ndarray:
        """(n, 2) coordinates of any states, e.g. steered ones (steering by c·d moves x by c)."""
        return _coordinates(as_matrix(acts, "input"), self.x_axis, self.y_axis, self.center)


def _coordinates(acts: torch.Tensor, x_axis: torch.Tensor, y_axis: torch.Tensor,
                 center: torch.Tensor) -> np.ndarray:
    x = acts @ x_axis
    y = (acts - x[:, None] * x_axis - center) @ y_axis
    return torch.stack([x, y], dim=1).numpy()


def projection_2d(pos_acts, neg_acts, direction: torch.Tensor) -> Projection2D:
    """Project both groups on `direction` and on the top PC of their residual orthogonal to it."""
    pos, neg = _pair(pos_acts, neg_acts)
    x_axis = torch.as_tensor(direction).float()
    if x_axis.shape != (pos.shape[1],):
        raise UserError(f"the direction has width {x_axis.shape[-1]} but the activations have "
                        f"width {pos.shape[1]}")
    x_axis = x_axis / x_axis.norm()
    states = torch.cat([pos, neg])
    rest = states - (states @ x_axis)[:, None] * x_axis
    center = rest.mean(0)
    _, _, right = torch.linalg.svd((rest - center).double(), full_matrices=False)
    y_axis = right[0].float()
    y_axis = y_axis - (y_axis @ x_axis) * x_axis  # exact orthogonality despite rounding
    y_axis = y_axis / y_axis.norm()
    return Projection2D(x_axis, y_axis, center, _coordinates(pos, x_axis, y_axis, center),
                        _coordinates(neg, x_axis, y_axis, center))
