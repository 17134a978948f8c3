"""`write_report`: one self-contained HTML file for a run folder.

The page opens with the verdict (`report.verdicts`: does the paradox hold, per attack and
alignment axis, and the headline figure), then one section per measurement found in the store,
each drawn by that measurement's own `report_section` (a generic table for measurements that
are not installed), the sections across measurements, failed cells, and provenance last. A
Content-Security-Policy forbids scripts and any request leaving the file, so even a model
output that slipped past escaping could neither run nor phone home.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from markupsafe import Markup

from alignparadox.datasets.io import check_output_file
from alignparadox.errors import UserError
from alignparadox.report.generic import generic_section, settings_groups
from alignparadox.report.html import ReportOptions, Section, table
from alignparadox.report.robust import robust_section
from alignparadox.report.verdicts import verdict_section
from alignparadox.study.cells import canonical_json
from alignparadox.study.measurement import TARGET_PROVENANCE, find_measurement
from alignparadox.study.store import RESULTS_FILE, CellRecord, ResultsStore
from alignparadox.study.strength import ParadoxMeasure

REPORT_FILE = "report.html"
# (anchor, builder) of sections that read every measurement's rows (`ReportOptions.all_rows`);
# a builder returns None where its section does not apply to the store.
CROSS_SECTIONS: list[tuple[str, Callable[[ReportOptions], Section | None]]] = [
    ("robust-vs-standard", robust_section),
]

_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330;
       max-width: 1100px; margin: 2rem auto; padding: 0 1.2rem; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; } h2 { margin-top: 2.4rem;
     border-bottom: 1px solid #d5d9e0; padding-bottom: .2rem; }
.meta { color: #5b6475; } nav a { margin-right: 1rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .9rem; }
th, td { border: 1px solid #d5d9e0; padding: .25rem .55rem; text-align: left;
         vertical-align: top; }
th { background: #f2f4f7; } caption { text-align: left; color: #5b6475; }
.rate .ci, .rate .count { color: #5b6475; }
.completion { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: .85rem; }
.redacted .hash { color: #a33; } figure { margin: 1rem 0; } img { max-width: 100%; }
details { margin: .6rem 0; } summary { cursor: pointer; color: #38507a; }
pre { white-space: pre-wrap; background: #f6f7f9; padding: .6rem; font-size: .8rem; }
.failed { color: #a33; }
"""

_PAGE = Markup("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title><style>{css}</style></head>
<body><h1>{title}</h1><p class="meta">{subtitle}</p><nav>{nav}</nav>
{sections}
</body></html>
""")


def write_report(run_dir: str | Path, out: str | Path | None = None,
                 show_completions: bool = False) -> Path:
    """Write the run folder's report (default RUN_DIR/report.html) atomically; its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist.")
    if out is None and not _writable(run_dir):
        raise UserError(f"run folder {run_dir} is read-only; write the report elsewhere with "
                        "--out FILE.")
    out = Path(out) if out is not None else run_dir / REPORT_FILE
    check_output_file(out, "the report")  # before the work, not after it
    with read_store(run_dir) as store:
        records = store.records(status=None)
        studies = store.studies()
    done = [record for record in records if record.status == "done"]
    if not done:
        raise UserError(f"{run_dir} has no finished cells yet; run a study there first.")
    by_measurement: dict[str, list[CellRecord]] = defaultdict(list)
    for record in done:
        by_measurement[record.measurement].append(record)
    options = ReportOptions(show_completions=show_completions, all_rows=dict(by_measurement),
                            strengths=studies[-1]["spec"].get("strengths") if studies else None,
                            notes=tuple(studies[-1]["spec"].get("notes", [])) if studies else ())

    measurements = {name: find_measurement(name) for name in by_measurement}
    order = sorted(by_measurement, key=lambda name: (
        measurements[name].order if measurements[name] else 1_000_000, name))
    measures = [measure for name in order if measurements[name] is not None
                for measure in _paradox_measures(measurements[name], by_measurement[name],
                                                 options)]
    verdict = verdict_section(measures, options)
    sections = [("verdict", verdict)] if verdict is not None else []
    for name in order:
        rows, measurement = by_measurement[name], measurements[name]
        if measurement is not None:
            section = measurement.report_section(rows, options)
        else:
            section = generic_section(name, rows, options)
            section = Section(section.title, Markup(
                "<p>(Measurement <code>{}</code> is not installed here: generic view.)</p>"
            ).format(name) + section.html)
        sections.append((name, Section(section.title, section.html + _cells_detail(rows))))
    for anchor, build in CROSS_SECTIONS:  # sections across measurements, where they apply
        section = build(options)
        if section is not None:
            sections.append((anchor, section))
    failed = [record for record in records if record.status == "failed"]
    if failed:
        sections.append(("failed-cells", _failures(failed)))
    sections.append(("provenance", _provenance(done, studies)))

    title = f"alignparadox report: {run_dir.resolve().name}"
    subtitle = (f"{len(done)} finished cells, {len(by_measurement)} measurements, "
                f"{len({record.target for record in done})} targets; generated "
                f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}"
                + (" · harmful completions SHOWN" if show_completions else
                   " · harmful completions redacted"))
    nav = Markup(" ").join(Markup('<a href="#{}">{}</a>').format(anchor, section.title)
                           for anchor, section in sections)
    body = Markup("\n").join(
        Markup('<section id="{}"><h2>{}</h2>{}</section>').format(anchor, section.title,
                                                                  section.html)
        for anchor, section in sections)
    page = _PAGE.format(title=title, subtitle=subtitle, nav=nav, sections=body,
                        css=Markup(_CSS))
    _write_atomically(out, str(page))
    return out


def _paradox_measures(measurement, rows: list[CellRecord],
                      options: ReportOptions) -> list[ParadoxMeasure]:
    """The measurement's verdict measures, per `settings_groups` group, each group's measures
    naming the settings that tell it apart."""
    return [replace(m, detail=f"{m.detail} ({label})") if label else m
            for label, members in settings_groups(rows)
            for m in measurement.paradox_measures(members, options)]


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)


@contextmanager
def read_store(run_dir: str | Path) -> Iterator[ResultsStore]:
    """The run folder's results store, for reading only (`report`, `study status`).

    SQLite in WAL mode writes beside its file even to read it, so the store of a folder this
    process cannot write (a read-only share, another user's run, an archive) is read from a
    temporary copy of the store and its write-ahead log instead.
    """
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file() or (_writable(path.parent) and _writable(path)):
        with ResultsStore.in_run_dir(run_dir, create=False) as store:
            yield store
        return
    with tempfile.TemporaryDirectory(prefix="alignparadox-read-") as copy:
        for suffix in ("", "-wal"):
            if Path(f"{path}{suffix}").is_file():
                shutil.copyfile(f"{path}{suffix}", Path(copy) / f"{RESULTS_FILE}{suffix}")
        with ResultsStore.in_run_dir(copy, create=False) as store:
            yield store


def _provenance(done: list[CellRecord], studies: list[dict]) -> Section:
    # Distinct (target, id, hash): a target whose weights changed between cells shows twice.
    targets: set[tuple[str, str | None, str | None]] = set()
    prompt_sets: dict[str, set[str]] = defaultdict(set)
    judges: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    for record in done:
        targets.add((record.target, record.target_id, record.weight_hash))
        for prompt_set, digest in record.prompt_sets.items():
            prompt_sets[prompt_set].add(digest)
        if record.judge:
            judges[record.judge] += 1
        versions[canonical_json(record.versions)] += 1
    html = table(["target", "id", "weight hash"],
                 sorted(targets, key=lambda row: tuple(item or "" for item in row)),
                 caption="Targets")
    html += _target_provenance(done)
    if prompt_sets:
        html += table(["prompt set", "content hash"],
                      [(name, ", ".join(sorted(digests)))
                       for name, digests in sorted(prompt_sets.items())],
                      caption="Prompt sets")
    if judges:
        html += table(["judge", "cells"], sorted(judges.items()), caption="Judges")
    environments = [json.loads(key) for key in versions]
    libraries = sorted({name for environment in environments for name in environment})
    html += table(["library", *(f"environment {index + 1} ({count} cells)"
                                for index, count in enumerate(versions.values()))],
                  [[name, *(environment.get(name) for environment in environments)]
                   for name in libraries], caption="Library versions")
    wall = sum(record.wall_seconds for record in done)
    html += Markup("<p>Compute time {:.1f} s over {} cells, finished between {} and {}; seeds "
                   "{}.</p>").format(wall, len(done), min(r.started_at for r in done),
                                     max(r.finished_at for r in done),
                                     ", ".join(str(s) for s in sorted({r.seed for r in done})))
    for study in studies[-3:]:
        html += Markup("<details><summary>Study spec, run {} started {}</summary>"
                       "<pre>{}</pre></details>").format(
            study["id"], study["started_at"], json.dumps(study["spec"], indent=2))
    return Section("Provenance", html)


def _target_provenance(done: list[CellRecord]) -> Markup:
    """What each target's provider records about it (e.g. an organism's family, fine-tuning
    steps and validation refusal), and the figures of every family those targets come from,
    so two reports (two machines, two builds) can be compared member by member."""
    cards: dict[str, dict] = {}
    for record in done:
        card = (record.results or {}).get(TARGET_PROVENANCE)
        if card:
            cards[record.target] = card
    if not cards:
        return Markup("")
    html = table(["target", "provider", "family", "alignment strength", "axis", "note"],
                 [[target, card.get("provider"), card.get("family"),
                   card.get("alignment_strength"), card.get("alignment_axis"), card.get("note")]
                  for target, card in sorted(cards.items())],
                 caption="Target provenance")
    noted = [f"{target}: {card['note']}" for target, card in sorted(cards.items())
             if card.get("note")]
    if noted:  # e.g. random-weight models, whose every rate is noise
        html += Markup("<p><b>Note.</b> {}</p>").format("; ".join(noted))
    families = {card["family"]: card["family_members"] for card in cards.values()
                if card.get("family") and card.get("family_members")}
    for family, members in sorted(families.items()):
        html += table(["member", "alignment steps", "validation refusal"],
                      [[name, figures.get("steps"), figures.get("validation_refusal")]
                       for name, figures in members.items()],
                      caption=f"Family {family}: every member as built")
    return html


def _cells_detail(rows: list[CellRecord]) -> Markup:
    detail = table(
        ["key", "target", "settings", "seed", "prompt sets", "judge", "wall s", "finished"],
        [[row.key, row.target, canonical_json(row.settings), row.seed,
          ", ".join(f"{name}:{digest}" for name, digest in sorted(row.prompt_sets.items())),
          row.judge, row.wall_seconds, row.finished_at] for row in rows])
    return Markup("<details><summary>{} cells and their provenance</summary>{}</details>"
                  ).format(len(rows), detail)


def _failures(failed: list[CellRecord]) -> Section:
    items = Markup("").join(
        Markup("<details><summary>{} · {}</summary><pre>{}</pre></details>").format(
            record.key, str(record.cell), record.error or "")
        for record in failed)
    return Section("Failed cells", Markup(
        '<p class="failed">{} cells failed; a rerun of the study retries them.</p>'
    ).format(len(failed)) + items)


def _write_atomically(path: Path, text: str) -> None:
    """Write next to the destination and rename: readers never see a partial report."""
    folder = path.parent
    temporary = folder / f".{path.name}.{os.getpid()}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except OSError as error:
        with suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise UserError(
            f"cannot write the report to {path}: {error.strerror or error}.") from None
