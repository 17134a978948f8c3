"""Direction extractors with an sklearn-like `fit`, and the saved `Direction` with its recipe.

Every extractor takes activations of two groups, (n, d_model) each, and learns `direction_`: a
float32 unit vector that points from the negative group towards the positive one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from alignparadox.errors import UserError

RECIPE_FORMAT = "alignparadox.direction/1"


def as_matrix(acts: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """`acts` as a finite float32 CPU tensor of shape (n, d_model) with n > 0."""
    matrix = torch.as_tensor(acts).detach().float().cpu()
    if matrix.dim() != 2:
        raise UserError(f"the {name} activations must be a 2-D (examples, d_model) array, "
                        f"got shape {tuple(matrix.shape)}")
    if matrix.shape[0] == 0:
        raise UserError(f"the {name} activation set is empty")
    if not bool(torch.isfinite(matrix).all()):
        raise UserError(f"the {name} activations contain non-finite values")
    return matrix


def _pair(pos, neg) -> tuple[torch.Tensor, torch.Tensor]:
    pos, neg = as_matrix(pos, "positive"), as_matrix(neg, "negative")
    if pos.shape[1] != neg.shape[1]:
        raise UserError(f"the positive and negative activations have different widths "
                        f"({pos.shape[1]} and {neg.shape[1]})")
    return pos, neg


def _unit(vector: torch.Tensor, zero_message: str = "the two activation groups give a zero "
          "direction (they do not differ)") -> torch.Tensor:
    norm = vector.norm()
    if not norm > 0:
        raise UserError(zero_message)
    return vector / norm


class _Extractor:
    direction_: torch.Tensor

    def transform(self, acts: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Projection of each row of `acts` on the learned direction."""
        return as_matrix(acts, "input") @ self.direction_


class DiffInMeans(_Extractor):
    """Difference in means: `direction_` ∝ mean(pos) − mean(neg), raw in `mean_difference_`."""

    def fit(self, pos_acts, neg_acts) -> DiffInMeans:
        pos, neg = _pair(pos_acts, neg_acts)
        self.mean_difference_ = pos.mean(0) - neg.mean(0)
        self.direction_ = _unit(self.mean_difference_)
        return self


class PairedPCA(_Extractor):
    """First principal axis of the paired differences pos[i] − neg[i].

    Uncentred (the top right singular vector of the difference matrix): centring would subtract
    the consistent shift between the pairs, which is the signal. `explained_variance_ratio_` is
    the share of the differences' squared norm along `direction_`.
    """

    def fit(self, pos_acts, neg_acts) -> PairedPCA:
        pos, neg = _pair(pos_acts, neg_acts)
        if pos.shape[0] != neg.shape[0]:
            raise UserError(f"paired PCA needs as many positive as negative examples "
                            f"(got {pos.shape[0]} and {neg.shape[0]})")
        differences = (pos - neg).double()
        _, singular, right = torch.linalg.svd(differences, full_matrices=False)
        axis = right[0]
        if differences.mean(0) @ axis < 0:
            axis = -axis
        self.direction_ = _unit(axis.float())
        self.explained_variance_ratio_ = float(singular[0] ** 2 / (singular**2).sum())
        return self


class ProbeDirection(_Extractor):
    """Weight vector of a logistic-regression probe (positive = class 1), in activation space.

    With `standardize`, features are scaled to unit variance for the fit and the weights are
    mapped back (divided by each feature's scale), so `direction_` lives in the raw stream.
    """

    def __init__(self, C: float = 1.0, standardize: bool = True, max_iter: int = 2000,
                 seed: int = 0) -> None:
        self.C = C
        self.standardize = standardize
        self.max_iter = max_iter
        self.seed = seed

    def fit(self, pos_acts, neg_acts) -> ProbeDirection:
        pos, neg = _pair(pos_acts, neg_acts)
        features = torch.cat([pos, neg]).double().numpy()
        labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        scale = np.ones(features.shape[1])
        if self.standardize:
            self.scaler_ = StandardScaler().fit(features)
            features = self.scaler_.transform(features)
            scale = self.scaler_.scale_
        self.probe_ = LogisticRegression(C=self.C, max_iter=self.max_iter,
                                         random_state=self.seed).fit(features, labels)
        self.train_accuracy_ = float(self.probe_.score(features, labels))
        self.direction_ = _unit(torch.from_numpy(self.probe_.coef_[0] / scale).float())
        return self


@dataclass(frozen=True)
class Direction:
    """A unit direction in one layer's residual stream, with the recipe that made it.

    `layer` follows the hooks' numbering (0 = embeddings); `positions` are the token positions the
    activations came from (negative, from the end of the prompt); `model_hash` identifies the
    weights, `prompt_hashes` the prompt sets (e.g. {"harmful": ..., "harmless": ...}).
    """

    vector: torch.Tensor
    method: str
    layer: int
    positions: tuple[int, ...]
    model_hash: str
    prompt_hashes: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)  # JSON-able extras, e.g. norms

    def __post_init__(self) -> None:
        vector = torch.as_tensor(self.vector).detach().float().cpu()
        if vector.dim() != 1 or not bool(torch.isfinite(vector).all()):
            raise UserError("a direction must be a finite 1-D vector")
        if abs(float(vector.norm()) - 1.0) > 1e-6:  # keep saved unit vectors bit-exact
            vector = _unit(vector, "a direction cannot be the zero vector")
        object.__setattr__(self, "vector", vector)
        object.__setattr__(self, "positions", tuple(int(p) for p in self.positions))

    @property
    def d_model(self) -> int:
        return self.vector.shape[0]

    def recipe(self) -> dict[str, Any]:
        return {
            "format": RECIPE_FORMAT, "method": self.method, "layer": self.layer,
            "positions": list(self.positions), "model_hash": self.model_hash,
            "prompt_hashes": dict(self.prompt_hashes), "d_model": self.d_model,
            "metadata": dict(self.metadata),
        }

    def check_model(self, model_hash: str, d_model: int) -> None:
        """Refuse a model other than the one this direction was made on."""
        if d_model != self.d_model:
            raise UserError(f"the direction has width {self.d_model} but the model's residual "
                            f"stream has width {d_model}")
        if model_hash != self.model_hash:
            raise UserError(f"the direction was made on model {self.model_hash}, not on this "
                            f"model ({model_hash})")

    def save(self, path: str | Path) -> Path:
        """Write `<path>.safetensors` (vector) and `<path>.json` (recipe); return the json path."""
        vector_path, recipe_path = _paths(path)
        recipe_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic(vector_path, lambda tmp: save_file({"direction": self.vector.contiguous()}, tmp))
        _atomic(recipe_path, lambda tmp: Path(tmp).write_text(json.dumps(self.recipe(), indent=2)))
        return recipe_path

    @classmethod
    def load(cls, path: str | Path, *, model_hash: str | None = None,
             d_model: int | None = None) -> Direction:
        """Read a saved direction; with `model_hash`/`d_model`, refuse it for any other model."""
        vector_path, recipe_path = _paths(path)
        for needed in (vector_path, recipe_path):
            if not needed.is_file():
                raise UserError(f"direction file {needed} does not exist")
        try:
            recipe = json.loads(recipe_path.read_text())
            vector = load_file(vector_path)["direction"]
            direction = cls(
                vector=vector, method=recipe["method"], layer=int(recipe["layer"]),
                positions=tuple(recipe["positions"]), model_hash=recipe["model_hash"],
                prompt_hashes=recipe.get("prompt_hashes", {}),
                metadata=recipe.get("metadata", {}),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, SafetensorError) as error:
            raise UserError(f"{recipe_path} is not a valid direction ({error})") from error
        if recipe.get("d_model") != direction.d_model:
            raise UserError(f"{recipe_path} says width {recipe.get('d_model')} but its vector has "
                            f"width {direction.d_model}")
        if model_hash is not None or d_model is not None:
            direction.check_model(model_hash if model_hash is not None else direction.model_hash,
                                  d_model if d_model is not None else direction.d_model)
        return direction


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def _atomic(target: Path, write) -> None:
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
