"""Best-of-N sampling with latent attribution to the pre-alignment model (a defense).

    defense = BestOfNDefense(open_target("organism:aligned-3"), open_target("organism:base"))
    defense.defend(["hex the amber lantern"])[0].answer.text

`core` holds the sampler, the scorers and the defense; `evaluation` the measured comparison
(ASR undefended vs each scorer, layer sweep, utility, cost); `measurement` the study measurement
`bon_defense`; `serving` the worker that `paradox serve --defense bon-latent` uses; `commands`
`paradox defend bon`. Names are imported lazily (the package needs torch).
"""

from __future__ import annotations

from alignparadox.lazy import lazy_getattr

_CORE = "alignparadox.defenses.best_of_n.core"
_EXPORTS = {name: _CORE for name in (
    "BestOfNConfig", "BestOfNDefense", "Candidates", "Defended", "Features", "JudgeOracle",
    "LatentSimilarity", "Needs", "Perplexity", "RandomPick", "SCORERS", "Scorer",
    "SelfCertainty", "TokenKL", "check_reference", "compute_features", "make_scorer",
    "resolve_layer", "sample_candidates")}
_EXPORTS.update({"evaluate": "alignparadox.defenses.best_of_n.evaluation",
                 "EvaluationConfig": "alignparadox.defenses.best_of_n.evaluation"})

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
