"""The orthogonalized model: the ablation baked into the weights, shipped as a checkpoint.

Every weight that writes into the residual stream (embeddings, attention and MLP output
projections) is edited so it has no component along the direction. The result needs no hooks:
it is an ordinary Hugging Face model that anyone can load, which is what makes this attack cheap
to distribute.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from alignparadox.attacks.model_tinkering.base import TinkeringAttack
from alignparadox.geometry.directions import Direction
from alignparadox.hooks import orthogonalize, save_checkpoint
from alignparadox.hooks.orthogonalize import orthogonalized

if TYPE_CHECKING:
    from alignparadox.targets import WhiteBoxTarget


@dataclass(frozen=True)
class WeightOrthogonalization(TinkeringAttack):
    """The target with weights that cannot write along `direction`.

    Neither method copies the model (a 70B model has no room for a second copy): `applied`
    edits the target's own weights and restores them exactly on exit, so the target is the
    orthogonalized model while the context is open; `export` edits in place and saves, for
    one-shot command-line use.
    """

    direction: Direction
    name = "orthogonalized"

    @contextmanager
    def applied(self, target: WhiteBoxTarget) -> Iterator[WhiteBoxTarget]:
        from alignparadox.targets import WhiteBoxTarget

        self.check(target)  # also hashes the original weights of an in-memory target
        with orthogonalized(target.model, self.direction.vector) as edited:
            yield WhiteBoxTarget(edited, target.tokenizer, f"{target.name}+orthogonalized")

    def export(self, target: WhiteBoxTarget, out_dir: str | Path) -> Path:
        """Orthogonalize `target`'s model IN PLACE and save it as a normal HF checkpoint."""
        self.check(target)
        return save_checkpoint(orthogonalize(target.model, self.direction.vector),
                               target.tokenizer, out_dir)
