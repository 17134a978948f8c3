"""`paradox audit` (issue 17): one command from a researcher's own models to a report, with the
plan printed first, the equivalent study spec written, and bad input refused in one sentence."""

from __future__ import annotations

import json
import re

import pytest

from alignparadox.audit import _templates_available
from alignparadox.cli import main
from alignparadox.report.writer import read_store
from alignparadox.study import StudySpec
from alignparadox.study.runner import plan_cells
from alignparadox.targets.random_models import ARCHITECTURES, make_random_model
from refusal import refused

pytestmark = pytest.mark.usefixtures("one_thread")
# Public requests (StrongREJECT) are long in byte tokens: the random models get a context that
# holds them with an answer.
CONTEXT = 2048


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audit-family")
    return [make_random_model("llama", folder / name, seed=seed, context=CONTEXT)
            for seed, name in enumerate(("base", "sft"))]


def test_audit_runs_plans_reports_and_writes_a_spec_that_reproduces_its_cells(
        family, tmp_path, capsys):
    base, member = family
    run_dir, spec_out = tmp_path / "run", tmp_path / "audit.json"
    main(["audit", str(member), "--base", str(base), "--budget", "quick", "--strength", "1",
          "--run-dir", str(run_dir), "--spec-out", str(spec_out), "--no-progress"])
    err = capsys.readouterr().err
    # The plan, with an estimate per measurement, comes before the run; the actual time after.
    assert err.index("audit plan") < err.index("plan vs actual")
    assert re.search(r"estimated total [\d.]+ (s|min) \(from a [\d.]+ s calibration", err)
    assert re.search(r"wall time [\d.]+ (s|min) \(estimate [\d.]+ (s|min)\)", err)
    templates = _templates_available()  # the in-the-wild corpus is on this machine or not
    assert ("skipped templates: no jailbreak-templates corpus" in err) != templates
    html = (run_dir / "report.html").read_text()
    sections = re.findall(r'<section id="([^"]+)">', html)
    assert sections[0] == "verdict" and sections[-1] == "provenance"
    for measurement in ("alignment", "geometry", "model_tinkering", "gcg", "best_of_n", "pair",
                        "output_tinkering", "bon_defense"):
        assert measurement in sections, measurement
    assert 'id="failed-cells"' not in html
    # The given strengths place the models on the audit's own axis; the report states the
    # default judge's limits and what the audit skipped.
    assert "alignment strength given to the audit" in html
    assert "Judge substring." in html and "cannot see harm" in html
    assert ("templates" in sections) == templates
    assert ("Skipped by the audit: templates" in html) != templates
    # The written spec plans exactly the cells the audit ran (same keys).
    spec = StudySpec.from_file(spec_out)
    with read_store(run_dir) as store:
        done = {record.key for record in store.records()}
    assert {cell.key for cell in plan_cells(spec)} == done
    assert json.loads(spec_out.read_text())["strengths"]["values"] == {str(member): 1.0}
    # The base is the defense's reference, not a member.
    assert str(base) not in spec.targets


@pytest.mark.slow  # seven architectures through every measurement
def test_quick_audit_of_a_family_of_every_architecture(tmp_path, capsys):
    """The random models of all seven architectures in one audit (`--allow-mixed`: their byte
    tokenizers differ in special tokens): every measurement that needs no base runs on each,
    on AdvBench's short requests (StrongREJECT's are long in byte tokens)."""
    models = [str(make_random_model(a, tmp_path / a, seed=i, context=CONTEXT))
              for i, a in enumerate(ARCHITECTURES)]
    main(["audit", *models, "--budget", "quick", "--allow-mixed", "--harmful", "advbench",
          "--harmless", "self-instruct-seed", "--run-dir", str(tmp_path / "run"),
          "--no-progress"])
    err = capsys.readouterr().err
    assert "skipped bon_defense: needs the family's pre-alignment model (--base)" in err
    with read_store(tmp_path / "run") as store:
        records = store.records(status=None)
    assert records and all(r.status == "done" for r in records)
    assert {r.target for r in records} == set(models)


def test_audit_plan_only_runs_nothing(family, tmp_path, capsys):
    run_dir = tmp_path / "run"
    main(["audit", str(family[1]), "--plan-only", "--run-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert "audit plan" in err and "judge: substring" in err
    assert not run_dir.exists()


def test_a_known_classifier_in_the_local_hub_cache_is_the_default_judge(
        family, tmp_path, capsys, monkeypatch):
    """Weights of a known harmfulness classifier in the Hugging Face cache (here a random model
    in its place) make it the audit's judge, with its prompt format."""
    from huggingface_hub import constants

    snapshot = (tmp_path / "hub" / "models--cais--HarmBench-Llama-2-13b-cls" / "snapshots"
                / "0123abcd")
    make_random_model("llama", snapshot, seed=5)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    main(["audit", str(family[1]), "--plan-only", "--spec-out", str(tmp_path / "spec.json")])
    assert f"judge: classifier:{snapshot}#harmbench" in capsys.readouterr().err
    spec = json.loads((tmp_path / "spec.json").read_text())
    assert {m["settings"]["judge"] for m in spec["measurements"]} == {
        f"classifier:{snapshot}#harmbench"}


def test_bad_audit_input_is_one_sentence_and_leaves_nothing(family, tmp_path, capsys,
                                                           organism_family):
    base, sft = map(str, family)
    run_dir, spec_out = tmp_path / "run", tmp_path / "spec.json"
    common = ["--run-dir", run_dir, "--spec-out", spec_out]
    narrow = make_random_model("llama", tmp_path / "narrow", size="tiny", seed=3,
                               context=CONTEXT)
    config = json.loads((narrow / "config.json").read_text())
    config["hidden_size"] //= 2
    (narrow / "config.json").write_text(json.dumps(config))
    cases = [
        (["audit", sft, "--budget", "huge"], "unknown budget 'huge'"),
        (["audit", sft, "organism:aligned-3"], "different tokenizers"),
        (["audit", sft, "--base", narrow], "the base must be the same model before alignment"),
        (["audit", "http://127.0.0.1:9/v1#m", "--base", base], "--base is for white-box"),
        (["audit", sft, base, "--strength", "1"], "--strength gives 1 number(s) for 2"),
        (["audit", sft, "--strength", "low,high"], "--strength must be numbers"),
        (["audit", sft, sft], "a model is named twice"),
        (["audit", str(tmp_path / "missing")], "does not exist"),
        (["audit", sft, "--spec-out", tmp_path / "spec.toml"], "must end in .json"),
    ]
    for args, expected in cases:
        line = refused(capsys, *args, *(common if "--spec-out" not in args else common[:2]))
        assert expected in line, (args, line)
        assert not run_dir.exists() and not spec_out.exists(), args


def test_missing_default_sets_are_fetched_into_the_cache(family, tmp_path, monkeypatch, capsys):
    """No datasets folder: the default StrongREJECT and JBB-benign files come from a mirror (a
    real HTTP server on 127.0.0.1 laid out like the datasets root) into the cache; offline,
    the audit refuses in one sentence."""
    import functools
    import http.server
    import shutil
    import threading
    from pathlib import Path

    shared = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    if not (shared / "strongreject").is_dir():
        pytest.skip(f"no public prompt sets at {shared}")
    root = tmp_path / "mirror"
    for folder in ("strongreject", "jbb_behaviors"):
        shutil.copytree(shared / folder, root / folder)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("ALIGNPARADOX_DATASETS", raising=False)
    monkeypatch.setenv("ALIGNPARADOX_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "work" / "here"  # no ../shared/datasets from here
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    try:
        monkeypatch.setenv("ALIGNPARADOX_PROMPTS_MIRROR", "http://127.0.0.1:9")  # nothing there
        line = refused(capsys, "audit", str(family[1]), "--plan-only")
        assert "could not be fetched" in line and "--harmful SET_OR_FILE" in line
        monkeypatch.setenv("ALIGNPARADOX_PROMPTS_MIRROR",
                           f"http://127.0.0.1:{server.server_address[1]}")
        main(["audit", str(family[1]), "--plan-only"])
        assert "audit plan" in capsys.readouterr().err
        fetched = sorted(p.relative_to(tmp_path / "cache" / "prompt-sets").as_posix()
                         for p in (tmp_path / "cache" / "prompt-sets").rglob("*.csv"))
        assert fetched == ["jbb_behaviors/jbb_benign_behaviors.csv",
                           "strongreject/strongreject_dataset.csv"]
    finally:
        server.shutdown()
        server.server_close()


def test_an_endpoint_gets_the_black_box_measurements_and_the_report_says_what_was_skipped(
        family, tmp_path, capsys):
    """A model served over real HTTP on 127.0.0.1 beside its white-box twin: the endpoint gets
    the measurements that need only answers; the report names what it did not get, and why."""
    from alignparadox.targets import load_target
    from alignparadox.targets.serve import make_server
    from serving import running

    server = make_server(load_target(family[1], name="twin"), port=0)
    with running(server):
        endpoint = f"{server.base_url}#twin"
        run_dir = tmp_path / "run"
        main(["audit", endpoint, "--budget", "quick", "--harmful", "advbench", "--harmless",
              "self-instruct-seed", "--run-dir", str(run_dir), "--no-progress"])
    err = capsys.readouterr().err
    assert "skipped alignment: white-box only; every model given is an endpoint" in err
    with read_store(run_dir) as store:
        measured = {r.measurement for r in store.records()}
    assert measured and measured <= {"templates", "pair", "best_of_n"}
    assert {"pair", "best_of_n"} <= measured
    html = (run_dir / "report.html").read_text()
    assert "Skipped by the audit: alignment (white-box only" in html
