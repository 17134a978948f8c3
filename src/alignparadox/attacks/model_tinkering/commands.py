"""`paradox directions fit`, `paradox steer`, `paradox geometry`, `paradox tinker export`."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from alignparadox.datasets.io import check_output_file, check_output_folder, read_text
from alignparadox.errors import UserError

# No markup: requests, answers and paths are printed as they are, brackets included.
console = Console(markup=False)
directions_app = typer.Typer(help="Fit and select residual-stream directions.",
                             no_args_is_help=True)
tinker_app = typer.Typer(help="Model tinkering: edited checkpoints.", no_args_is_help=True)

_TARGET_HELP = "Target: organism:NAME or a local Hugging Face model folder."
_SOURCE_HELP = ("a registered prompt set or a .csv/.tsv/.jsonl file (FILE#COLUMN names its text "
                "column); default: the target's own behaviour set (organisms: their world)")


def _inputs(target: str, seed: int, **settings):
    """The behaviour set and judge these options name, as a study cell would resolve them."""
    from alignparadox.study.cells import Cell
    from alignparadox.study.inputs import cell_behaviours, cell_judge, check_behaviours

    cell = Cell(target, "directions", settings, seed)
    check_behaviours(cell)
    return cell_behaviours(cell), cell_judge(cell)


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
    behaviours: str = typer.Option(None, help=f"Harmful and harmless requests: {_SOURCE_HELP}."),
    harmful: str = typer.Option(None, help=f"Harmful requests: {_SOURCE_HELP}."),
    harmless: str = typer.Option(None, help=f"Harmless requests: {_SOURCE_HELP}."),
    pairs: str = typer.Option(None, help="Value-axis pairs file (request, aligned, misaligned)."),
    judge: str = typer.Option(None, help="Judge that finds the target's refusals (default: "
                              "the target's own, else substring)."),
    n_fit: int = typer.Option(64, help="Requests per group for the means."),
    n_select: int = typer.Option(32, help="Requests per group for selection."),
    stance: bool = typer.Option(True, help="Also fit the value (neutral → partisan) direction "
                                "where the behaviour set has contrast pairs."),
    seed: int = typer.Option(0, help="Seed of the splits and samples."),
) -> None:
    """Fit the refusal (and value) direction, choose its layer and position, save it."""
    from alignparadox.geometry.recipes import fit_refusal_direction, fit_value_direction
    from alignparadox.judges.registry import make_judge

    check_output_folder(out, "the directions")  # before the fit, not after it
    model = _open(target)
    behaviour_set, judge_spec = _inputs(target, seed, behaviours=behaviours, harmful=harmful,
                                        harmless=harmless, pairs=pairs, judge=judge)
    common = {"n_fit": n_fit, "n_select": n_select, "seed": seed, "progress": True}
    fitted = {"refusal": fit_refusal_direction(model, behaviour_set, make_judge(judge_spec),
                                               **common)}
    value = fit_value_direction(model, behaviour_set, **common) if stance else None
    if value is not None:
        fitted["stance"] = value
    for name, result in fitted.items():
        table = Table(title=f"{name} direction candidates")
        for column in ("layer", "position", "bypass", "induce", "KL", "dropped"):
            table.add_column(column)
        for s in result.selection.scores:
            table.add_row(str(s.layer), str(s.position), f"{s.bypass:.3f}", f"{s.induce:.3f}",
                          f"{s.kl:.3g}", s.dropped or "")
        console.print(table)
        try:
            path = result.direction.save(out / name)
        except OSError as error:
            raise UserError(f"cannot write the directions to {out}: "
                            f"{error.strerror or error}.") from None
        d = result.direction
        line = Text(f"{name}: layer {d.layer}, position {d.positions[0]}, mean norm "
                    f"{d.metadata['mean_norm']:.3g} -> {path}")
        if result.fallback:
            line.append(f"  ({result.fallback})", style="yellow")
        console.print(line)


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
        requests += [line for line in read_text(prompts_file).splitlines() if line.strip()]
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
        console.print(Text(f"> {request}", style="bold"), highlight=False)
        console.print(answer, highlight=False)


def geometry(
    target: str = typer.Argument(..., help=_TARGET_HELP),
    direction: Path = typer.Option(None, help="Saved refusal direction (default: fit one)."),
    behaviours: str = typer.Option(None, help=f"Harmful and harmless requests: {_SOURCE_HELP}; "
                                   "their select split's states are compared."),
    harmful: str = typer.Option(None, help=f"Harmful requests: {_SOURCE_HELP}."),
    harmless: str = typer.Option(None, help=f"Harmless requests: {_SOURCE_HELP}."),
    judge: str = typer.Option(None, help="Judge that finds the target's refusals when a "
                              "direction is fitted (default: the target's own, else substring)."),
    n: int = typer.Option(64, help="Harmful and harmless requests each."),
    plot: Path = typer.Option(Path("geometry.png"), help="Plot file to write (.png, .pdf)."),
    seed: int = typer.Option(0, help="Seed of the prompt samples and held-out split."),
) -> None:
    """Per-layer separability of harmful vs harmless request states, as a table and a plot."""
    from matplotlib.backend_bases import FigureCanvasBase
    from matplotlib.figure import Figure

    from alignparadox.datasets.behaviours import HARMFUL, HARMLESS
    from alignparadox.geometry.measurement import layer_table, state_layers
    from alignparadox.geometry.recipes import fit_refusal_direction
    from alignparadox.geometry.separability import projection_2d
    from alignparadox.hooks import collect_activations, residual_layout
    from alignparadox.judges.registry import make_judge

    if n < 4:
        raise UserError(f"--n must be at least 4 for a held-out split, got {n}")
    check_output_file(plot, "the plot")  # before the measurement, not after it
    formats = FigureCanvasBase.get_supported_filetypes()
    if plot.suffix and plot.suffix[1:].lower() not in formats:
        raise UserError(f"cannot write the plot {plot}: matplotlib writes no {plot.suffix} "
                        f"files; use one of {', '.join(sorted(formats))}.")
    sources = {"behaviours": behaviours, "harmful": harmful, "harmless": harmless,
               "judge": judge}
    model = _open(target)
    if direction is not None:
        fitted = _load_direction(direction, model)
        layers = state_layers(residual_layout(model.model).n_layers, fitted)
        behaviour_set, _ = _inputs(target, seed, **sources)
    else:
        behaviour_set, judge_spec = _inputs(target, seed, **sources)
        fitted = fit_refusal_direction(model, behaviour_set, make_judge(judge_spec), seed=seed,
                                       progress=True).direction
        layers = state_layers(residual_layout(model.model).n_layers, fitted)
    states = []
    for kind in (HARMFUL, HARMLESS):
        records = behaviour_set.requests(kind, "select", n, seed)
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
    """Save through a temporary file and a rename: never half a plot."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.",
                                             suffix=path.suffix or ".png", dir=path.parent)
    except OSError as error:
        raise UserError(f"cannot write the plot {path}: {error.strerror or error}.") from None
    os.close(handle)
    try:
        fig.savefig(temporary, dpi=110, bbox_inches="tight")
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise UserError(f"cannot write the plot {path}: {error.strerror or error}.") \
                from None
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
    check_output_folder(out, "the checkpoint")  # before the model is loaded, not after
    model = _open(target)
    path = WeightOrthogonalization(_load_direction(direction, model)).export(model, out)
    console.print(f"orthogonalized checkpoint -> {path}")
