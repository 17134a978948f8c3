"""The HTML report: sections per measurement, escaping of untrusted model output, redaction,
provenance, the command, and a real headless Chromium that loads it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from alignparadox.cli import main
from alignparadox.errors import UserError
from alignparadox.report import Markup, Section, figure, rate, redact, table, write_report
from alignparadox.stats import wilson
from alignparadox.study import (
    Cell,
    CellResult,
    Measurement,
    ResultsStore,
    StudySpec,
    content_hash,
    register_measurement,
    run_study,
)

# What a misbehaving model might answer: markup that would run script if it were not escaped.
MALICIOUS = ('</td></table><script>document.title="pwned";window.pwned=1</script>'
             '<img src=x onerror="window.pwned=2"> Step one of the fictional vault plan: '
             'alpha bravo charlie delta echo')
HARMLESS = "Knead the dough <gently> & let it rest for an hour."


@register_measurement
class Refusals(Measurement):
    """Refusal falls with a 'strength' setting, by arithmetic; keeps two example answers."""

    name = "refusals"
    title = "Refusal against strength"
    defaults = {"strength": 0.0, "n": 40}
    order = 10

    def run(self, cell, context):
        n = cell.settings["n"]
        refused = round(n * cell.settings["strength"])
        return CellResult(
            results={"refusal": wilson(refused, n), "strength": cell.settings["strength"],
                     "examples": [{"request": "a fictional heist", "answer": MALICIOUS,
                                   "harmful": True},
                                  {"request": "bread", "answer": HARMLESS, "harmful": False}]},
            target_id=cell.target, weight_hash=content_hash(cell.target),
            prompt_sets={"heists-v1": "abc123"}, judge="exact")

    def report_section(self, rows, options):
        fig = Figure(figsize=(4, 3))
        axes = fig.add_subplot()
        points = sorted((row.settings["strength"], row.results["refusal"]["rate"])
                        for row in rows)
        axes.plot(*zip(*points, strict=True), marker="o")
        axes.set(xlabel="alignment strength", ylabel="refusal rate")
        examples = rows[-1].results["examples"]
        return Section(self.title, table(["target", "strength", "refusal"],
                                         [[row.target, row.settings["strength"],
                                           row.results["refusal"]] for row in rows])
                       + figure(fig, "refusal rate against strength", caption="Refusal")
                       + table(["request", "answer"],
                               [[example["request"],
                                 redact(example["answer"], example["harmful"],
                                        options.show_completions)] for example in examples]))


@register_measurement
class Tally(Measurement):
    """No section of its own: the report shows it with the generic table."""

    name = "tally"
    defaults = {"k": 1, "n": 4}
    order = 20

    def run(self, cell, context):
        return CellResult(results={"share": wilson(cell.settings["k"], cell.settings["n"]),
                                   "note": "<b>not bold</b>"},
                          target_id=cell.target, weight_hash=None)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("report-run")
    spec = StudySpec.from_dict({
        "targets": ["organism-0", "organism-1"],
        "measurements": [{"name": "tally", "grid": {"k": [0, 3]}},
                         {"name": "refusals", "grid": {"strength": [0.1, 0.5, 0.9]}}]})
    run_study(spec, folder, progress=False)
    with ResultsStore.in_run_dir(folder) as store:  # a measurement this version no longer has
        store.record(Cell("organism-0", "retired", {"x": 1}), error=None, versions={},
                     result=CellResult({"hits": wilson(2, 5)}, "organism-0", None),
                     started_at="2026-01-01T00:00:00", finished_at="2026-01-01T00:00:01",
                     wall_seconds=1.0)
        store.record(Cell("organism-1", "retired", {"x": 2}), result=None,
                     error="Traceback...\nValueError: <script>boom</script>", versions={},
                     started_at="2026-01-01T00:00:00", finished_at="2026-01-01T00:00:01",
                     wall_seconds=1.0)
    return folder


def test_helpers_escape_everything_that_is_not_markup():
    html = table(["a<b", "rate"], [["<i>x</i>", wilson(3, 10)], [Markup("<i>y</i>"), None]])
    assert "<th>a&lt;b</th>" in html and "&lt;i&gt;x&lt;/i&gt;" in html
    assert "<i>y</i>" in html and "&mdash;" in html
    assert "0.30" in rate(wilson(3, 10)) and "(3/10)" in rate(wilson(3, 10))
    assert "[0.11, 0.60]" in rate(wilson(3, 10))
    assert "(0/0)" in rate(wilson(0, 0))
    assert Section("t", "<p>plain text</p>").html == "&lt;p&gt;plain text&lt;/p&gt;"


def test_redaction_shows_first_words_and_a_hash_unless_asked():
    hidden = redact(MALICIOUS, harmful=True, show=False)
    assert "charlie" not in hidden and "echo" not in hidden
    assert content_hash_prefix(MALICIOUS) in hidden and "redacted" in hidden
    assert "<script>" not in hidden and "&lt;script&gt;" in hidden
    shown = redact(MALICIOUS, harmful=True, show=True)
    assert "echo" in shown and "<script>" not in shown and "<img" not in shown
    assert "&lt;gently&gt; &amp; let" in redact(HARMLESS, harmful=False, show=False)


def content_hash_prefix(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:10]


def test_report_has_one_section_per_measurement_in_order_and_provenance_last(run_dir):
    html = write_report(run_dir).read_text()
    positions = [html.index(f'<section id="{anchor}">')
                 for anchor in ("refusals", "tally", "retired", "failed-cells", "provenance")]
    assert positions == sorted(positions)
    assert "Refusal against strength" in html and "data:image/png;base64," in html
    assert "(Measurement <code>retired</code> is not installed here" in html
    assert "0.90 <span class=\"ci\">" in html and "(36/40)" in html  # a rate with counts
    assert content_hash("organism-0") in html and "heists-v1" in html  # provenance
    assert "&lt;b&gt;not bold&lt;/b&gt;" in html and "<b>not bold</b>" not in html
    assert "ValueError: &lt;script&gt;boom" in html
    assert "<script" not in html.replace("&lt;script", "")  # nothing that could run
    assert "<img src=x" not in html and "echo" not in html  # escaped and redacted
    assert not list(run_dir.glob(".*.tmp"))


def test_report_command_shows_completions_only_when_asked(run_dir, tmp_path, capsys):
    out = tmp_path / "shown.html"
    main(["report", str(run_dir), "--out", str(out), "--show-completions"])
    assert str(out) in capsys.readouterr().out
    html = out.read_text()
    assert "alpha bravo charlie delta echo" in html and "<img src=x" not in html


def test_report_refuses_missing_or_empty_run_folders(tmp_path, capsys):
    with pytest.raises(UserError, match="does not exist"):
        write_report(tmp_path / "missing")
    with pytest.raises(UserError, match="has no results store"):
        write_report(tmp_path)
    assert not (tmp_path / "results.sqlite").exists()
    ResultsStore.in_run_dir(tmp_path).close()
    with pytest.raises(UserError, match="no finished cells"):
        write_report(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(tmp_path / "missing")])
    assert exit_.value.code == 2 and "does not exist" in capsys.readouterr().err


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                    reason="headless Chromium needs Debian's chromium and chromium-driver")
def test_report_loads_in_headless_chromium_without_errors_and_figures_render(
        run_dir, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        def load(path: Path) -> tuple[list, list]:
            driver.get(path.resolve().as_uri())
            images = driver.execute_script(
                "return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
            errors = [entry for entry in driver.get_log("browser")
                      if entry["level"] == "SEVERE"]
            return images, errors

        for show in (False, True):
            report = write_report(run_dir, tmp_path / f"report-{show}.html",
                                  show_completions=show)
            images, errors = load(report)
            assert errors == []
            assert images and all(done and width > 0 for done, width in images)
            assert driver.execute_script("return window.pwned") is None
            assert driver.title.startswith("alignparadox report")

        # The same checks catch a broken page: an unloadable image and a blocked script.
        broken = tmp_path / "broken.html"
        broken.write_text(report.read_text().replace(
            "</body>", '<img src="missing.png"><script>window.pwned=3</script></body>'))
        images, errors = load(broken)
        assert errors and not all(width > 0 for _, width in images)
        assert driver.execute_script("return window.pwned") is None  # CSP blocked it
    finally:
        driver.quit()
