"""Targeted latent adversarial training (Sheshadri et al. 2024; after
aengusl/latent-adversarial-training).

Each step, a PGD adversary perturbs the residual stream of the harmful prompts at the chosen
layers (one perturbation per example and prompt token, L2 norm at most ε per token, ε given
relative to the stream's mean norm at that layer on the untrained model), in `pgd_steps`
normalised gradient steps towards the harmful completion and away from the refusal. The model
is then trained, under the perturbation, towards the refusal and away from the harmful
completion (−log(1 − p) per token, weight `away_weight`), plus a retain loss (next-token) on
harmless answers without perturbation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from alignparadox.defenses.robust_training.common import (
    Recipe,
    RecipeConfig,
    Run,
    _finite,
    _positive,
    edit_stream,
    retain_loss,
)
from alignparadox.defenses.robust_training.data import model_inputs
from alignparadox.errors import UserError


@dataclass(frozen=True)
class LatConfig(RecipeConfig):
    method = "lat"
    epsilon: float = 0.5  # per-token L2 bound, as a share of the stream's mean norm
    pgd_steps: int = 4
    pgd_step_size: float = 0.5  # each PGD step moves epsilon * pgd_step_size
    away_weight: float = 0.5

    def check(self) -> None:
        super().check()
        _positive(self.epsilon, "epsilon")
        _positive(self.pgd_step_size, "pgd_step_size")
        if isinstance(self.pgd_steps, bool) or not isinstance(self.pgd_steps, int) \
                or self.pgd_steps < 1:
            raise UserError(f"pgd_steps must be a positive whole number, got {self.pgd_steps!r}.")
        if not _finite(self.away_weight) or self.away_weight < 0:
            raise UserError(f"away_weight must be a finite number ≥ 0, got {self.away_weight!r}.")


def away_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean −log(1 − p(label)) over the labelled tokens: low when the model avoids them."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != -100
    logp = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    value = -torch.log1p(-logp.exp().clamp(max=1 - 1e-6))
    return (value * mask).sum() / mask.sum().clamp(min=1)


def mean_stream_norms(run: Run, layers: list[int], n: int = 32) -> dict[int, float]:
    from alignparadox.hooks import collect_activations

    prompts = [run.target.format_chat(e.request) for e in run.data.harmful[:n]]
    acts = collect_activations(run.inner, run.target.tokenizer, prompts, layers, -1,
                               batch_size=32, progress=False)
    return {layer: float(acts[layer][:, 0].norm(dim=-1).mean()) for layer in layers}


class Lat(Recipe):
    needs_completions = True

    def setup(self, run: Run) -> dict[str, Any]:
        norms = mean_stream_norms(run, run.layers)
        self.radius = {layer: self.config.epsilon * norms[layer] for layer in run.layers}
        return {"epsilon_absolute": self.radius}

    def _perturb(self, deltas: dict[int, torch.Tensor], prompt_mask: torch.Tensor):
        width = prompt_mask.shape[1]

        def adder(delta: torch.Tensor):
            def edit(hidden: torch.Tensor) -> torch.Tensor:
                shaped = delta.to(hidden.dtype) * prompt_mask[:, :, None].to(hidden.dtype)
                return hidden + F.pad(shaped, (0, 0, 0, hidden.shape[1] - width))

            return edit

        return {layer: adder(delta) for layer, delta in deltas.items()}

    def loss(self, run: Run, harmful: list, harmless: list) -> tuple[torch.Tensor, dict]:
        from alignparadox.hooks import residual_layout

        config: LatConfig = self.config
        good = run.encoder.batch([(e.request, e.refusal) for e in harmful])
        bad = run.encoder.batch([(e.request, e.completion) for e in harmful])
        width = int(good["prompt_mask"].sum(1).max())
        prompt_mask = good["prompt_mask"][:, :width]
        d_model = residual_layout(run.inner).d_model
        deltas = {layer: torch.zeros(len(harmful), width, d_model, device=run.target.device,
                                     requires_grad=True) for layer in run.layers}
        params = list(run.trainable().values())
        for _ in range(config.pgd_steps):
            with edit_stream(run.inner, self._perturb(deltas, prompt_mask)):
                towards = run.model(**model_inputs(bad), labels=bad["labels"]).loss
                away = away_loss(run.model(**model_inputs(good)).logits, good["labels"])
                attack = towards + away
            grads = torch.autograd.grad(attack, list(deltas.values()))
            with torch.no_grad():
                for (layer, delta), grad in zip(deltas.items(), grads, strict=True):
                    radius = self.radius[layer]
                    step = grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-12)
                    delta -= config.pgd_step_size * radius * step
                    norm = delta.norm(dim=-1, keepdim=True)
                    delta *= (radius / norm.clamp(min=1e-12)).clamp(max=1.0)
                    delta *= prompt_mask[:, :, None]
        for p in params:
            p.grad = None
        fixed = {layer: delta.detach() for layer, delta in deltas.items()}
        with edit_stream(run.inner, self._perturb(fixed, prompt_mask)):
            refusal = run.model(**model_inputs(good), labels=good["labels"]).loss
            away = away_loss(run.model(**model_inputs(bad)).logits, bad["labels"])
        retain = retain_loss(run, harmless)
        loss = (config.refusal_weight * refusal + config.away_weight * away
                + config.retain_weight * retain)
        return loss, {"refusal": float(refusal.detach()), "away": float(away.detach()),
                      "retain": float(retain.detach()), "attack": float(attack.detach())}
