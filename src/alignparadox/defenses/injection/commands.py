"""`paradox defend secalign`: SecAlign preference training of any HF causal LM against
instruction injection, into a plain checkpoint. Torch and transformers are imported inside the
command only (tests/test_cli_startup.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from alignparadox.attacks.input_tinkering.commands import (
    DisguisesOption,
    InjectionsOption,
    PositionsOption,
)
from alignparadox.errors import UserError


def secalign(
    target: Annotated[str, typer.Argument(help="Model folder, Hub id or provider target "
                                                "(e.g. organism:base); not an endpoint.")],
    out: Annotated[Path, typer.Option("--out", help="New (or empty) folder for the trained "
                                                    "checkpoint.")],
    tasks: Annotated[str | None, typer.Option(
        "--tasks", help="Training tasks over data: a .jsonl file (id, instruction, data, "
        "expected) or a registered set. Hold out the tasks you will measure on (--exclude, or "
        "a file of your own). Default: the target's own, else self-instruct.")] = None,
    injections: InjectionsOption = None,
    exclude: Annotated[str | None, typer.Option(
        "--exclude", help="Tasks (a .jsonl file or set) never trained on, e.g. the ones you "
        "will measure on.")] = None,
    n_tasks: Annotated[int, typer.Option("--n-tasks", help="Training tasks sampled.")] = 64,
    pairs_per_task: Annotated[int, typer.Option(
        "--pairs-per-task", help="Injected prompts per task (distinct injection, position, "
        "disguise).")] = 1,
    steps: Annotated[int, typer.Option("--steps", help="DPO optimiser steps.")] = 100,
    beta: Annotated[float, typer.Option("--beta", help="DPO's beta.")] = 0.1,
    learning_rate: Annotated[float, typer.Option("--learning-rate")] = 1e-4,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Pairs per step.")] = 8,
    adapter: Annotated[str, typer.Option(
        "--adapter", help="lora (merged at the end) or full fine-tuning.")] = "lora",
    lora_rank: Annotated[int, typer.Option("--lora-rank")] = 8,
    sft_weight: Annotated[float, typer.Option(
        "--sft-weight", help="Weight of the chosen answer's likelihood added to DPO (0: "
        "plain DPO).")] = 0.0,
    chosen: Annotated[str, typer.Option(
        "--chosen", help="answer: the target's own greedy answer to the clean task; expected: "
        "the task's first expected text (tasks without one are skipped).")] = "answer",
    positions: PositionsOption = "start,middle,end",
    disguises: DisguisesOption = "plain,ignore,completion,fake_system",
    max_new_tokens: Annotated[int, typer.Option(
        "--max-new-tokens", help="Length of the generated chosen and rejected answers.")] = 128,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample, the pairs and the "
                                                     "training.")] = 0,
    chat_template: Annotated[str | None, typer.Option(
        "--chat-template", help="Jinja file or template string for a model without one.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """SecAlign: DPO of TARGET towards the task's answer, away from the injection's, into OUT.

    Pairs: each training task with an injection hidden in its data (the attack's prompts);
    chosen is the answer to the clean task, rejected the answer to the injection alone."""
    from alignparadox.attacks.input_tinkering.injection import input_sets, split_choices
    from alignparadox.datasets.tasks import load_injections, load_tasks
    from alignparadox.defenses.injection.secalign import (
        HELD_OUT_FILE,
        SecAlignConfig,
        check_output,
        train_secalign,
    )

    if target.startswith(("http://", "https://")):
        raise UserError(f"{target} is an endpoint; SecAlign trains the model's weights, so it "
                        "needs a white-box target (organism:NAME, a local model folder or a Hub "
                        "id).")
    config = SecAlignConfig(
        n_tasks=n_tasks, pairs_per_task=pairs_per_task, steps=steps, beta=beta,
        learning_rate=learning_rate, batch_size=batch_size, adapter=adapter,
        lora_rank=lora_rank, sft_weight=sft_weight, chosen=chosen,
        max_new_tokens=max_new_tokens, positions=tuple(split_choices(positions)),
        disguises=tuple(split_choices(disguises)), seed=seed)
    config.check()
    check_output(out)
    tasks, injections = input_sets(target, tasks, injections)
    task_set, injection_set = load_tasks(tasks), load_injections(injections)
    excluded = load_tasks(exclude) if exclude is not None else None
    load_options = {"chat_template": chat_template} if chat_template is not None else {}
    folder = train_secalign(target, task_set, injection_set, config, out, exclude=excluded,
                            progress=not quiet, **load_options)
    import json

    card = json.loads((folder / "alignparadox.json").read_text(encoding="utf-8"))
    training = card["training"]
    losses = training["losses"]
    loss = f", loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else ""
    typer.echo(f"secalign: {card['pairs']} pairs from {card['tasks']['trained']} tasks, "
               f"{training['steps']} steps{loss} in {training['seconds']:.0f} s -> {folder}")
    if card["tasks"]["held_out_file"]:
        typer.echo(f"measure on tasks it was not trained on: paradox attack injection {folder} "
                   f"--tasks {folder / HELD_OUT_FILE}")
