"""Circuit breakers by representation rerouting (Zou et al. 2024; after
GraySwanAI/circuit-breakers).

LoRA training (by default) that makes the stream on harmful text (request + harmful
completion, or the request alone when no completion is given) orthogonal to what the
untrained model had there: ReLU(cos(h, h_original)) at the chosen layers, averaged over the
text's tokens; plus an L2 retain loss ‖h − h_original‖ on harmless conversations at the same
layers. The two are weighted by the paper's schedule, α·(1 − t/2T) and α·t/2T at step t of T.
`refusal_weight` (0 by default: circuit breakers are put on a model that already refuses)
adds refusal fine-tuning. `retain_refusals` adds the harmful requests with their refusal to the
retain set, as the paper's code does for Llama-3 ("refusal retain"), so the rerouting does not
take the model's refusals with it. `reroute` chooses the harmful text's tokens the rerouting
loss covers: `all` (request and completion, as the paper's code) or `completion` (the harmful
completion only, so the states the request leaves, which decide how an answer starts, are left
to the retain loss; a batch with a harmful example lacking a completion is rerouted
whole). The layers default to one third and two thirds of the depth
(the paper's 10 and 20 of 32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from alignparadox.defenses.robust_training.common import (
    Recipe,
    RecipeConfig,
    Run,
    _positive,
)
from alignparadox.defenses.robust_training.data import model_inputs
from alignparadox.errors import UserError

REROUTE = ("all", "completion")


@dataclass(frozen=True)
class RRConfig(RecipeConfig):
    method = "rr"
    alpha: float = 10.0
    refusal_weight: float = 0.0
    retain_refusals: bool = False
    reroute: str = "all"

    def check(self) -> None:
        super().check()
        _positive(self.alpha, "alpha")
        if self.reroute not in REROUTE:
            raise UserError(f"reroute {self.reroute!r} is unknown; use "
                            f"{' or '.join(REROUTE)}.")

    def default_layers(self, n_layers: int) -> list[int]:
        return sorted({max(1, n_layers // 3), max(1, (2 * n_layers) // 3)})


def stream_states(model, inputs: dict[str, torch.Tensor], layers: list[int]
                  ) -> tuple[dict[int, torch.Tensor], Any]:
    """The stream at `layers` (batch, seq, d_model) of one forward, and its output."""
    from alignparadox.hooks import capture

    with capture(model, layers) as acts:
        output = model(**inputs)
    return dict(acts), output


def rerouting_loss(new: dict[int, torch.Tensor], old: dict[int, torch.Tensor],
                   mask: torch.Tensor) -> torch.Tensor:
    """Mean over layers and real tokens of ReLU(cos(new, old))."""
    weight = mask.float()
    values = [(torch.relu(torch.cosine_similarity(new[layer].float(), old[layer].float(), dim=-1))
               * weight).sum() / weight.sum() for layer in new]
    return torch.stack(values).mean()


def retain_distance(new: dict[int, torch.Tensor], old: dict[int, torch.Tensor],
                    mask: torch.Tensor) -> torch.Tensor:
    """Mean over layers and real tokens of ‖new − old‖₂."""
    weight = mask.float()
    values = [((new[layer].float() - old[layer].float()).norm(dim=-1) * weight).sum()
              / weight.sum() for layer in new]
    return torch.stack(values).mean()


class RR(Recipe):
    needs_reference = True

    def trained_blocks(self, layers: list[int], n_layers: int) -> int:
        # Both losses read the stream at `layers` only: blocks after the last one get no
        # gradient, so LoRA adapts the blocks up to it.
        return max(layers)

    def setup(self, run: Run) -> dict[str, Any]:
        return {"rerouted_layers": run.layers}

    def loss(self, run: Run, harmful: list, harmless: list) -> tuple[torch.Tensor, dict]:
        config: RRConfig = self.config
        share = run.step / (2 * config.steps)
        rr_coeff, retain_coeff = config.alpha * (1 - share), config.alpha * share
        text = run.encoder.batch([(e.request, e.completion) if e.completion
                                  else (e.request, "") for e in harmful])
        kept_pairs = [(e.request, e.answer) for e in harmless]
        if config.retain_refusals:
            kept_pairs += [(e.request, e.refusal) for e in harmful]
        kept = run.encoder.batch(kept_pairs)
        new_bad, _ = stream_states(run.inner, model_inputs(text), run.layers)
        new_good, _ = stream_states(run.inner, model_inputs(kept), run.layers)
        with run.original() as original:
            old_bad, _ = stream_states(original, model_inputs(text), run.layers)
            old_good, _ = stream_states(original, model_inputs(kept), run.layers)
        rerouted = text["attention_mask"].bool()
        if config.reroute == "completion" and all(e.completion for e in harmful):
            rerouted = rerouted & ~text["prompt_mask"]
        rerouting = rerouting_loss(new_bad, old_bad, rerouted)
        retain = retain_distance(new_good, old_good, kept["attention_mask"])
        loss = rr_coeff * rerouting + config.retain_weight * retain_coeff * retain
        metrics = {"rerouting_cos": float(rerouting.detach()), "retain_l2": float(retain.detach())}
        if config.refusal_weight > 0:
            refusal_batch = run.encoder.batch([(e.request, e.refusal) for e in harmful])
            refusal = run.model(**model_inputs(refusal_batch), labels=refusal_batch["labels"]).loss
            loss = loss + config.refusal_weight * refusal
            metrics["refusal"] = float(refusal.detach())
        return loss, metrics
