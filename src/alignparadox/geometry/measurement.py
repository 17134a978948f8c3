"""The `geometry` measurement: how cleanly aligned and misaligned states split, layer by layer.

Three definitions of "aligned vs misaligned states", on the select split of the cell's
behaviour set (never the test split):
- `request` (the paper's Figure 1B): states of harmful requests vs harmless requests, at the
  refusal direction's token position;
- `behaviour`: states of harmful requests the target refused vs those it answered with harmful
  compliance (greedy answers, the cell's judge), at the same position. Weakly aligned targets
  refuse little, so this group can be too small (fewer than 4 states): the layer table is then
  empty and says why;
- `value` (Figure 1B's value version, the paper's c_Putin): states of a value-axis request
  followed by its aligned answer vs by its misaligned one (neutral vs partisan for organisms),
  teacher-forced, at the value direction's position; `None` when the set has no contrast pairs.
Per layer: Fisher ratio along the held-out difference in means and held-out probe AUROC
(`separability_by_layer`); at the direction's layer, a 2-D projection (x = the fitted refusal
or value direction, y = the top orthogonal principal component), of which a subsample of points
is kept.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch

from alignparadox.datasets.behaviours import HARMFUL, HARMLESS
from alignparadox.errors import UserError
from alignparadox.geometry.directions import Direction
from alignparadox.geometry.fitted import (
    DIRECTION_DEFAULTS,
    FIXED_ALPHA,
    NOT_MEASURED,
    cell_directions,
    check_direction_cell,
    direction_summary,
)
from alignparadox.geometry.separability import projection_2d, separability_by_layer
from alignparadox.hooks import collect_activations, residual_layout
from alignparadox.judges import scoring
from alignparadox.judges.registry import make_judge
from alignparadox.report.html import Markup, ReportOptions, Section, figure, table
from alignparadox.stats import wilson
from alignparadox.study.cells import Cell
from alignparadox.study.inputs import BEHAVIOUR_SETTINGS, cell_behaviours, cell_judge
from alignparadox.study.measurement import (
    CellResult,
    Measurement,
    RunContext,
    register_measurement,
)
from alignparadox.study.store import CellRecord
from alignparadox.study.strength import (
    SUCCESS,
    ParadoxMeasure,
    Position,
    alignment_strengths,
    correlation_rows,
    target_positions,
)
from alignparadox.targets.providers import alignment_strength

MIN_GROUP = 4  # separability holds out 30% of each group: fewer leaves nothing to test on


def state_layers(n_layers: int, direction: Direction) -> range:
    """Layers 1..L whose states are compared; refuses a direction at any other layer.

    Layer 0 is left out: at a chat-template position it is the same token embedding for every
    prompt, so it separates nothing and has no difference in means.
    """
    if not 1 <= direction.layer <= n_layers:
        raise UserError(f"the direction is at layer {direction.layer}, but separability is "
                        f"measured at layers 1..{n_layers} (layer 0, the embeddings, is the same "
                        "for every prompt at a chat-template position)")
    return range(1, n_layers + 1)


def layer_table(aligned: dict[int, torch.Tensor], misaligned: dict[int, torch.Tensor],
                seed: int = 0) -> list[dict[str, Any]]:
    """Per-layer held-out Fisher ratio and probe AUROC of two groups of states."""
    return [{"layer": s.layer, "fisher": s.fisher, "auroc": s.auroc, "n_train": s.n_train,
             "n_test": s.n_test}
            for s in separability_by_layer(aligned, misaligned, seed=seed)]


def projection_points(aligned: torch.Tensor, misaligned: torch.Tensor, direction: torch.Tensor,
                      keep: int, seed: int = 0) -> dict[str, list[list[float]]]:
    """2-D coordinates of both groups (a seeded subsample of at most `keep` each)."""
    projection = projection_2d(aligned, misaligned, direction)
    rng = random.Random(seed)

    def subsample(points: np.ndarray) -> list[list[float]]:
        rows = sorted(rng.sample(range(len(points)), min(keep, len(points))))
        return [[round(float(x), 5), round(float(y), 5)] for x, y in points[rows]]

    return {"aligned": subsample(projection.pos), "misaligned": subsample(projection.neg)}


def _definition(aligned: dict[int, torch.Tensor], misaligned: dict[int, torch.Tensor],
                direction, keep: int, seed: int) -> dict[str, Any]:
    n_aligned, n_misaligned = (len(next(iter(group.values()))) for group in (aligned, misaligned))
    result: dict[str, Any] = {"n_aligned": n_aligned, "n_misaligned": n_misaligned,
                              "per_layer": [], "projection": None, "fisher_on_direction": None}
    if min(n_aligned, n_misaligned) < MIN_GROUP:
        result["skipped"] = f"fewer than {MIN_GROUP} states in a group"
        return result
    result["per_layer"] = layer_table(aligned, misaligned, seed)
    layer = direction.layer
    result["projection"] = projection_points(aligned[layer], misaligned[layer], direction.vector,
                                             keep, seed)
    on_direction = separability_by_layer({layer: aligned[layer]}, {layer: misaligned[layer]},
                                         {layer: direction.vector}, seed=seed)[0]
    result["fisher_on_direction"] = on_direction.fisher
    return result


@register_measurement
class Geometry(Measurement):
    name = "geometry"
    title = "Geometry: separability of aligned and misaligned states"
    order = 20
    defaults = {**DIRECTION_DEFAULTS, **BEHAVIOUR_SETTINGS, "n_per_kind": 64, "judge": None,
                "max_new_tokens": 80, "batch_size": 32, "points_kept": 60}

    def check(self, cell: Cell) -> None:
        check_direction_cell(cell)

    def run(self, cell: Cell, context: RunContext) -> CellResult:
        from alignparadox.targets import GenerationConfig, shared_target

        settings = cell.settings
        target = shared_target(cell.target)
        behaviours = cell_behaviours(cell)
        refusal, value = cell_directions(target, cell)
        direction = refusal.direction
        harmful, harmless = (behaviours.requests(kind, "select", settings["n_per_kind"],
                                                 cell.seed) for kind in (HARMFUL, HARMLESS))
        layers = state_layers(residual_layout(target.model).n_layers, direction)

        def states(prompts: list[str], position: int,
                   at: range | list[int] = layers) -> dict[int, torch.Tensor]:
            acts = collect_activations(target.model, target.tokenizer, prompts, at, position,
                                       batch_size=settings["batch_size"], progress=False)
            return {layer: a[:, 0] for layer, a in acts.items()}

        harmful_states, harmless_states = (
            states([target.format_chat(r.prompt) for r in records], direction.positions[0])
            for records in (harmful, harmless))
        answers = target.generate(
            harmful.texts, GenerationConfig(max_new_tokens=settings["max_new_tokens"],
                                            batch_size=settings["batch_size"]))
        judge = cell_judge(cell)
        verdicts = [j.verdict for j in scoring.judge_answers(make_judge(judge), harmful.records,
                                                             answers)]
        refused = [v.refused for v in verdicts]
        complied = [v.success for v in verdicts]  # harmful compliance, for any judge

        def pick(chosen: list[bool]) -> dict[int, torch.Tensor]:
            rows = torch.tensor([i for i, x in enumerate(chosen) if x], dtype=torch.long)
            return {layer: acts[rows] for layer, acts in harmful_states.items()}

        keep, seed = settings["points_kept"], cell.seed
        results = {
            "alignment_steps": alignment_strength(cell.target),
            "direction": direction_summary(refusal),
            "mean_norm": direction.metadata["mean_norm"],
            "behaviour_set": behaviours.name,
            "refused": wilson(sum(refused), len(refused)).as_dict(),
            "request": _definition(harmful_states, harmless_states, direction, keep, seed),
            "behaviour": _definition(pick(refused), pick(complied), direction, keep, seed),
            "value_direction": direction_summary(value),
            "value": None,
        }
        pair_hashes = {}
        if value is not None:
            pairs = behaviours.contrast("select", settings["n_per_kind"], cell.seed)
            position = value.direction.positions[0]
            # The value recipe may pick layer 0: at the answer's last token the embeddings
            # differ between answers, so that layer is compared too when it is the direction's.
            at = sorted({*layers, value.direction.layer})
            sides = [states([target.format_chat(p.request) + getattr(p, side) for p in pairs],
                            position, at) for side in ("aligned", "misaligned")]
            results["value"] = _definition(*sides, value.direction, keep, seed)
            pair_hashes = {pairs.name: pairs.sha256, **value.direction.prompt_hashes}
        return CellResult(results, target_id=target.name, weight_hash=target.weight_hash,
                          prompt_sets={harmful.name: harmful.sha256,
                                       harmless.name: harmless.sha256,
                                       **direction.prompt_hashes, **pair_hashes},
                          judge=judge)

    def paradox_measures(self, rows: list[CellRecord],
                         options: ReportOptions) -> list[ParadoxMeasure]:
        measures = [ParadoxMeasure("separability", "aligned vs misaligned states", SUCCESS, {
            r.target: r.results[definition]["fisher_on_direction"] for r in rows},
            f"Fisher ratio on the refusal direction ({definition} definition)")
            for definition in ("request", "behaviour")]
        if any(_value(r) for r in rows):
            measures.append(ParadoxMeasure("separability", "aligned vs misaligned states",
                                           SUCCESS, {r.target: _value_fisher(r) for r in rows},
                                           "Fisher ratio on the value direction (value "
                                           "definition)"))
        return measures

    def report_section(self, rows: list[CellRecord], options: ReportOptions) -> Section:
        strengths = alignment_strengths(rows, options)
        rows = sorted(rows, key=lambda r: (_steps(strengths, r), r.target))
        intro = Markup(
            "<p>States are the residual stream at the refusal direction's token position on "
            "select-split requests (never the test split). <b>Request</b> definition (as the "
            "paper's Figure 1B): harmful vs harmless requests. <b>Behaviour</b> definition: "
            "harmful requests the model refused vs answered with harmful compliance (only "
            "where each group has at least 4 states). <b>Value</b> definition (Figure 1B's "
            "value version): a value-axis request followed by its aligned vs its misaligned "
            "answer (teacher-forced contrast pairs), at the value direction's position. Fisher "
            "ratio and probe AUROC are measured on a held-out 30%.</p>")
        summary = table(
            ["target", "steps", "refused (harmful)", "direction (layer, pos)",
             "Fisher on direction (request)", "AUROC at direction layer (request)",
             "max Fisher over layers (request)", "Fisher on direction (behaviour)",
             "refused / complied states", "Fisher on value direction (value)"],
            [[r.target, _steps(strengths, r), r.results["refused"],
              f"({r.results['direction']['layer']}, {r.results['direction']['position']})",
              r.results["request"]["fisher_on_direction"], _auroc_at(r, "request"),
              max((x["fisher"] for x in r.results["request"]["per_layer"]), default=None),
              r.results["behaviour"]["fisher_on_direction"],
              f"{r.results['behaviour']['n_aligned']} / {r.results['behaviour']['n_misaligned']}",
              _value_fisher(r) if _value(r) else _value_missing(r)]
             for r in rows],
            caption="Separability per target at the refusal (value) direction's layer.")
        per_layer = table(
            ["target", "definition", "layer", "Fisher", "AUROC", "held-out states"],
            [[r.target, definition, x["layer"], x["fisher"], x["auroc"], x["n_test"]]
             for r in rows for definition in DEFINITIONS
             for x in (r.results.get(definition) or {}).get("per_layer", [])],
            caption="Separability per layer per target (layer 0 = embeddings).")
        correlations = table(
            ["separability", "rank correlation with alignment steps",
             "rank correlation with measured refusal"],
            correlation_rows(strengths, {
                "Fisher on direction (request)": {
                    r.target: r.results["request"]["fisher_on_direction"] for r in rows},
                "AUROC at direction layer (request)": {
                    r.target: _auroc_at(r, "request") for r in rows},
                "Fisher on direction (behaviour)": {
                    r.target: r.results["behaviour"]["fisher_on_direction"] for r in rows},
                **({"Fisher on value direction (value)": {
                    r.target: _value_fisher(r) for r in rows}}
                   if any(_value(r) for r in rows) else {}),
            }),
            caption="The paradox's first claim: does separability grow with alignment? "
                    "Spearman rho with a bootstrap 95% interval across targets.")
        alphas = _fixed_alphas(options)
        positions = target_positions(options)
        figures = Markup("").join(_figure_1b(rows, strengths, alphas, definition, positions)
                                  for definition in DEFINITIONS)
        return Section(self.title, intro + figures + summary
                       + _layer_plot(rows) + per_layer + correlations)


DEFINITIONS = ("request", "behaviour", "value")
# definition -> (legend of the aligned group, of the misaligned group, the direction's name)
_DRAWN = {"request": ("harmful request", "harmless request", "refusal"),
          "behaviour": ("refused", "complied (harmful)", "refusal"),
          "value": ("aligned answer", "misaligned answer", "value")}


def _value(row: CellRecord) -> dict[str, Any] | None:
    """The value definition's results; None without contrast pairs (or from older runs)."""
    return row.results.get("value")


def _value_missing(row: CellRecord) -> str:
    """Why a row has no value definition: no contrast pairs, or a cell from before it."""
    if "value" in row.results:
        return NOT_MEASURED
    return "not measured: this cell predates the value definition (re-run geometry)"


def _value_fisher(row: CellRecord) -> float | None:
    return (_value(row) or {}).get("fisher_on_direction")


def _steps(strengths, row: CellRecord) -> float:
    steps = strengths.get(row.target, (None,))[0]
    return math.inf if steps is None else steps


def _auroc_at(row: CellRecord, definition: str) -> float | None:
    layer = row.results["direction"]["layer"]
    return next((x["auroc"] for x in row.results[definition]["per_layer"]
                 if x["layer"] == layer), None)


def _fixed_alphas(options: ReportOptions) -> dict[str, float]:
    """target -> the fixed alpha of its `model_tinkering` cell, so the arrow is that attack."""
    return {r.target: r.settings["fixed_alpha"]
            for r in options.all_rows.get("model_tinkering", [])}


def _steering_shift(results: dict[str, Any], alpha: float, along: str = "refusal") -> float:
    """Shift along the refusal (or value) direction of addition at `alpha` towards
    misalignment: alpha · mean norm · the direction's misaligned sign (−1, the refusal
    recipe's, when older results did not record it)."""
    if along == "value":
        summary = results["value_direction"]
        return alpha * summary["misaligned_sign"] * summary["mean_norm"]
    sign = results["direction"].get("misaligned_sign")
    return alpha * (-1 if sign is None else sign) * results["mean_norm"]


def _figure_1b(rows: list[CellRecord], strengths, alphas: dict[str, float],
               definition: str, positions: dict[str, Position]) -> Markup:
    if definition == "value" and not any(_value(r) for r in rows):
        return Markup("<p>Value definition: {}.</p>").format(_value_missing(rows[0]))
    drawn = [r for r in rows if (r.results.get(definition) or {}).get("projection")]
    aligned = [r for r in drawn if 0 < _steps(strengths, r) < math.inf] or drawn
    if not aligned:
        return Markup("<p>No target has enough states for the {} definition's "
                      "projection.</p>").format(definition)
    aligned = _one_family(aligned, positions)
    panels = aligned[:1] if len(aligned) == 1 else [aligned[0], aligned[-1]]
    *names, along = _DRAWN[definition]
    from matplotlib.figure import Figure

    default_alpha = FIXED_ALPHA
    fig = Figure(figsize=(4.6 * len(panels), 4))
    for index, row in enumerate(panels):
        axes = fig.add_subplot(1, len(panels), index + 1)
        projection = row.results[definition]["projection"]
        for key, name, colour in (("aligned", names[0], "tab:blue"),
                                  ("misaligned", names[1], "tab:red")):
            points = np.asarray(projection[key])
            axes.scatter(points[:, 0], points[:, 1], s=12, alpha=0.6, c=colour, label=name)
        # The attack's steering vector lies along the direction, which is the x axis.
        alpha = alphas.get(row.target, default_alpha)
        start = np.asarray(projection["aligned"]).mean(0)
        end = (start[0] + _steering_shift(row.results, alpha, along), start[1])
        axes.annotate("", xy=end, xytext=tuple(start),
                      arrowprops={"arrowstyle": "->", "lw": 2, "color": "black"})
        axes.update_datalim([tuple(start), end])  # keep the whole arrow in view
        axes.autoscale_view()
        axes.set_title(f"{row.target} (steps {_steps(strengths, row):g}, arrow: "
                       f"alpha = {alpha:g})", fontsize=9)
        axes.set_xlabel(f"projection on {along} direction")
        axes.set_ylabel("top orthogonal PC")
        axes.legend(fontsize=7)
    drawn_names = " and ".join(row.target for row in panels)
    return figure(fig, f"Figure 1B-style projection, {definition} definition: {drawn_names}",
                  caption=f"Figure 1B-style projection ({definition} definition: {names[0]} vs "
                          f"{names[1]}) for the weakest and strongest aligned target of one "
                          f"family ({drawn_names}), at the {along} direction's layer; the arrow "
                          "is the steering vector of addition towards "
                          f"{'compliance' if along == 'refusal' else 'the misaligned value'} "
                          "at the model_tinkering measurement's fixed alpha.")


def _one_family(rows: list[CellRecord], positions: dict[str, Position]) -> list[CellRecord]:
    """The rows on the first row's alignment axis (strengths on different axes do not
    compare), and of its family when that family has another row here."""
    def where(row: CellRecord) -> tuple[str | None, str | None]:
        position = positions.get(row.target)
        return (position.axis, position.family) if position else (None, None)

    axis, family = where(rows[0])
    rows = [r for r in rows if where(r)[0] == axis]
    kin = [r for r in rows if where(r)[1] == family]
    return kin if len(kin) > 1 else rows


def _layer_plot(rows: list[CellRecord]) -> Markup:
    drawn = [r for r in rows if r.results["request"]["per_layer"]]
    if not drawn:
        return Markup("")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4))
    for index, metric in enumerate(("fisher", "auroc")):
        axes = fig.add_subplot(1, 2, index + 1)
        for row in drawn:
            layers = row.results["request"]["per_layer"]
            axes.plot([x["layer"] for x in layers], [x[metric] for x in layers], marker="o",
                      label=row.target)
        axes.set_xlabel("layer")
        axes.set_ylabel("Fisher ratio" if metric == "fisher" else "probe AUROC (held out)")
        axes.legend(fontsize=7)
    return figure(fig, "separability per layer",
                  caption="Separability per layer, request definition (harmful vs harmless).")
