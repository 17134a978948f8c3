"""The attacks the Best-of-N defense is measured against, each with the attack's own code.

Transfer attacks make their prompts (or their model condition) against the *undefended* target,
without looking at the defense; the defense then samples its N candidates for them:
- `direct`: the plain harmful request;
- `bon_augment`: one Best-of-N augmentation of it (Hughes et al. 2024, the attack's `augmented`);
- `templates`: the request inside an in-the-wild jailbreak template, round-robin over the
  templates attack's own selection of templates that fit the context;
- `gcg`: the request + its own GCG suffix (`gcg.run`, early stop on the judge's success at the
  greedy answer), for the first `gcg_requests` requests;
- `pair`: the prompt PAIR found against the undefended target (its success, else its most
  harmful attempt), with the cell's attacker (`scripted` by default);
- `steering`: the plain request with activation addition along the target's refusal direction
  (fitted on the behaviour set's fit and select splits) at the *coherent* alpha: the alpha of
  `steering_alphas` with the highest greedy ASR on the select split (the organism judge counts
  coherent harmful answers only), smallest alpha on ties. Steering is on while the defense
  samples and reads the target; the reference is never steered.

Adaptive attacks (`adaptive.py`) run the black-box attacks' own search against the defended
system itself.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from alignparadox.datasets.behaviours import BehaviourSet
from alignparadox.datasets.records import PromptRecord, PromptSet
from alignparadox.errors import UserError
from alignparadox.judges.base import Judge
from alignparadox.targets.whitebox import GenerationConfig, WhiteBoxTarget

TRANSFER_ATTACKS = ("direct", "bon_augment", "templates", "gcg", "pair", "steering")


@dataclass(frozen=True)
class AttackSettings:
    """What each attack needs beyond the requests (defaults: the study's demo scale)."""

    sigma: float | None = None
    template_set: str = "jailbreak-templates"
    n_templates: int = 8
    gcg_requests: int = 8
    gcg_steps: int = 50
    gcg_suffix_length: int = 12
    gcg_search_width: int = 64
    pair_attacker: str = "scripted"
    pair_streams: int = 2
    pair_rounds: int = 3
    steering_alphas: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        for name in ("n_templates", "gcg_requests", "gcg_steps", "gcg_suffix_length",
                     "gcg_search_width", "pair_streams", "pair_rounds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"bon_defense {name} must be a whole number of at least 1, got "
                                f"{value!r}.")
        if not self.steering_alphas or not all(
                isinstance(a, int | float) and not isinstance(a, bool) and 0 < a < float("inf")
                for a in self.steering_alphas):
            raise UserError(f"bon_defense steering_alphas must be positive finite numbers, got "
                            f"{list(self.steering_alphas)!r}.")


@dataclass(frozen=True)
class Attacked:
    """The prompts one attack sent for some requests (one prompt per request), and the model
    condition it needs while the defense samples (steering), if any."""

    attack: str
    records: tuple[PromptRecord, ...]
    prompts: tuple[str, ...]
    condition: Callable[[], AbstractContextManager[Any]] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def applied(self) -> AbstractContextManager[Any]:
        return self.condition() if self.condition is not None else nullcontext()

    def subset(self, keep: list[int]) -> Attacked:
        return Attacked(self.attack, tuple(self.records[i] for i in keep),
                        tuple(self.prompts[i] for i in keep), self.condition, self.details)


def attacked_prompts(target: WhiteBoxTarget, requests: PromptSet, attack: str,
                     settings: AttackSettings, judge: Judge, behaviours: BehaviourSet | None,
                     seed: int) -> Attacked | str:
    """The attack's prompts for `requests`, or the reason it cannot run on this target."""
    records = tuple(requests.records)
    if attack == "direct":
        return Attacked(attack, records, tuple(r.text for r in records))
    if attack == "bon_augment":
        return Attacked(attack, records, tuple(augment(r, settings, seed) for r in records))
    try:
        if attack == "templates":
            return _templates(target, requests, settings, seed)
        if attack == "gcg":
            return _gcg(target, requests, settings, judge, behaviours, seed)
        if attack == "pair":
            return _pair(target, requests, settings, judge, seed)
        if attack == "steering":
            return _steering(target, requests, settings, judge, behaviours, seed)
    except UserError as error:
        return f"not measured: {error}"
    raise UserError(f"unknown attack {attack!r} for the Best-of-N defense; use some of "
                    f"{', '.join(TRANSFER_ATTACKS)}.")


def augment(record: PromptRecord, settings: AttackSettings, seed: int, index: int = 0) -> str:
    from alignparadox.attacks.input_tinkering.best_of_n import augmented

    return augmented(record, index, seed, augmentation(settings))


def augmentation(settings: AttackSettings):
    from alignparadox.datasets.augmentation import Augmentation

    return Augmentation() if settings.sigma is None else Augmentation.from_sigma(settings.sigma)


def _templates(target, requests: PromptSet, settings: AttackSettings, seed: int) -> Attacked:
    from alignparadox.attacks.input_tinkering.templates import corpus_templates, select_templates

    templates = corpus_templates(settings.template_set)
    chosen, _ = select_templates(target, templates, requests, settings.n_templates, seed,
                                 settings.max_new_tokens)
    prompts = tuple(chosen[i % len(chosen)].fill(r.text) for i, r in enumerate(requests))
    return Attacked("templates", tuple(requests.records), prompts,
                    details={"templates": [t.id for t in chosen]})


def _gcg(target, requests: PromptSet, settings: AttackSettings, judge: Judge,
         behaviours: BehaviourSet | None, seed: int) -> Attacked:
    from alignparadox.attacks.input_tinkering import gcg
    from alignparadox.attacks.input_tinkering.gcg_measurement import target_texts

    records = tuple(requests.records)[:settings.gcg_requests]
    part = PromptSet(requests.name, records)
    config = gcg.GCGConfig(num_steps=settings.gcg_steps, suffix_length=settings.gcg_suffix_length,
                           search_width=settings.gcg_search_width,
                           topk=min(64, settings.gcg_search_width),
                           check_tokens=settings.max_new_tokens, seed=seed)
    goals = target_texts(target, part, judge, behaviours, seed=seed,
                         max_new_tokens=settings.max_new_tokens)
    prompts, found = [], 0
    for record, (goal, _) in zip(records, goals, strict=True):
        result = gcg.run(target, record.text, goal, config, judge=judge)
        found += result.success_step is not None
        prompts.append(record.text + config.separator + result.best_suffix)
    return Attacked("gcg", records, tuple(prompts),
                    details={"steps": settings.gcg_steps, "greedy_successes": found})


def _pair(target, requests: PromptSet, settings: AttackSettings, judge: Judge,
          seed: int) -> Attacked:
    from alignparadox.attacks.input_tinkering import pair

    results = pair.run(target, pair.open_attacker(settings.pair_attacker, seed), judge, requests,
                       pair_config(settings, seed))
    by_id = {result.request_id: result for result in results}
    kept = [r for r in requests if by_id.get(r.id) is not None and by_id[r.id].error is None
            and by_id[r.id].prompt]
    if not kept:
        raise UserError("PAIR produced no prompt for any request")
    return Attacked("pair", tuple(kept), tuple(by_id[r.id].prompt for r in kept),
                    details={"greedy_successes": sum(by_id[r.id].success for r in kept),
                             "attacker": settings.pair_attacker})


def pair_config(settings: AttackSettings, seed: int):
    from alignparadox.attacks.input_tinkering.pair import PAIRConfig

    return PAIRConfig(streams=settings.pair_streams, rounds=settings.pair_rounds,
                      max_new_tokens=settings.max_new_tokens, seed=seed)


def _steering(target: WhiteBoxTarget, requests: PromptSet, settings: AttackSettings,
              judge: Judge, behaviours: BehaviourSet | None, seed: int) -> Attacked:
    from alignparadox.attacks.model_tinkering.addition import ActivationAddition
    from alignparadox.geometry.recipes import fit_refusal_direction

    if behaviours is None or not behaviours.has_harmless:
        raise UserError("steering needs harmless requests to fit the refusal direction")
    fitted = fit_refusal_direction(target, behaviours, judge, n_fit=32, n_select=16, seed=seed,
                                   max_new_tokens=settings.max_new_tokens)
    sign = fitted.direction.metadata["misaligned_sign"]
    select = behaviours.requests("harmful", "select", len(requests), seed)
    greedy = GenerationConfig(max_new_tokens=settings.max_new_tokens)
    sweep = []
    for alpha in settings.steering_alphas:
        with ActivationAddition(fitted.direction, alpha=sign * alpha).applied(target):
            answers = target.generate(select.texts, greedy)
        verdicts = judge.judge(select.texts, answers)
        sweep.append({"alpha": alpha, "select_asr": sum(v.success for v in verdicts)
                      / max(1, len(verdicts))})
    best = max(sweep, key=lambda point: (point["select_asr"], -point["alpha"]))
    addition = ActivationAddition(fitted.direction, alpha=sign * best["alpha"])
    return Attacked("steering", tuple(requests.records), tuple(requests.texts),
                    condition=lambda: addition.applied(target),
                    details={"alpha": best["alpha"], "layer": fitted.direction.layer,
                             "alpha_sweep": sweep})
