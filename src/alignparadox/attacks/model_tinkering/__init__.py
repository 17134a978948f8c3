"""Model tinkering, the paradox's first incarnation: edit the internal state v(x) → v(x) + c·d.

    refusal = fit_refusal_direction(target).direction      # train/validation prompts only
    with ActivationAddition(refusal, alpha=-1.0).applied(target) as attacked:
        attacked.generate(prompts)
    with DirectionalAblation(refusal).applied(target) as attacked: ...
    WeightOrthogonalization(refusal).export(target, "out/")   # a normal HF checkpoint

One module per attack, one interface (`TinkeringAttack.applied`); `measurement.py` registers the
`model_tinkering` study measurement and `commands.py` the `paradox` commands.
"""

from alignparadox.attacks.model_tinkering.ablation import DirectionalAblation
from alignparadox.attacks.model_tinkering.addition import ActivationAddition
from alignparadox.attacks.model_tinkering.base import TinkeringAttack
from alignparadox.attacks.model_tinkering.orthogonalization import WeightOrthogonalization
from alignparadox.attacks.model_tinkering.recipes import (
    FittedDirection,
    fit_refusal_direction,
    fit_stance_direction,
)

__all__ = [
    "ActivationAddition",
    "DirectionalAblation",
    "FittedDirection",
    "TinkeringAttack",
    "WeightOrthogonalization",
    "fit_refusal_direction",
    "fit_stance_direction",
]
