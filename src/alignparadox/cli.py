"""The `paradox` command. Each box of the architecture contributes its own typer sub-app."""

from __future__ import annotations

import importlib
import os
import sys

import typer
from rich.console import Console
from rich.text import Text

from alignparadox.errors import UserError

# Our own rich bars show progress; transformers' per-file tqdm bars (one per checkpoint loaded or
# saved) would drown them. Set before transformers is imported, which reads it once.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

app = typer.Typer(
    name="paradox",
    help="Measure the AI alignment paradox: attacks, separability and defenses on HF models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# (module, attribute, command name). A box adds its commands by adding one line here.
# Every module listed is imported on each `paradox` call, --help included, so it imports torch,
# transformers and other heavy libraries only inside its commands (tests/test_cli_startup.py).
COMMAND_GROUPS: list[tuple[str, str, str]] = [
    ("alignparadox.organisms.commands", "app", "organisms"),
    ("alignparadox.datasets.commands", "app", "prompts"),
    ("alignparadox.study.commands", "app", "study"),
    ("alignparadox.judges.commands", "app", "judges"),
    ("alignparadox.attacks.input_tinkering.commands", "app", "attack"),
    ("alignparadox.attacks.output_tinkering.commands", "app", "editor"),
    ("alignparadox.attacks.model_tinkering.commands", "directions_app", "directions"),
    ("alignparadox.attacks.model_tinkering.commands", "tinker_app", "tinker"),
    ("alignparadox.defenses.commands", "app", "defend"),
]

# (module, attribute): single commands registered at top level (e.g. `paradox demo`).
TOP_LEVEL_COMMANDS: list[tuple[str, str]] = [
    ("alignparadox.demo", "demo"),
    ("alignparadox.audit", "audit"),
    ("alignparadox.targets.serve", "serve"),
    ("alignparadox.report.commands", "report"),
    ("alignparadox.attacks.model_tinkering.commands", "steer"),
    ("alignparadox.attacks.model_tinkering.commands", "geometry"),
]


def _register() -> None:
    for module_name, attribute, name in COMMAND_GROUPS:
        sub_app = getattr(importlib.import_module(module_name), attribute)
        app.add_typer(sub_app, name=name)
    for module_name, attribute in TOP_LEVEL_COMMANDS:
        app.command()(getattr(importlib.import_module(module_name), attribute))


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes become one sentence on stderr and exit code 2.

    Click's standalone mode handles usage errors (exit 2), --help and Ctrl-C itself; a
    UserError raised anywhere below is turned into a sentence here. So is an exception that
    sets `user_error = True`: errors that must not stop a whole study (a UserError would), such
    as one unreadable checkpoint, yet are the user's to fix on the command line.
    """
    if "transformers" in sys.modules:  # imported before us (a test, a notebook): tell it too
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    try:
        app(args=argv, prog_name="paradox")
    except SystemExit as done:
        if done.code not in (0, None):
            raise
    except Exception as error:
        if not (isinstance(error, UserError) or getattr(error, "user_error", False)):
            raise
        # Text, not markup: messages quote paths, prompts and names that may hold "[...]".
        Console(stderr=True).print(Text("error:", style="red") + Text(f" {error}"),
                                   highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
