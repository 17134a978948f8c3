"""Directional ablation: project the direction out of the residual stream everywhere.

With the refusal direction this is the refusal-direction jailbreak of Arditi et al. (2024): the
model can no longer represent "this should be refused", at any layer or token.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from alignparadox.attacks.model_tinkering.base import TinkeringAttack
from alignparadox.geometry.directions import Direction
from alignparadox.hooks import ablate

if TYPE_CHECKING:
    from alignparadox.targets import WhiteBoxTarget


@dataclass(frozen=True)
class DirectionalAblation(TinkeringAttack):
    """Remove `direction` from every write into the residual stream, by hooks."""

    direction: Direction
    name = "ablation"

    @contextmanager
    def applied(self, target: WhiteBoxTarget) -> Iterator[WhiteBoxTarget]:
        self.check(target)
        with ablate(target.model, self.direction.vector):
            yield target
