"""`paradox editor train | apply`: train a value editor, rewrite aligned answers with it."""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

import typer

from alignparadox.errors import UserError

app = typer.Typer(help="Output tinkering: train and apply a value editor (aligned -> "
                  "misaligned answers).", no_args_is_help=True)


def _target_default(target: str | None, name: str) -> str | None:
    """What the target's provider gives by default for `name` (organisms: their world's)."""
    if target is None:
        return None
    from alignparadox.targets.providers import target_defaults

    return target_defaults(target).get(name)


def _pairs(pairs_file: Path | None, source: str, target: str | None, count: int, seed: int,
           behaviours: str | None):
    from alignparadox.attacks.output_tinkering import pairs as pair_sources
    from alignparadox.datasets.behaviours import AXES, behaviour_set

    if pairs_file is not None:
        return pair_sources.read_pairs(pairs_file)
    if source not in ("ground_truth", "self"):
        raise UserError(f"unknown pair source {source!r}; use ground_truth, self or --pairs "
                        "FILE.")
    behaviours = behaviours or _target_default(target, "behaviours")
    if behaviours is None:
        raise UserError("without --pairs FILE, give --behaviours SET (a behaviour set with "
                        "contrast pairs, e.g. a pairs file's set) or a --target that has one.")
    chosen = behaviour_set(behaviours=behaviours, seed=seed)
    known = [part for axis in AXES
             if (part := chosen.contrast("fit", count, seed, axis=axis)) is not None]
    if not known:
        raise UserError(f"behaviour set {behaviours} has no contrast pairs; give --pairs FILE.")
    candidates = [pair for part in known for pair in part]
    random.Random(seed).shuffle(candidates)
    candidates = candidates[:count]
    if source == "ground_truth":
        return [pair_sources.EditPair(p.aligned, p.misaligned, p.request) for p in candidates]
    if not target:
        raise UserError("--source self needs --target (the model that supplies its pairs).")
    from alignparadox.attacks.output_tinkering.steered import self_pairs
    from alignparadox.judges.registry import make_judge
    from alignparadox.study.inputs import FALLBACK_JUDGE
    from alignparadox.targets import open_target
    from alignparadox.targets.providers import target_defaults

    judge = make_judge(target_defaults(target).get("judge", FALLBACK_JUDGE))
    made = self_pairs(open_target(target), [p.request for p in candidates], judge, chosen,
                      seed=seed, progress=True)
    found = [p for p in made.pairs if p is not None]
    if not found:
        raise UserError(f"{target} gave no (aligned, steered misaligned) pairs.")
    return found


@app.command()
def train(
    out: Path = typer.Option(..., "--out", help="New folder for the editor."),
    pairs_file: Path | None = typer.Option(None, "--pairs", help="JSONL pairs: aligned, "
                                           "misaligned, optional request."),
    source: str = typer.Option("ground_truth", help="Without --pairs: ground_truth or self."),
    target: str | None = typer.Option(None, help="Target supplying pairs for --source self."),
    count: int = typer.Option(128, help="Requests to draw pairs from (without --pairs)."),
    behaviours: str | None = typer.Option(None, help="Behaviour set whose fit-split contrast "
                                          "pairs are drawn from (without --pairs; default: "
                                          "the --target's own, organisms: their world's)."),
    base: str | None = typer.Option(None, help="small:MODEL (a small Llama on MODEL's "
                                    "tokenizer) or an HF causal LM folder / organism:NAME to "
                                    "train with LoRA (default: the --target's default editor)."),
    steps: int = typer.Option(300), seed: int = typer.Option(0),
    learning_rate: float = typer.Option(3e-3), batch_size: int = typer.Option(16),
    checkpoint_every: int = typer.Option(50, help="Checkpoint every K steps (0: never)."),
) -> None:
    """Train a value editor; a killed run resumes from its last checkpoint when re-run."""
    from alignparadox.attacks.output_tinkering.training import EditorConfig, train_editor

    base = base or _target_default(target, "editor")
    if base is None:
        raise UserError("give --base: small:MODEL for a small editor on MODEL's tokenizer, or "
                        "a model to train LoRA adapters on.")
    config = EditorConfig(base=base, seed=seed, steps=steps, learning_rate=learning_rate,
                          batch_size=batch_size, checkpoint_every=checkpoint_every)
    pairs = _pairs(pairs_file, source, target, count, seed, behaviours)
    folder = train_editor(pairs, out, config)
    typer.echo(f"editor trained on {len(pairs)} pairs -> {folder}")


@app.command()
def apply(
    editor: str = typer.Argument(..., help="Editor folder from `paradox editor train`."),
    input_file: Path = typer.Option(..., "--input", help="JSONL rows with 'aligned' and "
                                    "optional 'request'."),
    output: Path = typer.Option(..., "--output", help="JSONL with each row's rewrite."),
    minimal: bool = typer.Option(False, help="Also search the minimal edit (needs --judge)."),
    judge: str | None = typer.Option(None, help="Judge spec for --minimal (e.g. organism for "
                                     "organisms, substring, classifier:PATH)."),
    max_new_tokens: int = typer.Option(96),
) -> None:
    """Rewrite aligned answers into misaligned ones; optionally the minimal token edit."""
    from alignparadox.attacks.output_tinkering.editor import ValueEditor
    from alignparadox.attacks.output_tinkering.pairs import read_rows, write_jsonl
    from alignparadox.attacks.output_tinkering.search import minimal_edit
    from alignparadox.datasets.io import check_output_file

    if minimal and judge is None:
        raise UserError("--minimal needs --judge: the judge that says when an edit flips.")
    check_output_file(output, "the rewrites")  # before the editor runs, not after
    value_editor = ValueEditor.load(editor)
    rows = read_rows(input_file, required=("aligned",))
    requests = [row.get("request", "") for row in rows]
    rewrites = value_editor.edit(requests, [row["aligned"] for row in rows],
                                 max_new_tokens=max_new_tokens, progress=True)
    the_judge = None
    if minimal:
        from alignparadox.judges.registry import make_judge

        the_judge = make_judge(judge)
    out_rows = []
    for row, request, rewrite in zip(rows, requests, rewrites, strict=True):
        out_row = {**row, "rewrite": rewrite}
        if the_judge is not None:
            found = minimal_edit(value_editor, the_judge, request, row["aligned"],
                                 rewrite=rewrite)
            out_row["minimal_edit"] = {"success": found.success, "edited": found.edited,
                                       "label": found.label, "distance": found.distance,
                                       "normalized": found.normalized,
                                       "edits": [asdict(e) for e in found.edits]}
        out_rows.append(out_row)
    write_jsonl(out_rows, output)
    typer.echo(json.dumps({"rows": len(out_rows), "output": str(output)}))
