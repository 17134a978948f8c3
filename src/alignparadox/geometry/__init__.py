"""Directions in the residual stream and how well they separate two groups of states.

    acts = collect_activations(model, tok, harmful + harmless, layers=range(L), positions=-1)
    extractor = DiffInMeans().fit(acts[8][:n, 0], acts[8][n:, 0])      # .direction_: unit vector
    Direction(extractor.direction_, "diff_in_means", 8, (-1,), model_hash).save("refusal")
    separability(acts[8][:n, 0], acts[8][n:, 0])                        # Fisher, held-out AUROC
    fit_refusal_direction(target, behaviour_set(behaviours="xstest"), judge)   # any chat model
"""

from alignparadox.geometry.directions import (
    DiffInMeans,
    Direction,
    PairedPCA,
    ProbeDirection,
)
from alignparadox.geometry.recipes import (
    FittedDirection,
    fit_refusal_direction,
    fit_value_direction,
)
from alignparadox.geometry.selection import (
    CandidateScore,
    Selection,
    mean_difference_candidates,
    refusal_log_odds,
    select_direction,
)
from alignparadox.geometry.separability import (
    Projection2D,
    Separability,
    fisher_ratio,
    projection_2d,
    separability,
    separability_by_layer,
)

__all__ = [
    "CandidateScore",
    "DiffInMeans",
    "Direction",
    "FittedDirection",
    "PairedPCA",
    "ProbeDirection",
    "Projection2D",
    "Selection",
    "Separability",
    "fisher_ratio",
    "fit_refusal_direction",
    "fit_value_direction",
    "mean_difference_candidates",
    "projection_2d",
    "refusal_log_odds",
    "select_direction",
    "separability",
    "separability_by_layer",
]
