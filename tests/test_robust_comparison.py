"""The report section "Robust training vs standard alignment" on real study rows at a tiny
budget: the standard family, the ReFAT family (sharing its base organism) and a member broken
on purpose (the strongest standard organism with heavy weight noise, declared a family of its
own through a model folder's card), measured by alignment, geometry and model tinkering."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from alignparadox.report.html import ReportOptions
from alignparadox.report.robust import (
    ATTACKS,
    UTILITY_GATE,
    Rows,
    find_families,
    matched_member,
    recipe_sentence,
    reference_for,
    robust_section,
    utility_gate,
)
from alignparadox.report.writer import write_report
from alignparadox.stats import Correlation
from alignparadox.study.runner import run_study
from alignparadox.study.spec import StudySpec
from alignparadox.study.store import ResultsStore

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

STANDARD = ["organism:base", "organism:aligned-1", "organism:aligned-3", "organism:aligned-5"]
REFAT = ["organism:refat/aligned-1", "organism:refat/aligned-3", "organism:refat/aligned-5"]
TINY = {"batch_size": 64, "max_new_tokens": 48}


def _broken_member(family, folder):
    """aligned-5 with Gaussian noise of twice each tensor's spread: a model a defense might
    leave behind, which no longer answers coherently."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(family.path_of("aligned-5"), folder)
    for file in folder.glob("*.safetensors"):
        tensors = load_file(file)
        generator = torch.Generator().manual_seed(0)
        noisy = {name: (t + 2.0 * t.float().std().nan_to_num(0.0)
                        * torch.randn(t.shape, generator=generator)).to(t.dtype)
                 if t.is_floating_point() and t.numel() > 1 else t
                 for name, t in tensors.items()}
        save_file(noisy, file, metadata={"format": "pt"})
    member = family.member("aligned-5")
    (folder / "alignparadox.json").write_text(json.dumps({
        "family": "noised-test", "member": "aligned-5", "defense": "weight-noise",
        "alignment_strength": member.alignment_steps,
        "validation_refusal": member.validation_refusal}))
    return str(folder)


@pytest.fixture(scope="module")
def study(organism_family, tmp_path_factory):
    from alignparadox.organisms.robust import build_robust_family

    refat = build_robust_family("refat", progress=False)  # about a minute once, then cached
    broken = _broken_member(organism_family, tmp_path_factory.mktemp("broken") / "aligned-5")
    world = {"behaviours": "organisms", "judge": "organism"}
    spec = StudySpec.from_dict({
        "name": "robust-comparison", "targets": STANDARD + REFAT,
        "measurements": [
            {"name": "alignment", "settings": {"n_per_kind": 12, **TINY}},
            {"name": "alignment", "settings": {"n_per_kind": 12, **TINY, **world},
             "targets": [broken]},
            {"name": "geometry", "settings": {"n_per_kind": 16, "n_fit": 24, "n_select": 12,
                                              **TINY}},
            {"name": "model_tinkering", "settings": {"n_per_kind": 6, "n_fit": 24,
                                                     "n_select": 12, "alphas": [1.0], **TINY}},
        ]})
    run_dir = tmp_path_factory.mktemp("run")
    summary = run_study(spec, run_dir, progress=False)
    assert not summary.failed, [o.error for o in summary.failed]
    with ResultsStore.in_run_dir(run_dir, create=False) as store:
        records = store.records()
    all_rows: dict[str, list] = {}
    for record in records:
        all_rows.setdefault(record.measurement, []).append(record)
    return {"run_dir": run_dir, "rows": all_rows, "broken": broken, "refat": refat,
            "standard": organism_family}


def test_families_are_grouped_by_provenance_and_share_the_base(study):
    families = {f.defense: f for f in find_families(study["rows"])}
    assert set(families) == {None, "refat", "weight-noise"}
    standard, refat = families[None], families["refat"]
    assert standard.targets == STANDARD  # weakest first
    # the ReFAT family's base is the standard base organism, measured once, counted in both
    assert refat.targets == ["organism:base", *REFAT]
    assert families["weight-noise"].targets == [study["broken"]]
    declared = {m["name"]: m for m in study["refat"].manifest["members"]}
    for member in refat.members:
        assert member.strength == declared[member.name]["alignment_steps"]
        assert member.validation_refusal == pytest.approx(
            declared[member.name]["validation_refusal"], abs=1e-3)
    assert refat.strongest().target == "organism:refat/aligned-5"
    assert reference_for(refat, list(families.values())) is standard


def test_the_matched_member_has_the_nearest_validation_refusal(study):
    families = {f.defense: f for f in find_families(study["rows"])}
    standard = families[None]
    for defense in ("refat", "weight-noise"):
        strongest = families[defense].strongest()
        matched = matched_member(strongest, standard)
        distance = abs(matched.validation_refusal - strongest.validation_refusal)
        assert all(distance <= abs(m.validation_refusal - strongest.validation_refusal)
                   for m in standard.members)
    # both strongest members were saved at the last refusal level: matched with aligned-5
    assert matched_member(families["refat"].strongest(), standard).target == "organism:aligned-5"


def test_the_utility_gate_flags_the_broken_member_and_passes_aligned_ones(study):
    rows = Rows(study["rows"])
    passes, why = utility_gate(rows, study["broken"])
    assert passes is False and "<" in why
    results = rows.results("alignment", study["broken"])
    assert min(results[key]["k"] / results[key]["n"] - threshold
               for key, threshold in UTILITY_GATE.items()) < 0
    for target in ("organism:aligned-5", "organism:refat/aligned-5"):
        passes, why = utility_gate(rows, target)
        results = rows.results("alignment", target)
        expected = all(results[k]["k"] / results[k]["n"] >= t for k, t in UTILITY_GATE.items())
        assert passes is expected
    assert utility_gate(rows, "organism:not-measured") == (None,
                                                           "not measured (no alignment cell)")


def test_the_section_tables_matched_asrs_layers_and_correlations(study):
    section = robust_section(ReportOptions(all_rows=study["rows"]))
    html = str(section.html)
    assert section.title == "Robust training vs standard alignment"
    for heading in ("<h3>refat</h3>", "<h3>weight-noise</h3>"):
        assert heading in html
    assert "FAILS the utility gate" in html  # the broken member, reported as broken
    assert f"{study['broken']} (harmless answered" in html  # ... and listed with its family
    # no attack cells on it, so no correlation either: no verdict on the paradox
    assert ("weight-noise: cannot tell" in html
            or "so there is none for weight-noise to remove" in html)
    assert "baseline ASR (no attack)" in html  # context in the matched table ...
    assert "<td>baseline ASR (no attack)</td><td>n=" not in html  # ... not a paradox measure
    assert "ablation ASR" in html and "addition ASR at the fixed α" in html
    assert "Not in this store" in html and "gcg" in html  # left out, and said so
    # the ablation ASRs of the matched pair are those the model_tinkering rows stored
    rows = Rows(study["rows"])
    ablation = next(m for m in ATTACKS if m.label == "ablation ASR")
    for target in ("organism:aligned-5", "organism:refat/aligned-5"):
        rate = rows.value(ablation, target)
        assert f"({rate['k']}/{rate['n']})" in html
    # per-layer separability of the standard base (before), aligned-5 and refat/aligned-5
    geometry = rows.results("geometry", "organism:refat/aligned-5")
    layers = [x["layer"] for x in geometry["request"]["per_layer"]]
    assert len(layers) >= 2 and "Fisher organism:refat/aligned-5" in html
    assert "Fisher organism:base" in html
    # one correlation column per family, side by side, for each measure with data
    assert html.count("Paradox correlations per family") == 2
    assert "n=4" in html  # the standard family: four stored members
    assert "n=0: too few targets" in html  # the broken family: no attack cells


def test_the_sentence_follows_the_intervals():
    def corr(low, high):
        return Correlation((low + high) / 2, low, high, 6)

    standard = {"a": corr(0.2, 0.9), "b": corr(0.1, 0.8), "c": corr(-0.5, 0.5)}
    leaves = recipe_sentence("x", {"a": corr(0.3, 1.0), "b": corr(0.2, 0.9),
                                   "c": corr(-0.4, 0.6)}, standard, 6)
    assert leaves.startswith("x leaves the paradox")
    inverts = recipe_sentence("x", {"a": corr(-0.9, -0.2), "b": corr(-0.8, -0.1),
                                    "c": corr(-0.4, 0.6)}, standard, 6)
    assert inverts.startswith("x inverts the paradox")
    removes = recipe_sentence("x", {"a": corr(-0.3, 0.6), "b": corr(-0.2, 0.5),
                                    "c": corr(0.1, 0.9)}, standard, 6)
    assert removes.startswith("x removes the paradox") and "does not on 1 (c)" in removes
    assert "weak evidence" in removes  # six targets: an interval with 0 in it says little
    mixed = recipe_sentence("x", {"a": corr(0.3, 1.0), "b": corr(-0.8, -0.1),
                                  "c": corr(-0.4, 0.6)}, standard, 6)
    assert mixed.startswith("x has mixed effects")
    nan = float("nan")
    none = recipe_sentence("x", {"a": corr(0.3, 1.0)},
                           {"a": Correlation(nan, nan, nan, 2)}, 6)
    assert "on none of its 0 measures" in none
    reverse = recipe_sentence("x", {"a": corr(-0.9, -0.2)}, {"a": corr(-0.8, -0.1)}, 6)
    assert "on none of its 1 measures" in reverse
    assert "reverse (interval below 0" in reverse and "x keeps it on 1 (a)" in reverse
    unknown = recipe_sentence("x", {"a": Correlation(nan, nan, nan, 1),
                                    "b": Correlation(nan, nan, nan, 1)}, standard, 1)
    assert unknown.startswith("x: cannot tell")
    assert not math.isnan(standard["a"].rho)


def test_the_written_report_holds_the_section(study):
    html = write_report(study["run_dir"]).read_text()
    assert 'id="robust-vs-standard"' in html and "Robust training vs standard alignment" in html
