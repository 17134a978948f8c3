"""The directions of a study cell: fitted once per process, shared by the `geometry` and
`model_tinkering` measurements of the same target, behaviour set and recipe."""

from __future__ import annotations

from typing import Any

from alignparadox.geometry.recipes import (
    FittedDirection,
    fit_refusal_direction,
    fit_value_direction,
)
from alignparadox.study.cells import Cell, content_hash
from alignparadox.study.inputs import (
    behaviour_sources,
    cell_behaviours,
    cell_judge,
    check_behaviours,
)

# Settings of the direction recipes. A study compares separability across models, so by
# default every model is measured at the same token position (the last prompt token): letting
# selection pick the position per model would mix that choice into the comparison (on the
# organisms, position -2 states separate ~100x less than -1 ones). A list of several positions
# makes position part of the selection again.
DIRECTION_DEFAULTS: dict[str, Any] = {"n_fit": 64, "n_select": 32, "positions": [-1]}
# The steering budget at which misalignability is compared (model_tinkering's `fixed_alpha`),
# also the length of the steering arrow in the geometry figures.
FIXED_ALPHA = 1.0

# What a report says of the value axis when the behaviour set has no contrast pairs.
NOT_MEASURED = "not measured: the behaviour set has no contrast pairs (give pairs = FILE)"

_FITTED: dict[str, tuple[FittedDirection, FittedDirection | None]] = {}


def cell_directions(target, cell: Cell) -> tuple[FittedDirection, FittedDirection | None]:
    """(refusal, value) directions of the cell's target on its behaviour set; the value
    direction is None when the set has no contrast pairs."""
    settings = cell.settings
    recipe = {name: settings[name] for name in DIRECTION_DEFAULTS}
    judge = cell_judge(cell)
    key = content_hash([target.weight_hash, recipe, behaviour_sources(cell), judge, cell.seed,
                        settings["batch_size"], settings["max_new_tokens"]])
    if key not in _FITTED:
        from alignparadox.judges.registry import make_judge

        behaviours = cell_behaviours(cell)
        common = {"n_fit": recipe["n_fit"], "n_select": recipe["n_select"], "seed": cell.seed,
                  "batch_size": settings["batch_size"]}
        _FITTED.clear()  # one target at a time, as studies run them
        _FITTED[key] = (
            fit_refusal_direction(target, behaviours, make_judge(judge),
                                  positions=recipe["positions"],
                                  max_new_tokens=settings["max_new_tokens"], **common),
            fit_value_direction(target, behaviours, **common))
    return _FITTED[key]


def direction_summary(fitted: FittedDirection | None) -> dict[str, Any] | None:
    if fitted is None:
        return None
    d = fitted.direction
    return {"layer": d.layer, "position": d.positions[0], "mean_norm": d.metadata["mean_norm"],
            "misaligned_sign": d.metadata.get("misaligned_sign"),
            "bypass": d.metadata["bypass"], "induce": d.metadata["induce"],
            "kl": d.metadata["kl"], "fallback": fitted.fallback,
            "baseline_harmful_score": fitted.selection.baseline_harmful,
            "refusal_tokens": d.metadata.get("refusal_tokens")}


def check_direction_cell(cell: Cell) -> None:
    """The checks `geometry` and `model_tinkering` share: requests, judge, target."""
    from alignparadox.judges.registry import check_judge
    from alignparadox.targets import check_target

    check_behaviours(cell)
    check_judge(cell_judge(cell))
    check_target(cell.target)
