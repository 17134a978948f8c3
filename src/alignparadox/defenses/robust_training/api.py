"""The entry points of robust training: configs by method name, `train`, `train_checkpoint`."""

from __future__ import annotations

import json
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any

from alignparadox.defenses.robust_training.common import (
    RecipeConfig,
    TrainResult,
    run_recipe,
    source_digest,
)
from alignparadox.defenses.robust_training.data import BehaviourData
from alignparadox.defenses.robust_training.lat import LatConfig
from alignparadox.defenses.robust_training.refat import RefatConfig
from alignparadox.defenses.robust_training.rr import RRConfig
from alignparadox.errors import UserError

CONFIGS: dict[str, type[RecipeConfig]] = {"refat": RefatConfig, "lat": LatConfig,
                                          "rr": RRConfig}
METHODS = tuple(CONFIGS)
RESULT_FILE = "robust_training.json"


def make_config(method: str, **settings: Any) -> RecipeConfig:
    """The config of `method` with `settings` (None values left at their defaults)."""
    if method not in CONFIGS:
        raise UserError(f"unknown robust-training method {method!r}; use one of "
                        f"{', '.join(METHODS)}.")
    cls = CONFIGS[method]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UserError(f"method {method} has no setting {unknown[0]!r}; its settings: "
                        f"{', '.join(sorted(known))}.")
    config = cls(**{k: v for k, v in settings.items() if v is not None})
    if config.layers is not None:
        object.__setattr__(config, "layers", tuple(config.layers))
    config.check()
    return config


def recipe_for(config: RecipeConfig):
    from alignparadox.defenses.robust_training.lat import Lat
    from alignparadox.defenses.robust_training.refat import Refat
    from alignparadox.defenses.robust_training.rr import RR

    return {"refat": Refat, "lat": Lat, "rr": RR}[config.method](config)


def train(target, data: BehaviourData, config: RecipeConfig, **options):
    """Train `target` (a `WhiteBoxTarget`, whose model is trained in place) with the recipe of
    `config`; returns (trained HF model, TrainResult). Options go to `run_recipe`."""
    return run_recipe(target, data, recipe_for(config), **options)


def state_folder(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.robust-state"


def train_checkpoint(base: str, data: BehaviourData, config: RecipeConfig, out: str | Path, *,
                     progress: bool = True, **load_options) -> TrainResult:
    """Open `base` (anything `open_target` opens), train it, and save it to `out` as a plain HF
    checkpoint (adapters merged) with `robust_training.json` beside it. A killed run leaves its
    state in `.OUT.robust-state` next to `out`; the same command continues from it. `out`
    appears whole or not at all: the checkpoint and its record are written to a staging folder
    that is renamed at the end, and a run refused on its input leaves no state behind."""
    from alignparadox.hooks import save_checkpoint
    from alignparadox.targets import open_target

    out = Path(out)
    if out.exists():
        raise UserError(f"{out} already exists; choose a new output folder.")
    config.check()
    if recipe_for(config).needs_completions and not data.has_completions:
        raise UserError(f"{config.method} needs a harmful completion for every harmful "
                        "example (the `completion` column).")
    target = open_target(base, **load_options)
    state = state_folder(out)
    had_state = state.exists()
    try:
        model, result = train(target, data, config, state_dir=state, progress=progress)
    except UserError:
        if not had_state:  # the state of this refused run only; never an earlier run's
            shutil.rmtree(state, ignore_errors=True)
        raise
    staging = out.parent / f".{out.name}.robust-staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        save_checkpoint(model, target.tokenizer, staging)
        record = {**result.as_dict(), "base": base, "base_weight_hash": target.weight_hash,
                  "data_sha256": data.fingerprint(), "code": source_digest()}
        (staging / RESULT_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(state, ignore_errors=True)
    return result
