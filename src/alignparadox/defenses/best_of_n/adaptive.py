"""Adaptive attacks: the black-box attacks' own search run against the *defended* system.

`DefendedTarget` is the defended system as a black-box target (what `paradox serve TARGET
--defense bon-latent` serves over HTTP, without the HTTP): each query is answered by the
defense's pick among N candidates sampled with the defense's own settings, so an attack's
temperature does not apply, and its seed and token budget do. A prompt that leaves no room for
an answer fails as the server rejects it (a 400), never as an empty answer.

Each adaptive attack runs twice on the same requests: against one sample of the target at the
defense's temperature (plain sampling: the same defense with N = 1) and against the defense
with the latent scorer. PAIR gets the judge's verdict on the *defended* answer as its feedback,
as in the paper's adaptive PAIR; Best-of-N augmentation draws up to `adaptive_bon_n`
augmentations per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from alignparadox.datasets.records import PromptSet
from alignparadox.defenses.best_of_n.attacked import AttackSettings, augmentation, pair_config
from alignparadox.defenses.best_of_n.core import BestOfNConfig, BestOfNDefense
from alignparadox.judges.base import Judge
from alignparadox.targets.endpoint import EndpointError
from alignparadox.targets.whitebox import WhiteBoxTarget

ADAPTIVE_ATTACKS = ("pair", "bon_augment")


class DefendedTarget:
    """A Best-of-N defense with the black-box target interface of the input attacks."""

    def __init__(self, defense: BestOfNDefense) -> None:
        self.defense = defense
        self.name = f"{defense.target.name} [{defense.describe()}]"

    def generate(self, prompts: list[Any], config: Any = None) -> list[str]:
        results = self.generate_results(prompts, config)
        failed = [r for r in results if not isinstance(r, str)]
        if failed:
            raise failed[0]
        return results  # type: ignore[return-value]

    def generate_results(self, prompts: list[Any], config: Any = None) -> list[str | EndpointError]:
        target = self.defense.target
        wanted = getattr(config, "max_new_tokens", None) or self.defense.config.max_new_tokens
        seed = getattr(config, "seed", None)
        results: list[str | EndpointError | None] = [None] * len(prompts)
        by_budget: dict[int, list[tuple[int, list[int]]]] = {}
        for index, prompt in enumerate(prompts):
            ids = target.token_ids(prompt)
            room = (target.context_length or 1 << 62) - len(ids)
            if room < 1:
                results[index] = EndpointError(
                    f"the prompt ({len(ids)} tokens) leaves no room for an answer in the "
                    f"context of {target.name}", index=index, status=400)
                continue
            by_budget.setdefault(min(wanted, room), []).append((index, ids))
        for budget, part in by_budget.items():
            defended = self.defense.defend_ids([ids for _, ids in part], seed=seed,
                                               max_new_tokens=budget)
            for (index, _), answer in zip(part, defended, strict=True):
                results[index] = answer.answer.text
        return results  # type: ignore[return-value]


def run_adaptive(target: WhiteBoxTarget, reference: WhiteBoxTarget, judge: Judge,
                 requests: PromptSet, attack: str, bon: BestOfNConfig, layer: int,
                 settings: AttackSettings, adaptive_bon_n: int, seed: int,
                 resamples: int) -> dict[str, Any]:
    """Per-request success of `attack` against one sample and against the latent defense."""
    from alignparadox.defenses.best_of_n.evaluation import relative_reduction
    from alignparadox.stats import wilson

    systems = {
        "one_sample": BestOfNDefense(target, None, replace(bon, n=1), "random"),
        "latent": BestOfNDefense(target, reference, replace(bon, layer=layer), "latent"),
    }
    outcome: dict[str, Any] = {"attack": attack, "requests": len(requests)}
    success = {}
    for name, defense in systems.items():
        results = _attack(DefendedTarget(defense), judge, requests, attack, settings,
                          adaptive_bon_n, seed)
        answered = {r.request_id: r for r in results if r.error is None}
        success[name] = np.array([float(answered[r.id].success) if r.id in answered
                                  else np.nan for r in requests])
        outcome[name] = {
            "asr": wilson(int(np.nansum(success[name])),
                          int(np.sum(~np.isnan(success[name])))).as_dict(),
            "queries": float(np.mean([r.queries for r in answered.values()]))
            if answered else None,
            "failed": len(requests) - len(answered)}
    both = ~np.isnan(success["one_sample"]) & ~np.isnan(success["latent"])
    outcome["reduction"] = relative_reduction(success["one_sample"][both],
                                              success["latent"][both], resamples, seed)
    return outcome


def _attack(system: DefendedTarget, judge: Judge, requests: PromptSet, attack: str,
            settings: AttackSettings, adaptive_bon_n: int, seed: int) -> Sequence:
    if attack == "pair":
        from alignparadox.attacks.input_tinkering import pair

        return pair.run(system, pair.open_attacker(settings.pair_attacker, seed), judge,
                        requests, pair_config(settings, seed))
    from alignparadox.attacks.input_tinkering import best_of_n

    config = best_of_n.BestOfNConfig(n=adaptive_bon_n, max_new_tokens=settings.max_new_tokens,
                                     seed=seed, augmentation=augmentation(settings))
    return best_of_n.run(system, judge, requests, config)
