"""The report's verdict table (issue 13): Spearman per alignment axis and pooled, with a
stratified two-stage cluster bootstrap over families, a verdict read from the interval, on the
first screen of a report built from a real study over folder targets with provenance cards."""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

from alignparadox.report import write_report
from alignparadox.stats import pooled_spearman, spearman_bootstrap, wilson
from alignparadox.study import CellResult, Measurement, StudySpec, register_measurement, run_study
from alignparadox.study.strength import COST, SUCCESS, ParadoxMeasure

AXES = ("sft steps", "dpo beta")
SEEDS = 3
MEMBERS = 5


def test_pooled_correlation_of_one_family_is_the_ordinary_bootstrap():
    x, y = [0, 1, 2, 3, 4, 5], [0.1, 0.2, 0.2, 0.5, 0.6, 0.9]
    pooled = pooled_spearman(x, y, ["only"] * 6, ["axis"] * 6)
    plain = spearman_bootstrap(x, y)
    assert pooled.resampled == "targets" and pooled.strata == 1 and pooled.n == 6
    assert pooled.rho == pytest.approx(plain.rho)
    assert abs(pooled.low - plain.low) < 0.15 and pooled.high == pytest.approx(1.0)


def test_pooled_interval_is_calibrated_under_no_correlation():
    """Three seeds of five members with values unrelated to strength: a 95% interval that
    resamples whole families only (keeping each family's noise fixed) excludes 0 far more
    often than 5%; the two-stage bootstrap must not."""
    clusters = [f"seed{s}" for s in range(SEEDS) for _ in range(MEMBERS)]
    x = list(range(MEMBERS)) * SEEDS
    excluded = 0
    trials = 150
    for trial in range(trials):
        y = np.random.default_rng(trial).random(len(x))
        c = pooled_spearman(x, y, clusters, ["axis"] * len(x), resamples=400, seed=trial)
        assert c.resampled == "families"
        excluded += c.low > 0 or c.high < 0
    assert excluded / trials <= 0.10


def test_pooling_weights_the_axes_by_their_points():
    x = [0, 1, 2, 3] * 2 + [0, 1, 2, 3, 4, 5]
    y = [0, 1, 2, 3] * 2 + [5, 4, 3, 2, 1, 0]  # +1 on the first axis, -1 on the second
    axes = ["a"] * 8 + ["b"] * 6
    families = ["a1"] * 4 + ["a2"] * 4 + ["b1"] * 6
    c = pooled_spearman(x, y, families, axes, resamples=200)
    assert c.strata == 2 and c.n == 14
    assert c.rho == pytest.approx((8 * 1 + 6 * -1) / 14)


def _strength(target: str) -> float:
    return json.loads((Path(target) / "alignparadox.json").read_text())["alignment_strength"]


@register_measurement
class ToyAttack(Measurement):
    """Its ASR rises with the target's recorded alignment strength (plus a seed's offset);
    its cost is noise."""

    name = "toy_attack"
    title = "Toy attack"
    defaults = {"n": 50}
    order = 45

    def run(self, cell, context):
        strength = _strength(cell.target)
        offset = int(re.search(r"seed(\d)", cell.target).group(1))
        k = min(50, int(8 * strength + 2 * offset))
        cost = float(np.random.default_rng(zlib.crc32(cell.target.encode())).random())
        return CellResult({"asr": wilson(k, 50), "cost": cost}, target_id=cell.target,
                          weight_hash=None)

    def paradox_measures(self, rows, options):
        return [ParadoxMeasure("input tinkering", "toy attack", SUCCESS,
                               {r.target: r.results["asr"]["rate"] for r in rows}, "ASR"),
                ParadoxMeasure("input tinkering", "toy attack", COST,
                               {r.target: r.results["cost"] for r in rows}, "noise")]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("verdicts")
    targets = []
    for axis in AXES:
        for seed in range(SEEDS):
            for member in range(MEMBERS):
                folder = root / f"{axis.split()[0]}-seed{seed}" / f"m{member}"
                folder.mkdir(parents=True)
                (folder / "alignparadox.json").write_text(json.dumps({
                    "alignment_strength": member, "alignment_axis": axis,
                    "family": f"{axis.split()[0]}-seed{seed}"}))
                targets.append(str(folder))
    spec = StudySpec.from_dict({"targets": targets, "measurements": [{"name": "toy_attack"}]})
    run_dir = root / "run"
    run_study(spec, run_dir, progress=False)
    return write_report(run_dir).read_text()


def _rows(html: str) -> list[list[str]]:
    section = html[html.index('<section id="verdict">'):]
    section = section[:section.index("</section>")]
    return [[re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>",
                                                                          row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", section, re.S)]


def test_the_verdict_is_the_first_section_and_provenance_the_last(report):
    sections = re.findall(r'<section id="([^"]+)">', report)
    assert sections[0] == "verdict" and sections[-1] == "provenance"
    assert report.index("data:image/png;base64,") < report.index('<section id="toy_attack">')


def test_verdicts_per_axis_and_pooled_read_the_interval(report):
    rows = [row for row in _rows(report) if row]
    success = {row[3]: row for row in rows if row[2].startswith("success")}
    cost = {row[3]: row for row in rows if row[2].startswith("cost")}
    assert set(success) == set(cost) == {*AXES, "pooled over axes"}
    for axis in AXES:
        assert success[axis][5].startswith(f"{SEEDS * MEMBERS} / {SEEDS}")
        assert "families resampled" in success[axis][5]
        assert success[axis][6] == "paradox holds"
    assert success["pooled over axes"][6] == "paradox holds"
    assert success["pooled over axes"][5].startswith(f"{2 * SEEDS * MEMBERS} / {2 * SEEDS}")
    rho = float(success["pooled over axes"][4].split()[0])
    assert rho > 0.8
    assert cost["pooled over axes"][6] in ("inconclusive", "opposite", "paradox holds")
    low, high = map(float, re.findall(r"[+-]\d\.\d\d", cost["pooled over axes"][4])[1:3])
    assert (cost["pooled over axes"][6] == "inconclusive") == (low <= 0 <= high)
