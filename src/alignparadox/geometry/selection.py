"""Choose the layer and token position of a refusal direction on a validation split.

Refusal-direction practice (Arditi et al. 2024): every candidate (layer, position) gives a
difference-in-means vector r. On validation prompts score
  bypass = mean refusal score on harmful prompts with r̂ ablated everywhere (lower is better),
  induce = mean refusal score on harmless prompts with r added at its layer,
  kl     = mean KL(next-token distribution || same under ablation) on harmless prompts;
drop candidates in the last fifth of the layers (layer >= (1 - prune_fraction)·L for a model of
L blocks, where layer l is the stream after l blocks), with kl above a threshold, or that do not
induce refusal, and pick the lowest bypass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from rich.progress import track
from torch import nn

from alignparadox.errors import UserError
from alignparadox.hooks import ablate, add_vectors, next_token_logits, residual_layout

RefusalScore = Callable[[torch.Tensor], torch.Tensor]  # (n, vocab) logits -> (n,) scores


def refusal_log_odds(token_ids: Sequence[int]) -> RefusalScore:
    """Refusal score = log p(refusal start) − log p(anything else), p summed over `token_ids`."""
    ids = sorted({int(i) for i in token_ids})
    if not ids:
        raise UserError("the set of refusal tokens is empty")

    def score(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if ids[-1] >= logits.shape[-1] or ids[0] < 0:
            raise UserError(f"refusal token id {ids[-1]} is outside the vocabulary "
                            f"of size {logits.shape[-1]}")
        refusal = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        refusal[ids] = True
        return logits[:, refusal].logsumexp(-1) - logits[:, ~refusal].logsumexp(-1)

    return score


def mean_difference_candidates(
    harmful: Mapping[int, torch.Tensor], harmless: Mapping[int, torch.Tensor],
    positions: Sequence[int],
) -> dict[tuple[int, int], torch.Tensor]:
    """(layer, position) -> mean(harmful) − mean(harmless), from `collect_activations` outputs
    (layer -> (n, len(positions), d_model)) gathered at `positions`."""
    candidates = {}
    for layer in sorted(set(harmful) & set(harmless)):
        if harmful[layer].shape[0] == 0 or harmless[layer].shape[0] == 0:
            raise UserError("the prompt set is empty")
        difference = harmful[layer].float().mean(0) - harmless[layer].float().mean(0)
        if difference.shape[0] != len(positions):
            raise UserError(f"activations hold {difference.shape[0]} positions but "
                            f"{len(positions)} positions were named")
        for column, position in enumerate(positions):
            candidates[(layer, position)] = difference[column]
    return candidates


@dataclass(frozen=True)
class CandidateScore:
    layer: int
    position: int
    bypass: float  # NaN when not evaluated (pruned layer)
    induce: float
    kl: float
    dropped: str | None  # why the candidate was filtered out, None if kept


@dataclass(frozen=True)
class Selection:
    best: CandidateScore | None  # None when every candidate was filtered out
    vector: torch.Tensor | None  # the best candidate's unnormalised vector
    scores: list[CandidateScore]
    baseline_harmful: float  # mean refusal score without intervention
    baseline_harmless: float

    @property
    def direction(self) -> torch.Tensor | None:
        return None if self.vector is None else self.vector / self.vector.norm()


def select_direction(
    model: nn.Module,
    tokenizer,
    candidates: Mapping[tuple[int, int], torch.Tensor],
    harmful: Sequence[str],
    harmless: Sequence[str],
    refusal_score: RefusalScore,
    *,
    kl_threshold: float = 0.1,
    induce_threshold: float = 0.0,
    prune_fraction: float = 0.2,
    batch_size: int = 16,
    progress: bool = True,
) -> Selection:
    """Score every candidate on validation prompts (chat-formatted) and pick the best bypass."""
    if not candidates:
        raise UserError("no candidate directions were given")
    if not harmful or not harmless:
        raise UserError("the prompt set is empty")
    # Layer l is the stream after l of the L blocks: it is in the last fifth when l >= 0.8·L.
    # Compared as a float, since truncating 0.8·L would also prune the layer just below it.
    prune_from = residual_layout(model).n_layers * (1.0 - prune_fraction)

    def logits(prompts: Sequence[str]) -> torch.Tensor:
        return next_token_logits(model, tokenizer, prompts, batch_size=batch_size)

    base_harmless = logits(harmless)
    base_logprobs = base_harmless.log_softmax(-1)
    scores = []
    for (layer, position), vector in track(list(candidates.items()), disable=not progress,
                                           description="candidate directions", transient=True):
        # Identical tokens (e.g. the chat template's tail at layer 0) give a zero difference.
        skip = ("in the last layers" if layer >= prune_from
                else "zero vector" if not vector.norm() > 0 else None)
        if skip:
            scores.append(CandidateScore(layer, position, math.nan, math.nan, math.nan, skip))
            continue
        with ablate(model, vector):
            bypass = refusal_score(logits(harmful)).mean().item()
            ablated_logprobs = logits(harmless).log_softmax(-1)
        with add_vectors(model, {layer: vector}):
            induce = refusal_score(logits(harmless)).mean().item()
        kl = (base_logprobs.exp() * (base_logprobs - ablated_logprobs)).sum(-1).mean().item()
        dropped = (
            f"KL {kl:.3g} > {kl_threshold}" if not kl <= kl_threshold
            else "does not induce refusal" if not induce > induce_threshold
            else None
        )
        scores.append(CandidateScore(layer, position, bypass, induce, kl, dropped))
    kept = [score for score in scores if score.dropped is None]
    best = min(kept, key=lambda score: score.bypass) if kept else None
    return Selection(
        best=best,
        vector=None if best is None else candidates[(best.layer, best.position)].float(),
        scores=scores,
        baseline_harmful=refusal_score(logits(harmful)).mean().item(),
        baseline_harmless=refusal_score(base_harmless).mean().item(),
    )
