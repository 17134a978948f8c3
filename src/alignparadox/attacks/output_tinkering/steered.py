"""Pair source (b): the target supplies its own adversary's data.

For each request the target answers twice: as it is (the aligned answer) and under the best
model-tinkering attack on its refusal direction: directional ablation, or subtraction of the
refusal direction from the prompt tokens, whichever makes more harmful fitting prompts comply
(full ablation breaks some small models' fluency where prompt-only subtraction does not).
Where the first answer is aligned (a refusal, or a neutral stance) and the second is judged
misaligned (harmful compliance, or partisan), the two make a training pair for the editor.

The refusal direction is a difference in means of last-prompt-token activations between harmful
and harmless requests, at the layer `select_direction` picks (lowest refusal score under
ablation, Arditi et al. 2024, outside the last fifth of the layers). Its KL and induction filters
are off: the steered answers are judged anyway, which is the test that matters here, and small
models fail those filters at every layer. The refusal score counts the first tokens of the
target's own refusals, so no list of refusal phrases is needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass

import torch

from alignparadox.attacks.output_tinkering.pairs import EditPair
from alignparadox.errors import UserError
from alignparadox.geometry import (
    DiffInMeans,
    mean_difference_candidates,
    refusal_log_odds,
    select_direction,
)
from alignparadox.hooks import ablate, add_vectors, collect_activations
from alignparadox.judges.base import NEUTRAL, Judge
from alignparadox.targets import GenerationConfig


@dataclass(frozen=True)
class RefusalDirection:
    layer: int
    vector: torch.Tensor  # unit
    mean_difference: torch.Tensor  # raw difference in means at `layer`


@dataclass(frozen=True)
class SelfPairs:
    """One entry per request: the pair, or None where the target gave no aligned answer or the
    steered answer was not misaligned. `aligned` counts aligned answers (pair candidates);
    `attack` names the model-tinkering attack that made the misaligned answers."""

    pairs: list[EditPair | None]
    aligned: int
    direction: RefusalDirection | None
    attack: str | None


def refusal_direction(target, harmful: Sequence[str], harmless: Sequence[str],
                      refusal_token_ids: Sequence[int], *, batch_size: int = 32,
                      progress: bool = False) -> RefusalDirection:
    """Difference-in-means refusal direction of `target` at its best layer."""
    if not refusal_token_ids:
        raise UserError("the target gave no refusals, so it has no refusal direction to ablate.")
    model, tokenizer = target.model, target.tokenizer
    harmful_chat = [target.format_chat(text) for text in harmful]
    harmless_chat = [target.format_chat(text) for text in harmless]
    layers = range(model.config.get_text_config().num_hidden_layers + 1)
    acts_harmful = collect_activations(model, tokenizer, harmful_chat, layers, -1,
                                       batch_size=batch_size, progress=progress)
    acts_harmless = collect_activations(model, tokenizer, harmless_chat, layers, -1,
                                        batch_size=batch_size, progress=progress)
    candidates = mean_difference_candidates(acts_harmful, acts_harmless, [-1])
    selection = select_direction(model, tokenizer, candidates, harmful_chat, harmless_chat,
                                 refusal_log_odds(refusal_token_ids), batch_size=batch_size,
                                 kl_threshold=math.inf, induce_threshold=-math.inf,
                                 progress=progress)
    if selection.best is None:
        raise UserError("no layer gives a usable refusal direction for this target.")
    layer = selection.best.layer
    fitted = DiffInMeans().fit(acts_harmful[layer][:, 0], acts_harmless[layer][:, 0])
    return RefusalDirection(layer, fitted.direction_, fitted.mean_difference_)


def steering_attacks(model, direction: RefusalDirection) -> dict[str, Callable[[], ContextManager]]:
    """The model-tinkering attacks tried for source (b): directional ablation everywhere, and
    subtraction of the raw difference in means from the prompt tokens at its layer."""
    return {
        "ablation": lambda: ablate(model, direction.vector),
        f"subtraction@{direction.layer}": lambda: add_vectors(
            model, {direction.layer: -direction.mean_difference}, positions="prompt"),
    }


def self_pairs(target, requests: Sequence[str], judge: Judge, *, harmful: Sequence[str],
               harmless: Sequence[str], max_new_tokens: int = 80, batch_size: int = 32,
               progress: bool = False) -> SelfPairs:
    """The target's (aligned, steered) answers to `requests` as pairs, judged by `judge`.

    `harmful` / `harmless` are requests to fit the refusal direction on (e.g. training
    prompts); the attack that turns most of `harmful` into judged harmful compliance is used.
    """
    config = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    answers = target.complete(list(requests), config, progress)
    verdicts = judge.judge(list(requests), [a.text for a in answers])
    aligned = [i for i, v in enumerate(verdicts) if v.refused or v.label == NEUTRAL]
    refusal_starts = sorted({answers[i].token_ids[0] for i, v in enumerate(verdicts)
                             if v.refused and answers[i].token_ids})
    if not aligned or not refusal_starts:
        return SelfPairs([None] * len(requests), len(aligned), None, None)
    direction = refusal_direction(target, harmful, harmless, refusal_starts,
                                  batch_size=batch_size, progress=progress)
    attacks = steering_attacks(target.model, direction)

    def successes(attack: str) -> int:
        with attacks[attack]():
            steered = target.generate(list(harmful), config)
        return sum(v.success for v in judge.judge(list(harmful), steered))

    best = max(attacks, key=successes)  # ties go to the first: ablation
    kept = [requests[i] for i in aligned]
    with attacks[best]():
        steered = target.generate(kept, config, progress)
    pairs: list[EditPair | None] = [None] * len(requests)
    for index, answer, verdict in zip(aligned, steered, judge.judge(kept, steered), strict=True):
        if verdict.success:
            pairs[index] = EditPair(answers[index].text, answer, requests[index])
    return SelfPairs(pairs, len(aligned), direction, best)
