"""Model tinkering, the paradox's first incarnation: edit the internal state v(x) → v(x) + c·d.

    behaviours = behaviour_set(harmful="advbench", harmless="self-instruct-seed")
    refusal = fit_refusal_direction(target, behaviours, judge).direction   # fit/select splits
    with ActivationAddition(refusal, alpha=-1.0).applied(target) as attacked:
        attacked.generate(prompts)
    with DirectionalAblation(refusal).applied(target) as attacked: ...
    WeightOrthogonalization(refusal).export(target, "out/")   # a normal HF checkpoint

One module per attack, one interface (`TinkeringAttack.applied`); `measurement.py` registers the
`model_tinkering` study measurement and `commands.py` the `paradox` commands.

Names are imported lazily (they need torch and transformers) so that `paradox --help`
stays fast.
"""

from __future__ import annotations

from alignparadox.lazy import lazy_getattr

_EXPORTS = {
    "ActivationAddition": "alignparadox.attacks.model_tinkering.addition",
    "DirectionalAblation": "alignparadox.attacks.model_tinkering.ablation",
    "FittedDirection": "alignparadox.geometry.recipes",
    "TinkeringAttack": "alignparadox.attacks.model_tinkering.base",
    "WeightOrthogonalization": "alignparadox.attacks.model_tinkering.orthogonalization",
    "fit_refusal_direction": "alignparadox.geometry.recipes",
    "fit_value_direction": "alignparadox.geometry.recipes",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
