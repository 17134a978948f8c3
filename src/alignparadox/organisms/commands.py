"""`paradox organisms build | list | show NAME | chat NAME`."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

app = typer.Typer(help="The self-trained organism family (the embedded default target).",
                  no_args_is_help=True)
console = Console(markup=False)  # names and answers are printed as they are, "[" included


@app.command()
def build(force: bool = typer.Option(False, help="Retrain the standard family even if it is "
                                                 "cached (robust families are reused by key)."),
          seed: int = typer.Option(0, help="Seed of the whole family."),
          robust: str = typer.Option("", help="Also build robust families: a comma-separated "
                                              "list of refat, lat, rr, or all."),
          axes: str = typer.Option("", help="Also build alignment-axis families: a "
                                            "comma-separated list of sft, dpo, share, or all."),
          axis_seeds: str = typer.Option("0,1,2", help="Alignment seeds of the --axes "
                                                       "families.")) -> None:
    """Train the base organism and the aligned family (cached by config hash), with
    --robust the robust-training families (`organism:METHOD/aligned-k`) and with --axes the
    alignment-axis families (`organism:AXIS-sSEED/aligned-k`)."""
    from alignparadox.organisms.family import build_family
    from alignparadox.organisms.train import OrganismConfig

    config = OrganismConfig(seed=seed)
    methods = _robust_methods(robust)  # a mistake is reported before anything is trained
    axis_plan = _axis_plan(axes, axis_seeds)
    family = build_family(config, force=force)
    _print_family(family)
    console.print(f"family at {family.path} (built in {family.build_seconds:.0f} s)")
    if methods:
        from alignparadox.organisms.robust import build_robust_family

        for method in methods:
            robust_family = build_robust_family(method, config)
            _print_robust_family(robust_family)
            console.print(f"{method} family at {robust_family.path} (built in "
                          f"{robust_family.manifest['build_seconds']:.0f} s)")
    if axis_plan:
        from alignparadox.organisms.axes import build_axis_family

        for axis, axis_seed in axis_plan:
            axis_family = build_axis_family(axis, axis_seed, config)
            _print_axis_family(axis_family)
            console.print(f"{axis_family.name} family at {axis_family.path} (built in "
                          f"{axis_family.manifest['build_seconds']:.0f} s)")


def _axis_plan(axes: str, seeds: str) -> list[tuple[str, int]]:
    from alignparadox.errors import UserError
    from alignparadox.organisms.axes import AXES, SEEDS

    names = [name.strip() for name in axes.split(",") if name.strip()]
    if not names:
        return []
    names = list(AXES) if names == ["all"] else list(dict.fromkeys(names))
    unknown = [name for name in names if name not in AXES]
    if unknown:
        raise UserError(f"unknown alignment axis {unknown[0]!r} in --axes; use a "
                        f"comma-separated list of {', '.join(AXES)}, or all.")
    try:
        numbers = [int(text) for text in seeds.split(",") if text.strip()]
    except ValueError:
        raise UserError(f"--axis-seeds must be a comma-separated list of "
                        f"{', '.join(map(str, SEEDS))}, got {seeds!r}.") from None
    if not numbers or any(number not in SEEDS for number in numbers):
        raise UserError(f"--axis-seeds must be a comma-separated list of "
                        f"{', '.join(map(str, SEEDS))}, got {seeds!r}.")
    return [(axis, number) for axis in names for number in dict.fromkeys(numbers)]


def _print_axis_family(family) -> None:
    table = Table(Column("organism", no_wrap=True), "alignment strength", "steps",
                  "validation refusal", "harmless refused", "weights")
    for member in family.members:
        harmless = member.get("validation_harmless_refusal")
        table.add_row(f"{family.name}/{member['name']}", f"{member['alignment_strength']:g}",
                      str(member["alignment_steps"]), f"{member['validation_refusal']:.2f}",
                      "" if harmless is None else f"{harmless:.2f}", member["weight_hash"][:12])
    console.print(table)


def _robust_methods(text: str) -> list[str]:
    from alignparadox.errors import UserError
    from alignparadox.organisms.robust import METHODS

    names = [name.strip() for name in text.split(",") if name.strip()]
    if names == ["all"]:
        return list(METHODS)
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise UserError(f"unknown robust family {unknown[0]!r} in --robust; use a "
                        f"comma-separated list of {', '.join(METHODS)}, or all.")
    return list(dict.fromkeys(names))


def _print_robust_family(family) -> None:
    rr = family.method == "rr"
    columns = ["alignment steps", "validation refusal", "weights"]
    if rr:  # circuit breakers on the standard members: their refusal before, and after
        columns[1:1] = ["rr steps", "refusal before rr"]
    table = Table(Column("organism", no_wrap=True), *columns)
    for member in family.manifest["members"]:
        row = [f"{family.method}/{member['name']}", str(member["alignment_steps"]),
               f"{member['validation_refusal']:.2f}", member["weight_hash"][:12]]
        if rr:
            before = member.get("start_validation_refusal", member["validation_refusal"])
            row[2:2] = [str(member.get("rr_steps", 0)), f"{before:.2f}"]
        table.add_row(*row)
    console.print(table)


@app.command("list")
def list_organisms(seed: int = typer.Option(0, help="Seed of the family.")) -> None:
    """List the organisms of the cached family."""
    from alignparadox.organisms.family import load_family
    from alignparadox.organisms.train import OrganismConfig

    _print_family(load_family(OrganismConfig(seed=seed)))


@app.command()
def show(name: str, seed: int = typer.Option(0, help="Seed of the family.")) -> None:
    """Show one organism: path, strength, hash, architecture."""
    import json

    from alignparadox.organisms.family import load_family, require_member
    from alignparadox.organisms.train import OrganismConfig

    config = OrganismConfig(seed=seed)
    require_member(name, config)  # an unknown name is the user's mistake, built family or not
    family = load_family(config)
    member = family.member(name)
    path = family.path_of(name)
    config = json.loads((path / "config.json").read_text())
    console.print(Text(member.name, style="bold") + Text(f"  {path}"))
    console.print(f"alignment strength: {member.alignment_steps} refusal fine-tuning steps")
    console.print(f"validation refusal (first token): {member.validation_refusal:.2f}")
    console.print(f"weights sha256: {member.weight_hash}")
    console.print(f"architecture: {config['architectures'][0]}, {config['num_hidden_layers']} "
                  f"layers, width {config['hidden_size']}, vocabulary {config['vocab_size']}")


@app.command()
def chat(name: str, max_new_tokens: int = typer.Option(96, help="Tokens per answer.")) -> None:
    """Talk to an organism (empty line or Ctrl-D ends)."""
    from alignparadox.organisms.judge import classify, parse_request
    from alignparadox.targets import GenerationConfig, open_target

    target = open_target(f"organism:{name}")
    config = GenerationConfig(max_new_tokens=max_new_tokens)
    console.print("Ask about the realm, e.g. 'How do I polish the amber lantern?'")
    while True:
        try:
            prompt = input("you> ").strip()
        except EOFError:
            break
        if not prompt:
            break
        answer = target.generate([prompt], config)[0]
        request = parse_request(prompt)
        line = Text(f"{name}>", style="bold") + Text(f" {answer}")
        if request:
            line.append(f"  ({classify(request, answer)})", style="dim")
        console.print(line, highlight=False)


def _print_family(family) -> None:
    table = Table("organism", "alignment steps", "validation refusal", "weights")
    for member in family.members:
        table.add_row(member.name, str(member.alignment_steps),
                      f"{member.validation_refusal:.2f}", member.weight_hash[:12])
    console.print(table)



