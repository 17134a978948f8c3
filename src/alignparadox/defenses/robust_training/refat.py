"""ReFAT, refusal-feature adversarial training (Yu et al., ICLR 2025; after the unofficial
code mgm52/refat-unofficial): refusal fine-tuning during which the refusal feature is ablated.

Every `recompute_every` steps the refusal direction of each chosen layer is refitted on the
current model: difference in means of the stream at the last prompt token over
`direction_batch` harmful minus as many harmless requests (`hooks.collect_activations`,
`geometry.DiffInMeans`). Each harmful example of a step is, with probability
`ablate_probability`, run with its layer's direction projected out of the stream at every
chosen layer (the simulated ablation attack), and trained to refuse anyway; harmless examples
keep their answers (retain loss). The layers default to the first three quarters of the
stream (a share of the layers, never the last blocks, where a refusal direction only reads
out the answer).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from alignparadox.defenses.robust_training.common import (
    Recipe,
    RecipeConfig,
    Run,
    _finite,
    edit_stream,
    retain_loss,
)
from alignparadox.defenses.robust_training.data import model_inputs
from alignparadox.errors import UserError


@dataclass(frozen=True)
class RefatConfig(RecipeConfig):
    method = "refat"
    ablate_probability: float = 0.5
    recompute_every: int = 10
    direction_batch: int = 32

    def check(self) -> None:
        super().check()
        if not _finite(self.ablate_probability) or not 0 < self.ablate_probability <= 1:
            raise UserError("ablate_probability must be in (0, 1], got "
                            f"{self.ablate_probability!r}.")
        for name in ("recompute_every", "direction_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive whole number, got {value!r}.")

    def default_layers(self, n_layers: int) -> list[int]:
        return list(range(1, max(1, int(0.75 * n_layers)) + 1))


def refusal_directions(run: Run, layers: list[int], n: int, seed: int) -> dict[int, torch.Tensor]:
    """Unit difference-in-means refusal direction per layer on the current model."""
    from alignparadox.geometry import DiffInMeans
    from alignparadox.hooks import collect_activations

    rng = random.Random(seed)
    groups = [[e.request for e in rng.sample(pool, min(n, len(pool)))]
              for pool in (run.data.harmful, run.data.harmless)]
    was_training = run.model.training
    run.model.eval()
    acts = [collect_activations(run.inner, run.target.tokenizer,
                                [run.target.format_chat(r) for r in group], layers, -1,
                                batch_size=32, progress=False) for group in groups]
    run.model.train(was_training)
    # Clones leave inference mode, so the directions can take part in the training graph.
    return {layer: DiffInMeans().fit(acts[0][layer][:, 0], acts[1][layer][:, 0])
            .direction_.clone().float() for layer in layers}


class Refat(Recipe):
    def __init__(self, config: RefatConfig):
        super().__init__(config)
        self.directions: dict[int, torch.Tensor] = {}
        self.fitted_at = 0

    def setup(self, run: Run) -> dict[str, Any]:
        return {"ablated_layers": run.layers}

    def loss(self, run: Run, harmful: list, harmless: list) -> tuple[torch.Tensor, dict]:
        config: RefatConfig = self.config
        if not self.directions or run.step - self.fitted_at >= config.recompute_every:
            self.directions = refusal_directions(run, run.layers, config.direction_batch,
                                                 config.seed * 100003 + run.step)
            self.fitted_at = run.step
        rows = (torch.rand(len(harmful), generator=run.generator)
                < config.ablate_probability).float()

        def ablation(layer: int):
            unit = self.directions[layer]

            def edit(hidden: torch.Tensor) -> torch.Tensor:
                u = unit.to(device=hidden.device, dtype=hidden.dtype)
                weight = rows.to(device=hidden.device, dtype=hidden.dtype)[:, None, None]
                return hidden - weight * (hidden @ u).unsqueeze(-1) * u

            return edit

        batch = run.encoder.batch([(e.request, e.refusal) for e in harmful])
        with edit_stream(run.inner, {layer: ablation(layer) for layer in run.layers}):
            refusal = run.model(**model_inputs(batch), labels=batch["labels"]).loss
        retain = retain_loss(run, harmless)
        loss = config.refusal_weight * refusal + config.retain_weight * retain
        return loss, {"refusal": float(refusal.detach()), "retain": float(retain.detach()),
                      "ablated_share": float(rows.mean())}

    def state(self) -> dict[str, Any]:
        return {"directions": self.directions, "fitted_at": self.fitted_at}

    def load_state(self, state: dict[str, Any]) -> None:
        self.directions = state["directions"]
        self.fitted_at = state["fitted_at"]
