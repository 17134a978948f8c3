"""`paradox prompts`: list the known prompt sets, inspect one, draw a seeded sample, fetch them."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from alignparadox.datasets.io import Unreachable, check_output_file, write_atomic
from alignparadox.datasets.records import PromptSet, TemplateSet
from alignparadox.datasets.registry import (
    MIRROR_VAR,
    AnySet,
    datasets_root,
    downloads_root,
    fetch_set,
    fetchable,
    load,
    prompt_sets,
    spec,
)
from alignparadox.errors import UserError

app = typer.Typer(help="Public prompt sets: list, inspect and sample them.", no_args_is_help=True)

PathOption = Annotated[
    str | None,
    typer.Option(
        "--path", help="Read the set from this file, folder or URL instead of the datasets root."
    ),
]
DownloadOption = Annotated[
    bool,
    typer.Option("--download", help="Read the set from its public URL (needs internet; cached)."),
]


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _console(stderr: bool = False) -> Console:
    # Prompts and set names contain brackets ("[INSERT PROMPT HERE]", "xstest[sample=...]"),
    # which rich would otherwise take for markup.
    return Console(stderr=stderr, markup=False, soft_wrap=True)


def _load(name: str, path: str | None, download: bool) -> AnySet:
    if download:
        if path is not None:
            raise UserError("give either --path or --download, not both.")
        path = spec(name).url
        if path is None:
            raise UserError(f"prompt set {name} has no public URL to download from.")
    return load(name, path)


@app.command("list")
def list_sets() -> None:
    """Every registered set: rows (if its file is found), kind, source and licence."""
    console = _console()
    try:
        console.print(f"datasets root: {datasets_root()}")
    except UserError as error:
        console.print(f"datasets root: none ({error})")
    console.print(f"downloaded copies (paradox prompts fetch): {downloads_root()}")
    table = Table("name", "rows", "kind", "source", "licence")
    for name, dataset in prompt_sets().items():
        try:
            loaded = load(name)
            rows = str(len(loaded))
            kind = "templates" if isinstance(loaded, TemplateSet) else "prompts"
        except UserError:
            rows, kind = "not found", "-"
        table.add_row(name, rows, kind, dataset.description, dataset.licence)
    console.print(table)


@app.command("show")
def show(
    name: str,
    path: PathOption = None,
    download: DownloadOption = False,
    rows: Annotated[int, typer.Option("--rows", min=0, help="How many first rows to print.")] = 5,
) -> None:
    """Counts by category and label, the content hash, and the first rows (texts truncated)."""
    loaded = _load(name, path, download)
    console = _console()
    console.print(
        f"{loaded.name}: {len(loaded)} rows, sha256 {loaded.sha256}",
        highlight=False,
        soft_wrap=True,
    )
    if isinstance(loaded, PromptSet):
        counts = Counter((r.category, r.harmful) for r in loaded)
        summary = Table("category", "harmful", "harmless")
        for category in sorted({c for c, _ in counts}):
            summary.add_row(category, str(counts[category, True]), str(counts[category, False]))
        console.print(summary)
        first = Table("id", "harmful", "category", "text")
        for record in loaded.records[:rows]:
            first.add_row(
                record.id,
                "yes" if record.harmful else "no",
                record.category,
                _one_line(record.text, 80),
            )
    else:
        summary = Table("platform", "templates")
        for platform, count in sorted(loaded.platform_counts().items()):
            summary.add_row(platform, str(count))
        console.print(summary)
        with_placeholder = sum(t.has_placeholder for t in loaded)
        console.print(
            f"{with_placeholder} templates have a request placeholder; the rest get it appended."
        )
        first = Table("id", "platform", "date", "text")
        for template in loaded.templates[:rows]:
            first.add_row(
                template.id,
                template.platform or "",
                template.date or "",
                _one_line(template.text, 80),
            )
    console.print(first)


@app.command("sample")
def sample(
    name: str,
    n: Annotated[int, typer.Option("--n", min=0, help="How many rows to draw.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="The same seed draws the same rows.")] = 0,
    category: Annotated[
        list[str] | None, typer.Option("--category", help="Keep only this category (repeatable).")
    ] = None,
    harmful: Annotated[
        bool | None,
        typer.Option("--harmful/--harmless", help="Keep only harmful or harmless rows."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write JSON lines here (atomically) instead of stdout."),
    ] = None,
    path: PathOption = None,
    download: DownloadOption = False,
) -> None:
    """A seeded sample, as JSON lines, after optional category and harmful/harmless filters."""
    if out is not None:
        check_output_file(out, "the sample")
    loaded = _load(name, path, download)
    if isinstance(loaded, TemplateSet):
        if category or harmful is not None:
            raise UserError(
                f"{name} holds jailbreak templates, which have no category or harm label."
            )
    else:
        if category:
            loaded = loaded.by_category(*category)
        if harmful is not None:
            loaded = loaded.harmful() if harmful else loaded.harmless()
    drawn = loaded.sample(n, seed)
    lines = "".join(json.dumps(row.to_dict(), ensure_ascii=False) + "\n" for row in drawn)
    if out is None:
        sys.stdout.write(lines)
        return
    write_atomic(out, lines.encode("utf-8"))
    _console(stderr=True).print(
        f"wrote {len(drawn)} rows of {drawn.name} (sha256 {drawn.sha256}) to {out}"
    )


@app.command("fetch")
def fetch(
    name: Annotated[str, typer.Argument(help="A set name, or all.")] = "all",
    mirror: Annotated[
        str | None,
        typer.Option("--mirror", help=f"A server laid out like the datasets root, instead of "
                     f"each set's public URL [default: ${MIRROR_VAR}]."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Download again what is there.")] = False,
) -> None:
    """Download public sets into the cache, where every command and study then finds them."""
    console = _console()
    names = fetchable(name)
    failures: list[str] = []
    for each in names:
        if name == "all" and prompt_sets()[each].gated and not os.environ.get("HF_TOKEN"):
            console.print(f"{each}: skipped (gated on Hugging Face: set HF_TOKEN)")
            continue
        try:
            path = fetch_set(each, mirror=mirror, force=force)
        except Unreachable:
            raise  # offline: one sentence for the whole command
        except UserError as error:
            if name != "all":
                raise
            failures.append(str(error))
            continue
        console.print(f"{each}: {len(load(each, path))} rows in {path}")
    if failures:
        raise UserError(f"{len(failures)} of {len(names)} sets were not fetched; first: "
                        f"{failures[0]}")
