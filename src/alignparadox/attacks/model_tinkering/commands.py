"""`paradox directions fit`, `paradox steer`, `paradox geometry`, `paradox tinker export`."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from alignparadox.errors import UserError

console = Console()
directions_app = typer.Typer(help="Fit and select residual-stream directions.",
                             no_args_is_help=True)
tinker_app = typer.Typer(help="Model tinkering: edited checkpoints.", no_args_is_help=True)

_TARGET_HELP = "Target: organism:NAME or a local Hugging Face model folder."


def _open(spec: str):
    from alignparadox.targets import open_target

    return open_target(spec)


def _load_direction(path: Path, target):
    from alignparadox.geometry import Direction
    from alignparadox.hooks import residual_layout

    return Direction.load(path, model_hash=target.weight_hash,
                          d_model=residual_layout(target.model).d_model)


@directions_app.command("fit")
def fit(
    target: str = typer.Argument(..., help=_TARGET_HELP),
    out: Path = typer.Option(..., "--out", help="Folder for refusal.* and stance.* files."),
    fit_set: str = typer.Option("organisms-train", help="Prompt set the means are taken on."),
    select_set: str = typer.Option("organisms-validation", help="Prompt set for selection."),
    n_fit: int = typer.Option(64, help="Requests per group for the means."),
    n_select: int = typer.Option(32, help="Requests per group for selection."),
    stance: bool = typer.Option(True, help="Also fit the neutral → partisan stance direction."),
    seed: int = typer.Option(0, help="Seed of the prompt samples."),
) -> None:
    """Fit the refusal (and stance) direction, choose its layer and position, save it."""
    from alignparadox.attacks.model_tinkering.recipes import (
        fit_refusal_direction,
        fit_stance_direction,
    )

    model = _open(target)
    common = {"fit_set": fit_set, "select_set": select_set, "n_fit": n_fit,
              "n_select": n_select, "seed": seed, "progress": True}
    fitted = {"refusal": fit_refusal_direction(model, **common)}
    if stance:
        fitted["stance"] = fit_stance_direction(model, **common)
    for name, result in fitted.items():
        table = Table(title=f"{name} direction candidates")
        for column in ("layer", "position", "bypass", "induce", "KL", "dropped"):
            table.add_column(column)
        for s in result.selection.scores:
            table.add_row(str(s.layer), str(s.position), f"{s.bypass:.3f}", f"{s.induce:.3f}",
                          f"{s.kl:.3g}", s.dropped or "")
        console.print(table)
        path = result.direction.save(out / name)
        d = result.direction
        console.print(f"{name}: layer {d.layer}, position {d.positions[0]}, mean norm "
                      f"{d.metadata['mean_norm']:.3g} -> {path}"
                      + (f"  [yellow]({result.fallback})[/yellow]" if result.fallback else ""))


def steer(
    target: str = typer.Argument(..., help=_TARGET_HELP),
    prompts: list[str] = typer.Argument(None, help="Requests to answer (user messages)."),
    direction: Path = typer.Option(..., help="Saved direction (.json or .safetensors)."),
    alpha: float = typer.Option(None, help="Add alpha × mean residual norm × direction."),
    ablate: bool = typer.Option(False, "--ablate", help="Project the direction out instead."),
    layer: int = typer.Option(None, help="Layer to add at (default: the direction's layer)."),
    prompts_file: Path = typer.Option(None, help="File with one request per line."),
    max_new_tokens: int = typer.Option(80, help="Tokens per answer."),
) -> None:
    """Answer requests with a direction added (--alpha) or ablated (--ablate)."""
    from alignparadox.attacks.model_tinkering import ActivationAddition, DirectionalAblation
    from alignparadox.targets import GenerationConfig

    if (alpha is None) == (not ablate):
        raise UserError("give exactly one of --alpha A or --ablate")
    if ablate and layer is not None:
        raise UserError("--layer applies to --alpha only; ablation acts at every layer.")
    if alpha is not None and not math.isfinite(alpha):
        raise UserError(f"the steering coefficient must be a finite number, got {alpha}")
    requests = list(prompts or [])
    if prompts_file is not None:
        if not prompts_file.is_file():
            raise UserError(f"prompts file {prompts_file} does not exist")
        requests += [line for line in prompts_file.read_text().splitlines() if line.strip()]
    if not requests:
        raise UserError("the prompt set is empty: give requests as arguments or --prompts-file")
    if any(not request.strip() for request in requests):
        raise UserError("a prompt is empty")
    model = _open(target)
    loaded = _load_direction(direction, model)
    attack = (DirectionalAblation(loaded) if ablate
              else ActivationAddition(loaded, alpha=alpha, layer=layer))
    with attack.applied(model) as attacked:
        answers = attacked.generate(requests, GenerationConfig(max_new_tokens=max_new_tokens))
    for request, answer in zip(requests, answers, strict=True):
        console.print(f"[bold]> {request}[/bold]", highlight=False)
        console.print(answer, highlight=False, markup=False)


def geometry(
    target: str = typer.Argument(..., help=_TARGET_HELP),
    direction: Path = typer.Option(None, help="Saved refusal direction (default: fit one)."),
    prompt_set: str = typer.Option("organisms-validation", help="Requests whose states split."),
    n: int = typer.Option(64, help="Harmful and harmless requests each."),
    plot: Path = typer.Option(Path("geometry.png"), help="Plot file to write (.png, .pdf)."),
    seed: int = typer.Option(0, help="Seed of the prompt samples and held-out split."),
) -> None:
    """Per-layer separability of harmful vs harmless request states, as a table and a plot."""
    from matplotlib.figure import Figure

    from alignparadox.attacks.model_tinkering.recipes import fit_refusal_direction, sample
    from alignparadox.geometry.measurement import layer_table, state_layers
    from alignparadox.geometry.separability import projection_2d
    from alignparadox.hooks import collect_activations, residual_layout

    if n < 4:
        raise UserError(f"--n must be at least 4 for a held-out split, got {n}")
    model = _open(target)
    fitted = (_load_direction(direction, model) if direction is not None
              else fit_refusal_direction(model, seed=seed, progress=True).direction)
    layers = state_layers(residual_layout(model.model).n_layers, fitted)
    states = []
    for harmful in (True, False):
        records = sample(prompt_set, n, seed, harmful=harmful, stance=False)
        acts = collect_activations(model.model, model.tokenizer,
                                   [model.format_chat(r.prompt) for r in records], layers,
                                   fitted.positions[0])
        states.append({layer: a[:, 0] for layer, a in acts.items()})
    rows = layer_table(states[0], states[1], seed)
    table = Table(title=f"{target}: harmful vs harmless request states "
                        f"(position {fitted.positions[0]})")
    for column in ("layer", "Fisher", "AUROC", "held-out states"):
        table.add_column(column)
    for row in rows:
        table.add_row(str(row["layer"]), f"{row['fisher']:.3f}", f"{row['auroc']:.3f}",
                      str(row["n_test"]))
    console.print(table)
    fig = Figure(figsize=(10, 3.4))
    for index, metric in enumerate(("fisher", "auroc")):
        axes = fig.add_subplot(1, 3, index + 1)
        axes.plot([r["layer"] for r in rows], [r[metric] for r in rows], marker="o")
        axes.set_xlabel("layer")
        axes.set_ylabel(metric)
    projection = projection_2d(states[0][fitted.layer], states[1][fitted.layer], fitted.vector)
    axes = fig.add_subplot(1, 3, 3)
    axes.scatter(*projection.pos.T, s=10, label="harmful")
    axes.scatter(*projection.neg.T, s=10, label="harmless")
    axes.set_xlabel(f"refusal direction (layer {fitted.layer})")
    axes.legend(fontsize=7)
    _save_figure(fig, plot)
    console.print(f"plot -> {plot}")


def _save_figure(fig, path: Path) -> None:
    if not path.parent.is_dir():
        raise UserError(f"cannot write the plot: folder {path.parent} does not exist")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".png",
                                         dir=path.parent)
    os.close(handle)
    try:
        fig.savefig(temporary, dpi=110, bbox_inches="tight")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@tinker_app.command("export")
def export(
    target: str = typer.Argument(..., help=_TARGET_HELP),
    direction: Path = typer.Option(..., help="Saved direction to orthogonalize against."),
    out: Path = typer.Option(..., "--out", help="New folder for the edited checkpoint."),
) -> None:
    """Save the orthogonalized model (it cannot write along the direction) as an HF checkpoint."""
    from alignparadox.attacks.model_tinkering import WeightOrthogonalization

    if out.exists():
        raise UserError(f"{out} already exists; choose a new output folder")
    model = _open(target)
    path = WeightOrthogonalization(_load_direction(direction, model)).export(model, out)
    console.print(f"orthogonalized checkpoint -> {path}")
