"""Activation addition: add c·d to the residual stream at the direction's layer.

The coefficient is given relative to the stream's scale, c = alpha · (mean residual norm at that
layer and position, recorded in the direction's metadata as `mean_norm`), so one alpha means the
same push on a 4-layer organism and on a 7B model. The sign is the caller's: a direction points
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
from alignparadox.hooks import add_vectors
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
        norm = self.direction.metadata.get("mean_norm")
        if not isinstance(norm, int | float) or not math.isfinite(norm) or norm <= 0:
            raise UserError("the direction records no mean residual norm (metadata 'mean_norm'), "
                            "so a relative coefficient has no scale; fit it with "
                            "`paradox directions fit`")

    @property
    def coefficient(self) -> float:
        """The absolute coefficient c of c·d."""
        return float(self.alpha) * float(self.direction.metadata["mean_norm"])

    @property
    def steering_layer(self) -> int:
        return self.direction.layer if self.layer is None else self.layer

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "alpha": self.alpha, "coefficient": self.coefficient,
                "layer": self.steering_layer, "positions": self.positions}

    @contextmanager
    def applied(self, target: WhiteBoxTarget) -> Iterator[WhiteBoxTarget]:
        self.check(target)
        vector = self.coefficient * self.direction.vector
        with add_vectors(target.model, {self.steering_layer: vector}, positions=self.positions):
            yield target
