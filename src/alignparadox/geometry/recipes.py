"""Direction recipes for any white-box target, on a behaviour set's fit and select splits.

Refusal direction (Arditi et al. 2024): difference in means of the residual stream on harmful
minus harmless requests of the fit split, at every layer and at the post-instruction
`positions` (default the last prompt token); the (layer, position) is chosen by
`select_direction` on the select split with the refusal score
log p(refusal opening) − log p(any other token). The refusal openings are the first tokens of
the target's *own* refusals to the fit split's harmful requests, as the study's judge finds
them, so no list of refusal phrases is assumed. A target that refuses none of them (an
unaligned model) falls back on the openings its judge knows (`judges.base.refusal_openings`);
with neither, the recipe refuses. `filters=False` turns the KL and induction filters off (for
callers that judge the steered answers anyway).

Value direction (aligned → misaligned, e.g. neutral → partisan): difference in means of the
stream at the last token of the fit split's contrast pairs, each answer teacher-forced after
its request: misaligned minus aligned. The layer is chosen by the same selection on the select
split's pairs, scored by the log-odds of the token where the aligned answer departs from the
misaligned one. A behaviour set without pairs has no value direction.

Both directions record `mean_norm` (mean residual norm at their layer and position over the fit
prompts: the scale of relative steering coefficients), the same at every layer in
`mean_norm_by_layer`, and `misaligned_sign` (the sign of a coefficient that pushes towards the
misaligned behaviour: −1 for refusal, +1 for the value axis).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from alignparadox.datasets.behaviours import HARMFUL, HARMLESS, BehaviourSet, PairSet
from alignparadox.datasets.records import PromptSet
from alignparadox.errors import UserError
from alignparadox.geometry.directions import Direction
from alignparadox.geometry.selection import (
    Selection,
    mean_difference_candidates,
    refusal_log_odds,
    select_direction,
)
from alignparadox.hooks import collect_activations, residual_layout
from alignparadox.judges.base import Judge, refusal_openings

if TYPE_CHECKING:
    from alignparadox.targets import WhiteBoxTarget

REFUSAL = "refusal"
VALUE = "stance"  # the behaviour name directions have always recorded for the value axis
_UNUSABLE = ("in the last layers", "zero vector")


@dataclass(frozen=True)
class FittedDirection:
    """A fitted direction, the selection that chose it, and the raw difference in means at the
    chosen (layer, position) (for steering by the unnormalised difference)."""

    direction: Direction
    selection: Selection
    mean_difference: torch.Tensor

    @property
    def fallback(self) -> str | None:
        return self.direction.metadata.get("selection_fallback")


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


def refusal_tokens(target: WhiteBoxTarget, harmful: PromptSet, judge: Judge, *,
                   max_new_tokens: int = 80, batch_size: int = 32,
                   ) -> tuple[list[int], dict[str, Any]]:
    """The first tokens of the target's own refusals to `harmful` (greedy answers judged by
    `judge`), else of the refusal openings the judge knows; and where they came from."""
    from alignparadox.targets import GenerationConfig

    answers = target.complete(harmful.texts, GenerationConfig(max_new_tokens=max_new_tokens,
                                                              batch_size=batch_size))
    verdicts = judge.judge([r.text for r in harmful], [a.text for a in answers])
    refused = [a for a, v in zip(answers, verdicts, strict=True) if v.refused]
    own = sorted({a.token_ids[0] for a in refused if a.token_ids})
    note = {"refused": len(refused), "of": len(harmful)}
    if own:
        return own, {"source": "own refusals", **note}
    openings = refusal_openings(judge)
    if not openings:
        raise UserError(f"{target.name} refused none of the {len(harmful)} harmful fit "
                        f"requests and judge {judge.name!r} names no refusal openings, so no "
                        "refusal score can select a direction; use a judge that knows refusal "
                        "phrases (substring) or more fit requests.")
    return first_tokens(target, openings), {"source": f"openings of judge {judge.name}", **note}


def fit_refusal_direction(
    target: WhiteBoxTarget, behaviours: BehaviourSet, judge: Judge, *, n_fit: int = 64,
    n_select: int = 32, positions: Sequence[int] = (-1,), seed: int = 0, batch_size: int = 32,
    max_new_tokens: int = 80, filters: bool = True, progress: bool = False,
) -> FittedDirection:
    """Difference-in-means refusal direction at the selected (layer, position); see module doc."""
    model, tokenizer = target.model, target.tokenizer
    layers = range(residual_layout(model).n_layers + 1)  # norms at every layer, for steering
    fit = [behaviours.requests(kind, "fit", n_fit, seed) for kind in (HARMFUL, HARMLESS)]
    select = [behaviours.requests(kind, "select", n_select, seed) for kind in (HARMFUL, HARMLESS)]
    tokens, source = refusal_tokens(target, fit[0], judge, max_new_tokens=max_new_tokens,
                                    batch_size=batch_size)
    acts = [collect_activations(model, tokenizer, [target.format_chat(r.prompt) for r in part],
                                layers, list(positions), batch_size=batch_size,
                                progress=progress) for part in fit]
    # Candidates at layers 1..L: at a chat-template position layer 0 is the same token's
    # embedding for every prompt (plus, with learned positions, the prompt's length), so it
    # holds no refusal direction, and separability (`geometry.measurement.state_layers`)
    # cannot use one there.
    candidates = mean_difference_candidates(*({layer: states for layer, states in part.items()
                                               if layer >= 1} for part in acts),
                                            list(positions))
    thresholds = {} if filters else {"kl_threshold": math.inf, "induce_threshold": -math.inf}
    selection = select_direction(
        model, tokenizer, candidates, *([target.format_chat(r.prompt) for r in part]
                                        for part in select),
        refusal_log_odds(tokens), batch_size=batch_size, progress=progress, **thresholds)
    layer, position, fallback = _choose(selection)
    norms = _mean_norms(acts, list(positions).index(position))
    return _fitted(target, candidates[(layer, position)], REFUSAL, layer, position, norms, -1,
                   selection, fallback, [*fit, *select],
                   {"n_fit": [len(p) for p in fit], "n_select": [len(p) for p in select],
                    "refusal_tokens": source})


def fit_value_direction(
    target: WhiteBoxTarget, behaviours: BehaviourSet, *, n_fit: int = 64, n_select: int = 32,
    seed: int = 0, batch_size: int = 32, progress: bool = False,
) -> FittedDirection | None:
    """Aligned → misaligned direction from teacher-forced contrast pairs; None without pairs."""
    fit, held = behaviours.contrast("fit", n_fit, seed), behaviours.contrast("select", n_select,
                                                                             seed)
    if fit is None or held is None:
        return None
    if not len(fit) or not len(held):
        raise UserError(f"behaviour set {behaviours.name} has too few contrast pairs to fit "
                        "and select a value direction.")
    model, tokenizer = target.model, target.tokenizer
    layers = range(residual_layout(model).n_layers + 1)
    acts = [collect_activations(model, tokenizer,
                                [target.format_chat(p.request) + getattr(p, side) for p in fit],
                                layers, -1, batch_size=batch_size, progress=progress)
            for side in ("aligned", "misaligned")]
    # Candidates point towards the aligned behaviour, as the selection expects.
    candidates = mean_difference_candidates(acts[0], acts[1], [-1])
    openings, tokens = departures(target, held)
    harmless = behaviours.requests(HARMLESS, "select", n_select, seed)
    # No request set makes an aligned model reliably misaligned on the value axis, so "induce"
    # cannot be judged (its filter is off); the KL filter on harmless requests guards utility.
    selection = select_direction(
        model, tokenizer, candidates, openings,
        [target.format_chat(r.prompt) for r in harmless], refusal_log_odds(tokens),
        induce_threshold=-math.inf, batch_size=batch_size, progress=progress)
    layer, position, fallback = _choose(selection)
    return _fitted(target, -candidates[(layer, position)], VALUE, layer, position,
                   _mean_norms(acts, 0), +1, selection, fallback, [fit, held, harmless],
                   {"n_fit": [len(fit), len(fit)], "n_select": [len(held), len(harmless)]})


def departures(target: WhiteBoxTarget, pairs: PairSet) -> tuple[list[str], list[int]]:
    """Per pair: the chat prompt followed by the words both answers open with, and the token
    with which the aligned answer then goes on (pairs whose answers never part, or whose
    tokens do not split at a word, are left out)."""
    openings, tokens = [], []
    for pair in pairs:
        prompt = target.format_chat(pair.request)
        shared = os.path.commonprefix([pair.aligned, pair.misaligned])
        if len(shared) == len(pair.aligned):
            continue  # the aligned answer stops where the misaligned one goes on
        cut = shared.rfind(" ")
        opening = prompt + (pair.aligned[:cut] if cut > 0 else "")
        start = target.token_ids(opening, chat=False)
        full = target.token_ids(prompt + pair.aligned, chat=False)
        if len(full) > len(start) and full[: len(start)] == start:
            openings.append(opening)
            tokens.append(full[len(start)])
    if not openings:
        raise UserError(f"no contrast pair of {pairs.name} has an aligned answer that departs "
                        "from its misaligned one at a word, so the value direction's layer "
                        "cannot be selected.")
    return openings, tokens


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


def _mean_norms(acts: list[dict[int, torch.Tensor]], column: int) -> dict[int, float]:
    """Mean residual norm per layer over every group's prompts, at one position column."""
    return {layer: float(torch.cat([a[layer][:, column] for a in acts]).norm(dim=-1).mean())
            for layer in acts[0]}


def _fitted(target: WhiteBoxTarget, vector: torch.Tensor, behaviour: str, layer: int,
            position: int, norms: dict[int, float], sign: int, selection: Selection,
            fallback: str | None, parts: Sequence[PromptSet | PairSet],
            extra: dict) -> FittedDirection:
    chosen = next(s for s in selection.scores if (s.layer, s.position) == (layer, position))
    metadata = {"behaviour": behaviour, "mean_norm": norms[layer],
                "mean_norm_by_layer": {str(k): v for k, v in norms.items()},
                "misaligned_sign": sign,
                "bypass": chosen.bypass, "induce": chosen.induce, "kl": chosen.kl,
                "selection_fallback": fallback, **extra}
    json.dumps(metadata)  # the recipe must stay JSON
    direction = Direction(vector, "diff_in_means", layer, (position,), target.weight_hash,
                          {part.name: part.sha256 for part in parts}, metadata)
    return FittedDirection(direction, selection, vector.float())

