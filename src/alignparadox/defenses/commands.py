"""`paradox defend ...`: one sub-command per defense. Each module imports torch and
transformers only inside its command (tests/test_cli_startup.py)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Defenses: Best-of-N with latent attribution, robust training, SecAlign.",
                  no_args_is_help=True)

# Robust (adversarial) training: `paradox defend train --method refat|lat|rr BASE --out DIR`.
from alignparadox.defenses.robust_training.commands import train as _robust_train  # noqa: E402

app.command("train")(_robust_train)

# Best-of-N with latent attribution: `paradox defend bon TARGET --reference REF`.
from alignparadox.defenses.best_of_n.commands import bon as _best_of_n  # noqa: E402

app.command("bon")(_best_of_n)

# SecAlign against instruction injection: `paradox defend secalign TARGET --out DIR`.
from alignparadox.defenses.injection.commands import secalign as _secalign  # noqa: E402

app.command("secalign")(_secalign)
