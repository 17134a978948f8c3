"""The paradox's rank correlations (report section (d)) and the Figure-1B arrow, computed by the
real `model_tinkering` and `geometry` report sections from synthetic stored cells."""

from __future__ import annotations

import html as html_lib
import json
import re

import pytest

from alignparadox.attacks.model_tinkering.measurement import ModelTinkering, smallest_alpha
from alignparadox.errors import UserError
from alignparadox.geometry import measurement as geometry_measurement
from alignparadox.geometry.measurement import Geometry
from alignparadox.report.html import ReportOptions
from alignparadox.stats import wilson
from alignparadox.study.cells import Cell
from alignparadox.study.store import CellRecord, to_json
from alignparadox.study.strength import alignment_strengths

TARGETS = ["t0", "t1", "t2", "t3", "t4"]
STEPS = [0, 100, 200, 400, 800]
ALPHAS = [0.25, 0.5, 1.0, 2.0]
N = 20


def record(measurement: str, target: str, results: dict, settings: dict | None = None,
           ) -> CellRecord:
    """A stored cell as reports read it (results round-tripped through the store's JSON)."""
    return CellRecord(
        key=f"{measurement}/{target}", measurement=measurement, target=target,
        settings=settings or {}, seed=0, status="done", results=json.loads(to_json(results)),
        error=None, target_id=target, weight_hash=None, prompt_sets={}, judge=None, versions={},
        started_at="", finished_at="", wall_seconds=0.0)


def rate(k: int) -> dict:
    return wilson(k, N).as_dict()


def tinkering(steps: int, *, ablation: int, orthogonalized: int, asr_by_alpha: list[int],
              partisan: int = 0, fixed_alpha: float = 1.0) -> dict:
    """`model_tinkering` results with the given counts (out of N) and everything else zero."""
    condition = {"asr": rate(0), "refusal": rate(N), "incoherent_harmful": rate(0),
                 "harmless_answered": rate(N), "partisan": rate(0), "coherent": rate(N)}
    addition = [{"alpha": a, **condition, "asr": rate(k)}
                for a, k in zip(ALPHAS, asr_by_alpha, strict=True)]
    stance = [{"alpha": a, **condition, "partisan": rate(partisan)} for a in ALPHAS]
    direction = {"layer": 2, "position": -1, "fallback": None}
    return {
        "alignment_steps": steps, "direction": direction, "stance_direction": direction,
        "baseline": condition, "ablation": {**condition, "asr": rate(ablation)},
        "orthogonalized": {**condition, "asr": rate(orthogonalized)},
        "addition": addition, "stance_addition": stance, "fixed_alpha": fixed_alpha,
        "addition_asr_at_fixed": addition[ALPHAS.index(fixed_alpha)]["asr"],
        "stance_partisan_at_fixed": stance[ALPHAS.index(fixed_alpha)]["partisan"],
        "alpha_for_half_asr": smallest_alpha(addition, "asr"),
        "alpha_for_half_partisan": smallest_alpha(stance, "partisan"), "samples": [],
    }


def separation(fisher: float | None, auroc: float = 0.9) -> dict:
    """One definition's `geometry` results; None = too few states (nothing measured)."""
    if fisher is None:
        return {"n_aligned": 2, "n_misaligned": 10, "per_layer": [], "projection": None,
                "fisher_on_direction": None, "skipped": "fewer than 4 states in a group"}
    return {"n_aligned": 12, "n_misaligned": 12, "fisher_on_direction": fisher,
            "per_layer": [{"layer": layer, "fisher": fisher, "auroc": auroc + 0.01 * layer,
                           "n_train": 8, "n_test": 4} for layer in (1, 2, 3)],
            "projection": {"aligned": [[1.0, 0.0], [3.0, 2.0]],
                           "misaligned": [[-1.0, 0.5], [-2.0, 0.0]]}}


def geometry(steps: int, *, fisher: float, auroc: float, behaviour: float | None,
             sign: int | None = -1, mean_norm: float = 4.0) -> dict:
    direction = {"layer": 2, "position": -1, "mean_norm": mean_norm, "fallback": None}
    if sign is not None:
        direction["misaligned_sign"] = sign
    return {"alignment_steps": steps, "direction": direction, "mean_norm": mean_norm,
            "refused": rate(10), "request": separation(fisher, auroc),
            "behaviour": separation(behaviour)}


def table_rows(html: str, caption_start: str) -> dict[str, list[str]]:
    """First cell -> the other cells (as text) of the table whose caption starts so."""
    for caption, body in re.findall(
            r"<table><caption>(.*?)</caption>.*?<tbody>(.*?)</tbody></table>", html, re.S):
        if html_lib.unescape(caption).startswith(caption_start):
            rows = [[html_lib.unescape(re.sub(r"<[^>]+>", "", cell))
                     for cell in re.findall(r"<td>(.*?)</td>", row, re.S)]
                    for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]
            return {row[0]: row[1:] for row in rows}
    raise AssertionError(f"no table captioned {caption_start!r}")


def interval(cell: str) -> tuple[float, float, float, int]:
    """(rho, low, high, n) from a correlation cell such as '+0.80 [+0.10, +1.00] (n=5)'."""
    match = re.fullmatch(r"([-+][\d.]+) \[([-+][\d.]+), ([-+][\d.]+)\] \(n=(\d+)\)", cell)
    assert match, cell
    return float(match[1]), float(match[2]), float(match[3]), int(match[4])


PERFECT = "+1.00 [+1.00, +1.00] (n=5)"


@pytest.fixture
def alignment_rows() -> list[CellRecord]:
    # Measured refusal grows with the steps, so both columns rank the targets alike.
    return [record("alignment", t, {"alignment_steps": s, "refusal": rate(4 + 3 * i)})
            for i, (t, s) in enumerate(zip(TARGETS, STEPS, strict=True))]


def test_paradox_table_shows_spearman_rho_and_interval(alignment_rows):
    # ASR of addition per alpha: target i first reaches 0.5 at a smaller alpha the stronger it
    # is, and t0 never does (it ranks as 2 x the largest alpha, above every alpha tried).
    sweeps = [[0, 1, 2, 5], [1, 2, 4, 10], [2, 4, 10, 14], [3, 10, 15, 18], [10, 14, 18, 20]]
    rows = [record("model_tinkering", t, tinkering(
        s, ablation=2 + 4 * i, orthogonalized=[4, 2, 10, 8, 16][i], asr_by_alpha=sweeps[i]))
        for i, (t, s) in enumerate(zip(TARGETS, STEPS, strict=True))]
    assert [r.results["alpha_for_half_asr"] for r in rows] == [None, 2.0, 1.0, 0.5, 0.25]
    options = ReportOptions(all_rows={"alignment": alignment_rows, "model_tinkering": rows})
    html = str(ModelTinkering().report_section(rows, options).html)
    paradox = table_rows(html, "The paradox test")
    assert paradox["ablation ASR"] == [PERFECT, PERFECT]
    assert paradox["addition ASR at fixed alpha"] == [PERFECT, PERFECT]  # 2, 4, 10, 15, 18
    assert paradox["smallest alpha to ASR 0.5 (lower = easier)"] == [
        "-1.00 [-1.00, -1.00] (n=5)"] * 2
    # Not monotone: ranks 2, 1, 4, 3, 5 give rho = 1 - 6 * 4 / (5 * 24) = 0.8.
    for cell in paradox["orthogonalized ASR"]:
        rho, low, high, n = interval(cell)
        assert (rho, n) == (0.8, 5)
        assert -1.0 <= low < rho <= high <= 1.0
    # No target is ever partisan: Spearman's rho is undefined, and the table says so.
    assert paradox["stance partisan rate at fixed alpha"] == [
        "n=5: undefined, a value does not vary"] * 2


def test_paradox_table_needs_three_targets():
    rows = [record("model_tinkering", t, tinkering(s, ablation=i, orthogonalized=i,
                                                   asr_by_alpha=[i] * 4))
            for i, (t, s) in enumerate(zip(TARGETS[:2], STEPS[:2], strict=True))]
    html = str(ModelTinkering().report_section(rows, ReportOptions()).html)
    paradox = table_rows(html, "The paradox test")
    # Without alignment rows there is no measured refusal at all: n=0 in that column.
    assert paradox["ablation ASR"] == ["n=2: too few targets", "n=0: too few targets"]


def test_alignment_strengths_take_refusal_from_the_alignment_rows(alignment_rows):
    rows = [record("geometry", "t1", {"alignment_steps": 100}),
            record("geometry", "other", {"alignment_steps": None})]
    strengths = alignment_strengths(rows, ReportOptions(all_rows={"alignment":
                                                                  alignment_rows[1:3]}))
    assert strengths == {"t1": (100, 7 / N), "t2": (200, 10 / N), "other": (None, None)}


def test_smallest_alpha_is_the_first_alpha_reaching_the_level():
    sweep = [{"alpha": a, "asr": {"rate": r}} for a, r in [(0.25, 0.2), (0.5, 0.5), (1.0, 0.4)]]
    assert smallest_alpha(sweep, "asr") == 0.5
    assert smallest_alpha(sweep, "asr", level=0.6) is None


def geometry_rows() -> list[CellRecord]:
    # Request separability grows with the steps; behaviour separability is measured only where
    # the organism refused enough (t2..t4) and falls with them.
    return [record("geometry", t, geometry(s, fisher=0.5 + i, auroc=0.5 + 0.05 * i,
                                           behaviour=[None, None, 3.0, 2.0, 1.0][i],
                                           sign=[-1, -1, -1, -1, 1][i]))
            for i, (t, s) in enumerate(zip(TARGETS, STEPS, strict=True))]


def test_geometry_correlations(alignment_rows):
    rows = geometry_rows()
    options = ReportOptions(all_rows={"alignment": alignment_rows, "geometry": rows})
    html = str(Geometry().report_section(rows, options).html)
    correlations = table_rows(html, "The paradox's first claim")
    assert correlations["Fisher on direction (request)"] == [PERFECT, PERFECT]
    assert correlations["AUROC at direction layer (request)"] == [PERFECT, PERFECT]
    assert correlations["Fisher on direction (behaviour)"] == ["-1.00 [-1.00, -1.00] (n=3)"] * 2


def test_figure_1b_arrow_is_the_attack_at_the_fixed_alpha(alignment_rows, monkeypatch):
    figures = []
    monkeypatch.setattr(geometry_measurement, "figure",
                        lambda fig, alt, caption: figures.append((fig, alt)) or caption)
    rows = geometry_rows()
    rows[1].results["direction"].pop("misaligned_sign")  # older results: the refusal sign, -1
    tinkering_rows = [record("model_tinkering", "t4", {}, {"fixed_alpha": 0.5})]
    options = ReportOptions(all_rows={"alignment": alignment_rows, "geometry": rows,
                                      "model_tinkering": tinkering_rows})
    html = str(Geometry().report_section(rows, options).html)
    # Weakest aligned (t0 has 0 steps: not aligned) and strongest organism, with their arrows.
    assert "(t1 and t4)" in html
    request = next(fig for fig, alt in figures if "request definition" in alt)
    shifts = {}
    for axes in request.axes:
        (arrow,) = axes.texts
        assert arrow.xyann == pytest.approx((2.0, 1.0))  # from the mean of the aligned points
        shifts[axes.get_title().split()[0]] = arrow.xy[0] - arrow.xyann[0]
    # t1: no model_tinkering cell, so the default alpha 1; t4: its alpha 0.5 and sign +1.
    assert shifts == pytest.approx({"t1": -1.0 * 4.0, "t4": 0.5 * 4.0})
    # The behaviour definition has too few states for t0 and t1: t2 is its weakest.
    assert "(t2 and t4)" in html


@pytest.mark.parametrize("alphas, fixed, message", [
    ([0.5, 2.0], 1.0, "must be one of the alphas"),
    ([], 1.0, "non-empty list"),
    ([1.0, float("nan")], 1.0, "finite"),
])
def test_model_tinkering_refuses_a_fixed_alpha_outside_the_sweep(alphas, fixed, message):
    settings = {**ModelTinkering.defaults, "alphas": alphas, "fixed_alpha": fixed}
    with pytest.raises(UserError, match=message):
        ModelTinkering().check(Cell("organism:aligned-1", "model_tinkering", settings, 0))
    # The same value as an int is in the sweep.
    ModelTinkering().check(Cell("organism:aligned-1", "model_tinkering",
                                {**settings, "alphas": [0.5, 2.0], "fixed_alpha": 2}, 0))


def test_figure_1b_panels_come_from_one_family_and_the_value_arrow_is_value_steering(
        monkeypatch):
    figures = []
    monkeypatch.setattr(geometry_measurement, "figure",
                        lambda fig, alt, caption: figures.append((fig, alt)) or caption)
    # Two families on two axes: a share of 0.05 and 800 steps do not compare.
    cards = {"sft/a1": ("steps", "sft", 100), "sft/a2": ("steps", "sft", 800),
             "share/a1": ("share", "share", 0.05), "share/a2": ("share", "share", 0.4)}
    rows = []
    for target, (axis, family, strength) in cards.items():
        results = geometry(strength, fisher=1.0, auroc=0.9, behaviour=None)
        results["value"] = separation(2.0)
        results["value_direction"] = {"layer": 1, "position": -1, "mean_norm": 3.0,
                                      "misaligned_sign": 1}
        results["target_provenance"] = {"alignment_strength": strength,
                                        "alignment_axis": axis, "family": family}
        rows.append(record("geometry", target, results))
    html = str(Geometry().report_section(rows, ReportOptions(all_rows={"geometry": rows})).html)
    assert "(share/a1 and share/a2)" in html and "sft/a" not in " ".join(a for _, a in figures)
    # Nor do section correlations pool them: a share and a step count are on different scales.
    steps, refusal = table_rows(html, "The paradox's first claim")["Fisher on direction (request)"]
    assert steps.startswith("several alignment axes (share; steps)"), steps
    assert "ρ" not in steps and not re.search(r"\[[-+]", steps)
    from alignparadox.attacks.input_tinkering.base import paradox_correlation

    for row in rows:
        row.results["asr"] = rate(5)
    paragraph = str(paradox_correlation(rows, ReportOptions(all_rows={"geometry": rows}), "ASR",
                                        lambda res: res["asr"]["rate"]))
    assert "several alignment axes (share; steps)" in paragraph and "[" not in paragraph
    value = next(fig for fig, alt in figures if "value definition" in alt)
    for axes in value.axes:
        (arrow,) = axes.texts
        assert arrow.xy[0] - arrow.xyann[0] == pytest.approx(1.0 * 3.0)  # alpha 1, sign +1
        assert axes.get_xlabel() == "projection on value direction"
    # The value row joins the paradox measures; a set without pairs says so instead.
    labels = [m.detail for m in Geometry().paradox_measures(rows, ReportOptions())]
    assert "Fisher ratio on the value direction (value definition)" in labels
    for row in rows:
        row.results["value"] = None
    html = str(Geometry().report_section(rows, ReportOptions(all_rows={"geometry": rows})).html)
    assert "Value definition: not measured: the behaviour set has no contrast pairs" in html
    assert len(Geometry().paradox_measures(rows, ReportOptions())) == 2
