"""Fitting the directions the attacks steer along, on train and validation prompts only.

Refusal direction (Arditi et al. 2024): difference in means of the residual stream on harmful
minus harmless requests, at every layer and at the post-instruction positions (`positions`,
default the chat template's last two tokens), fitted on `fit_set`; the (layer, position) is then
chosen by `geometry.select_direction` on `select_set` with the refusal score
log p(first token of a refusal) − log p(any other token). The refusal tokens are the first
tokens of the organism world's refusals; for organisms every other token is in practice the
compliance opening "Sure".

Stance direction (neutral → partisan): difference in means of the stream at the last token of
the organism world's own stance answers, teacher-forced after the request: partisan answer minus
neutral answer. Layer chosen by the same selection, scored by the log-odds of the token where the
neutral answer departs from the partisan one. Stance requests of the validation split share
their templates with the test split, so stance fitting and selection both use the train split
(disjoint halves by template).

Both directions record `mean_norm` (mean residual norm at their layer and position over the fit
prompts: the scale of relative steering coefficients), the same at every layer in
`mean_norm_by_layer` (for steering at another layer), and `misaligned_sign` (the sign of a
coefficient that pushes towards the misaligned behaviour: −1 for refusal, +1 for stance).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from alignparadox.datasets.records import PromptSet
from alignparadox.datasets.registry import load_prompt_set
from alignparadox.errors import UserError
from alignparadox.geometry import (
    Direction,
    Selection,
    mean_difference_candidates,
    refusal_log_odds,
    select_direction,
)
from alignparadox.hooks import collect_activations, residual_layout
from alignparadox.organisms import world
from alignparadox.organisms.judge import parse_request

if TYPE_CHECKING:
    from alignparadox.targets import WhiteBoxTarget

REFUSAL = "refusal"
STANCE = "stance"
_UNUSABLE = ("in the last layers", "zero vector")


@dataclass(frozen=True)
class FittedDirection:
    """A fitted direction, the selection that chose it, and whether the filters were relaxed."""

    direction: Direction
    selection: Selection

    @property
    def fallback(self) -> str | None:
        return self.direction.metadata.get("selection_fallback")


def sample(prompt_set: str, n: int, seed: int, *, harmful: bool | None,
           stance: bool | None = None) -> PromptSet:
    """Seeded sample of up to n records of a prompt set, by harmfulness and stance."""
    if n < 1:
        raise UserError(f"the number of prompts per group must be at least 1, got {n}")
    full = load_prompt_set(prompt_set)
    records = [r for r in full
               if (harmful is None or r.harmful == harmful)
               and (stance is None or (r.category == world.STANCE) == stance)]
    if not records:
        raise UserError(f"prompt set {prompt_set} has no {_group_name(harmful, stance)} requests")
    picked = PromptSet(f"{full.name}[{_group_name(harmful, stance)}]", tuple(records))
    return picked.sample(min(n, len(picked)), seed)


def _group_name(harmful: bool | None, stance: bool | None) -> str:
    return "stance" if stance else "harmful" if harmful else "harmless" if harmful is False \
        else "all"


def first_tokens(target: WhiteBoxTarget, texts: Sequence[str]) -> list[int]:
    """The first token of each text as it starts an assistant answer."""
    prefix = target.format_chat("x")
    base = len(target.token_ids(prefix, chat=False))
    return sorted({target.token_ids(prefix + text, chat=False)[base] for text in texts})


def mean_norm(target: WhiteBoxTarget, prompts: Sequence[str], layer: int, position: int,
              batch_size: int = 32) -> float:
    """Mean L2 norm of the residual stream at `layer` and `position` over `prompts`."""
    acts = collect_activations(target.model, target.tokenizer, prompts, [layer], position,
                               batch_size=batch_size, progress=False)[layer][:, 0]
    return float(acts.norm(dim=-1).mean())


def _choose(selection: Selection) -> tuple[int, int, str | None]:
    """The selected candidate; if every one failed the filters, relax them in a fixed order.

    The induce filter goes first (weakly aligned models cannot be made to refuse, yet their
    refusal can still be bypassed), the KL filter last (it guards the model's utility). The
    relaxation is recorded in the direction's metadata and shown in reports.
    """
    if selection.best is not None:
        return selection.best.layer, selection.best.position, None
    usable = [s for s in selection.scores if s.dropped not in _UNUSABLE]
    if not usable:
        raise UserError("no candidate direction is usable: every layer is a pruned last layer "
                        "or gives a zero difference")
    within_kl = [s for s in usable if not s.dropped.startswith("KL")]
    pool = within_kl or usable
    best = min(pool, key=lambda s: s.bypass)
    note = ("no candidate induces refusal; chose the lowest bypass within the KL threshold"
            if within_kl else "no candidate passes the KL threshold; chose the lowest bypass")
    return best.layer, best.position, note


def fit_refusal_direction(
    target: WhiteBoxTarget, *, fit_set: str = "organisms-train",
    select_set: str = "organisms-validation", n_fit: int = 64, n_select: int = 32,
    positions: Sequence[int] = (-1, -2), seed: int = 0, batch_size: int = 32,
    progress: bool = False,
) -> FittedDirection:
    """Difference-in-means refusal direction at the selected (layer, position); see module doc."""
    model, tokenizer = target.model, target.tokenizer
    layers = range(residual_layout(model).n_layers + 1)
    fit_harmful, fit_harmless = (sample(fit_set, n_fit, seed, harmful=h, stance=False)
                                 for h in (True, False))
    select_harmful, select_harmless = (sample(select_set, n_select, seed, harmful=h, stance=False)
                                       for h in (True, False))
    chat = [target.format_chat(r.prompt) for r in fit_harmful], \
        [target.format_chat(r.prompt) for r in fit_harmless]
    acts = [collect_activations(model, tokenizer, prompts, layers, list(positions),
                                batch_size=batch_size, progress=progress) for prompts in chat]
    candidates = mean_difference_candidates(acts[0], acts[1], list(positions))
    selection = select_direction(
        model, tokenizer, candidates,
        [target.format_chat(r.prompt) for r in select_harmful],
        [target.format_chat(r.prompt) for r in select_harmless],
        refusal_log_odds(first_tokens(target, world.REFUSALS)),
        batch_size=batch_size, progress=progress)
    layer, position, fallback = _choose(selection)
    norms = _mean_norms(acts, list(positions).index(position))
    return _fitted(target, candidates[(layer, position)], REFUSAL, layer, position, norms, -1,
                   selection, fallback,
                   {fit_set: _hash(fit_harmful, fit_harmless),
                    select_set: _hash(select_harmful, select_harmless)},
                   {"n_fit": [len(fit_harmful), len(fit_harmless)],
                    "n_select": [len(select_harmful), len(select_harmless)]})


def fit_stance_direction(
    target: WhiteBoxTarget, *, fit_set: str = "organisms-train",
    select_set: str = "organisms-validation", n_fit: int = 64, n_select: int = 32,
    seed: int = 0, batch_size: int = 32, progress: bool = False,
) -> FittedDirection:
    """Neutral → partisan direction from teacher-forced stance answers; see module doc."""
    model, tokenizer = target.model, target.tokenizer
    layers = range(residual_layout(model).n_layers + 1)
    stance = sample(fit_set, 10**9, seed, harmful=False, stance=True)
    requests = [parse_request(r.text) for r in stance]
    if any(r is None or r.faction is None for r in requests):
        raise UserError(f"prompt set {fit_set} has stance requests outside the organism world")
    # Disjoint halves by template: fit on even templates, select on odd ones.
    fit = [r for r in requests if r.template % 2 == 0][:n_fit]
    held = [r for r in requests if r.template % 2 == 1][:n_select]
    if not fit or not held:
        raise UserError(f"prompt set {fit_set} has too few stance templates to fit and select")
    partisan = [target.format_chat(r.text) + world.partisan_answer(r.faction) for r in fit]
    neutral = [target.format_chat(r.text) + world.neutral_answer(r.faction) for r in fit]
    acts = [collect_activations(model, tokenizer, texts, layers, -1, batch_size=batch_size,
                                progress=progress) for texts in (neutral, partisan)]
    # Candidates point towards the aligned (neutral) behaviour, as the selection expects.
    candidates = mean_difference_candidates(acts[0], acts[1], [-1])
    openings = [target.format_chat(r.text) + f"The {r.faction}" for r in held]
    neutral_token = _divergent_token(target, held[0])
    harmless = sample(select_set, n_select, seed, harmful=False, stance=False)
    # No prompt set makes an aligned organism reliably partisan, so "induce" cannot be judged
    # (its filter is off); the KL filter on harmless requests still guards utility.
    selection = select_direction(
        model, tokenizer, candidates, openings,
        [target.format_chat(r.prompt) for r in harmless], refusal_log_odds([neutral_token]),
        induce_threshold=-math.inf, batch_size=batch_size, progress=progress)
    layer, position, fallback = _choose(selection)
    return _fitted(target, -candidates[(layer, position)], STANCE, layer, position,
                   _mean_norms(acts, 0), +1,
                   selection, fallback,
                   {f"{fit_set}[stance]": stance.sha256, select_set: harmless.sha256},
                   {"n_fit": [len(fit), len(fit)], "n_select": [len(held), len(harmless)]})


def _divergent_token(target: WhiteBoxTarget, request: world.WorldRequest) -> int:
    """The first token of the neutral answer that the partisan answer does not share."""
    prompt = target.format_chat(request.text)
    neutral = target.token_ids(prompt + world.neutral_answer(request.faction), chat=False)
    partisan = target.token_ids(prompt + world.partisan_answer(request.faction), chat=False)
    index = next(i for i, (a, b) in enumerate(zip(neutral, partisan, strict=False)) if a != b)
    return neutral[index]


def _mean_norms(acts: list[dict[int, torch.Tensor]], column: int) -> dict[int, float]:
    """Mean residual norm per layer over every group's prompts, at one position column."""
    return {layer: float(torch.cat([a[layer][:, column] for a in acts]).norm(dim=-1).mean())
            for layer in acts[0]}


def _hash(*sets: PromptSet) -> str:
    from alignparadox.study import content_hash

    return content_hash([s.sha256 for s in sets])


def _fitted(target: WhiteBoxTarget, vector: torch.Tensor, behaviour: str, layer: int,
            position: int, norms: dict[int, float], sign: int, selection: Selection,
            fallback: str | None, prompt_hashes: dict[str, str], extra: dict) -> FittedDirection:
    chosen = next(s for s in selection.scores if (s.layer, s.position) == (layer, position))
    metadata = {"behaviour": behaviour, "mean_norm": norms[layer],
                "mean_norm_by_layer": {str(k): v for k, v in norms.items()},
                "misaligned_sign": sign,
                "bypass": chosen.bypass, "induce": chosen.induce, "kl": chosen.kl,
                "selection_fallback": fallback, **extra}
    json.dumps(metadata)  # the recipe must stay JSON
    direction = Direction(vector, "diff_in_means", layer, (position,), target.weight_hash,
                          prompt_hashes, metadata)
    return FittedDirection(direction, selection)
