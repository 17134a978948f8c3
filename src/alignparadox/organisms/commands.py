"""`paradox organisms build | list | show NAME | chat NAME`."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

app = typer.Typer(help="The self-trained organism family (the embedded default target).",
                  no_args_is_help=True)
console = Console(markup=False)  # names and answers are printed as they are, "[" included


@app.command()
def build(force: bool = typer.Option(False, help="Retrain even if the family is cached."),
          seed: int = typer.Option(0, help="Seed of the whole family.")) -> None:
    """Train the base organism and the aligned family (cached by config hash)."""
    from alignparadox.organisms.family import build_family
    from alignparadox.organisms.train import OrganismConfig

    family = build_family(OrganismConfig(seed=seed), force=force)
    _print_family(family)
    console.print(f"family at {family.path} (built in {family.build_seconds:.0f} s)")


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



