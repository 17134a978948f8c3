"""The one small interface of a model-tinkering attack: the target, as the adversary edited it.

An attack edits the network's internal state (the paper's v+(x) = v(x) + c·d) or the weights that
produce it. `applied(target)` is a context manager that yields a target whose `generate`,
`complete` and `next_token_logits` answer as the tinkered model; on exit the original target is
exactly as before, also when the body raises.

    with ActivationAddition(direction, alpha=-1.0).applied(target) as attacked:
        answers = attacked.generate(prompts, GenerationConfig(max_new_tokens=80))
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar

from alignparadox.geometry.directions import Direction
from alignparadox.hooks import residual_layout

if TYPE_CHECKING:
    from alignparadox.targets import WhiteBoxTarget


class TinkeringAttack(ABC):
    """A white-box attack that edits the residual stream along a `Direction`."""

    name: ClassVar[str]
    direction: Direction

    @abstractmethod
    def applied(self, target: WhiteBoxTarget) -> AbstractContextManager[WhiteBoxTarget]:
        """The target as the adversary tinkered with it, for the duration of the context."""

    def settings(self) -> dict[str, Any]:
        """JSON-able description of the attack, stored with every result it produces."""
        return {"attack": self.name, "direction": self.direction.recipe()}

    def check(self, target: WhiteBoxTarget) -> None:
        """Refuse a direction made on another model or of the wrong width (UserError)."""
        self.direction.check_model(target.weight_hash, residual_layout(target.model).d_model)
