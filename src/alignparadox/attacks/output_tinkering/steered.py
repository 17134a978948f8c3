"""Pair source (b): the target supplies its own adversary's data.

For each request the target answers twice: as it is (the aligned answer) and under the best
model-tinkering attack on its refusal direction: directional ablation, or subtraction of the
refusal direction from the prompt tokens, whichever makes more harmful fit-split requests
comply (full ablation breaks some small models' fluency where prompt-only subtraction does not).
Where the first answer is aligned (a refusal, or a neutral stance) and the second is judged
misaligned (harmful compliance, or partisan), the two make a training pair for the editor.

The refusal direction is the model-generic recipe of `geometry.recipes` on the behaviour set's
fit and select splits (its refusal score counts the first tokens of the target's own refusals),
with the KL and induction filters off: the steered answers are judged anyway, which is the test
that matters here, and small models fail those filters at every layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass

from alignparadox.attacks.output_tinkering.pairs import EditPair
from alignparadox.datasets.behaviours import HARMFUL, BehaviourSet
from alignparadox.geometry.recipes import FittedDirection, fit_refusal_direction
from alignparadox.hooks import ablate, add_vectors
from alignparadox.judges.base import NEUTRAL, Judge
from alignparadox.targets import GenerationConfig


@dataclass(frozen=True)
class SelfPairs:
    """One entry per request: the pair, or None where the target gave no aligned answer or the
    steered answer was not misaligned. `aligned` counts aligned answers (pair candidates);
    `attack` names the model-tinkering attack that made the misaligned answers."""

    pairs: list[EditPair | None]
    aligned: int
    direction: FittedDirection | None
    attack: str | None


def steering_attacks(model, fitted: FittedDirection) -> dict[str, Callable[[], ContextManager]]:
    """The model-tinkering attacks tried for source (b): directional ablation everywhere, and
    subtraction of the raw difference in means from the prompt tokens at its layer."""
    layer = fitted.direction.layer
    return {
        "ablation": lambda: ablate(model, fitted.direction.vector),
        f"subtraction@{layer}": lambda: add_vectors(
            model, {layer: -fitted.mean_difference}, positions="prompt"),
    }


def self_pairs(target, requests: Sequence[str], judge: Judge, behaviours: BehaviourSet, *,
               n_fit: int = 32, seed: int = 0, max_new_tokens: int = 80, batch_size: int = 32,
               progress: bool = False) -> SelfPairs:
    """The target's (aligned, steered) answers to `requests` as pairs, judged by `judge`.

    The refusal direction is fitted on up to `n_fit` requests per group of the behaviour set's
    fit and select splits; the attack that turns most of its harmful fit requests into judged
    harmful compliance is used.
    """
    config = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    answers = target.complete(list(requests), config, progress)
    verdicts = judge.judge(list(requests), [a.text for a in answers])
    aligned = [i for i, v in enumerate(verdicts) if v.refused or v.label == NEUTRAL]
    if not aligned:
        return SelfPairs([None] * len(requests), 0, None, None)
    direction = fit_refusal_direction(target, behaviours, judge, n_fit=n_fit, n_select=n_fit,
                                      seed=seed, batch_size=batch_size,
                                      max_new_tokens=max_new_tokens, filters=False,
                                      progress=progress)
    harmful = behaviours.requests(HARMFUL, "fit", n_fit, seed).texts
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
