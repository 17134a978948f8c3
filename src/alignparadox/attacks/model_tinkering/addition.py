"""Activation addition: add c·d to the residual stream at the direction's layer.

The coefficient is given relative to the stream's scale, c = alpha · (mean residual norm at the
layer where c·d is added, at the direction's position), so one alpha means the same push on a
4-layer organism and on a 7B model. The direction's metadata records that norm at its own layer
(`mean_norm`) and, when fitted by `recipes`, at every layer (`mean_norm_by_layer`); steering at a
layer whose norm is not recorded is refused. The sign is the caller's: a direction points
where its recipe says (`metadata["misaligned_sign"]` tells which sign misaligns). Steering along
the stance axis is this same attack with the stance direction.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from alignparadox.attacks.model_tinkering.base import TinkeringAttack
from alignparadox.errors import UserError
from alignparadox.geometry.directions import Direction
from alignparadox.hooks import add_vectors, check_layer, residual_layout
from alignparadox.hooks.interventions import SteerPositions

if TYPE_CHECKING:
    from alignparadox.targets import WhiteBoxTarget


@dataclass(frozen=True)
class ActivationAddition(TinkeringAttack):
    """Add `alpha · mean_norm · direction` at `layer` (default: the direction's own layer).

    `positions`: "all" tokens (prompt and every generated token, KV cache on), "prompt",
    "generated", or the last k prompt tokens.
    """

    direction: Direction
    alpha: float
    layer: int | None = None
    positions: SteerPositions = "all"
    name = "addition"

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) \
                or not math.isfinite(self.alpha):
            raise UserError(f"the steering coefficient must be a finite number, got {self.alpha!r}")
        if not _is_norm(self.direction.metadata.get("mean_norm")):
            raise UserError("the direction records no mean residual norm (metadata 'mean_norm'), "
                            "so a relative coefficient has no scale; fit it with "
                            "`paradox directions fit`")

    @property
    def coefficient(self) -> float:
        """The absolute coefficient c of c·d: alpha × the mean norm at the steering layer."""
        direction, layer = self.direction, self.steering_layer
        norm = (direction.metadata["mean_norm"] if layer == direction.layer
                else (direction.metadata.get("mean_norm_by_layer") or {}).get(str(layer)))
        if not _is_norm(norm):
            raise UserError(f"the direction records its mean residual norm at layer "
                            f"{direction.layer} but not at layer {layer}, so alpha has no scale "
                            f"there; steer at layer {direction.layer} or refit the direction "
                            "with `paradox directions fit`")
        return float(self.alpha) * float(norm)

    @property
    def steering_layer(self) -> int:
        return self.direction.layer if self.layer is None else self.layer

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "alpha": self.alpha, "coefficient": self.coefficient,
                "layer": self.steering_layer, "positions": self.positions}

    @contextmanager
    def applied(self, target: WhiteBoxTarget) -> Iterator[WhiteBoxTarget]:
        self.check(target)
        check_layer(residual_layout(target.model), self.steering_layer)  # before "no norm there"
        vector = self.coefficient * self.direction.vector
        with add_vectors(target.model, {self.steering_layer: vector}, positions=self.positions):
            yield target


def _is_norm(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)
