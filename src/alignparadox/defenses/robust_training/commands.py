"""`paradox defend train`: robust training of any HF causal LM into a plain checkpoint.
Torch and transformers are imported inside the command only (tests/test_cli_startup.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from alignparadox.errors import UserError

METHOD_NAMES = ("refat", "lat", "rr")


def _layers(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"--layers must be whole numbers separated by commas, got {text!r}."
                        ) from None


def train(
    base: Annotated[str, typer.Argument(help="Model folder, Hub id or provider target "
                                              "(e.g. organism:base).")],
    method: Annotated[str, typer.Option("--method", help="refat | lat | rr.")],
    out: Annotated[Path, typer.Option("--out", help="New folder for the trained checkpoint.")],
    data: Annotated[Path, typer.Option(
        "--data", help="Behaviour data (.jsonl/.csv/.tsv): kind (harmful|harmless), request, "
                       "response (refusal / answer to keep), completion (harmful answer).")],
    steps: Annotated[int | None, typer.Option("--steps", help="Training steps.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the run.")] = None,
    learning_rate: Annotated[float | None, typer.Option("--learning-rate")] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", help="Harmful (and as many harmless) examples per step.")] = None,
    layers: Annotated[str | None, typer.Option(
        "--layers", help="Stream layers, comma-separated (1 = block 1's output).")] = None,
    adapter: Annotated[str | None, typer.Option(
        "--adapter", help="lora (default; merged at the end) or full fine-tuning.")] = None,
    lora_rank: Annotated[int | None, typer.Option("--lora-rank")] = None,
    epsilon: Annotated[float | None, typer.Option(
        "--epsilon", help="LAT: per-token L2 bound as a share of the stream's mean norm.")] = None,
    pgd_steps: Annotated[int | None, typer.Option("--pgd-steps", help="LAT: PGD steps.")] = None,
    alpha: Annotated[float | None, typer.Option("--alpha", help="RR: loss scale.")] = None,
    refusal: Annotated[str | None, typer.Option(
        "--refusal", help="Refusal for harmful rows without a response.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(
        "--checkpoint-every", help="Steps between saved states (resume after a kill).")] = None,
    chat_template: Annotated[str | None, typer.Option(
        "--chat-template", help="Jinja file or template string for a model without one.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Robust-train BASE with ReFAT, targeted LAT or representation rerouting, into OUT."""
    if method not in METHOD_NAMES:
        raise UserError(f"unknown robust-training method {method!r}; use one of "
                        f"{', '.join(METHOD_NAMES)}.")
    if out.exists():
        raise UserError(f"{out} already exists; choose a new output folder.")
    from alignparadox.datasets.io import check_output_folder

    check_output_folder(out.parent)
    settings = {"steps": steps, "seed": seed, "learning_rate": learning_rate,
                "batch_size": batch_size, "layers": _layers(layers), "adapter": adapter,
                "lora_rank": lora_rank, "epsilon": epsilon, "pgd_steps": pgd_steps,
                "alpha": alpha, "checkpoint_every": checkpoint_every}
    settings = {key: value for key, value in settings.items() if value is not None}

    from alignparadox.defenses.robust_training import (
        DEFAULT_REFUSAL,
        load_behaviour_data,
        make_config,
        train_checkpoint,
    )

    config = make_config(method, **settings)
    behaviour = load_behaviour_data(data, refusal or DEFAULT_REFUSAL)
    load_options = {"chat_template": chat_template} if chat_template is not None else {}
    result = train_checkpoint(base, behaviour, config, out, progress=not quiet, **load_options)
    resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
    typer.echo(f"{method}: {result.steps} steps{resumed} on layers "
               f"{', '.join(map(str, result.layers))} in {result.seconds:.0f} s -> {out}")
