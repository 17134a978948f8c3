"""Targets with loading options, as study specs write them:

    targets = ["organism:aligned-3",
               { model = "/models/my-7b", chat_template = "chat.jinja", dtype = "bfloat16",
                 device_map = "auto", allow_pickle = false, trust_remote_code = false }]

A table becomes one string, the canonical JSON of its non-default options (so it is a plain cell
key, stored and shown like any target); a table with only `model` is that model's plain string.
`split_target` turns either form back into the model and the keyword arguments of
`load_target`, so a study loads a model as `paradox serve` and `paradox steer` can.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from alignparadox.errors import UserError

# option -> (JSON kind, default): the keyword arguments of `load_target` a table may set.
OPTIONS: dict[str, tuple[type, Any]] = {
    "chat_template": (str, None), "dtype": (str, None), "device": (str, None),
    "device_map": (str, None), "allow_pickle": (bool, False), "trust_remote_code": (bool, False),
}


def target_table(table: Mapping[str, Any], where: str = "target") -> str:
    """The target string of a table (see the module docstring); UserError for a bad one."""
    unknown = sorted(set(table) - {"model", *OPTIONS})
    if unknown:
        raise UserError(f"{where} has unknown key(s) {', '.join(unknown)}; expected: model, "
                        f"{', '.join(OPTIONS)}.")
    model = table.get("model")
    if not isinstance(model, str) or not model.strip():
        raise UserError(f"{where} needs a model (a folder, Hub id or organism:NAME).")
    options = {}
    for name, value in table.items():
        if name == "model":
            continue
        kind, default = OPTIONS[name]
        if not isinstance(value, kind) or (kind is str and not value.strip()):
            shown = "true or false" if kind is bool else "a non-empty string"
            raise UserError(f"{where}: {name} must be {shown}, got {value!r}.")
        if value != default:
            options[name] = value
    if options and model.startswith(("http://", "https://")):
        raise UserError(f"{where}: an endpoint target ({model}) takes no loading options.")
    if not options:
        return model
    return json.dumps({"model": model, **options}, sort_keys=True, separators=(",", ":"))


def split_target(spec: str) -> tuple[str, dict[str, Any]]:
    """(model, `load_target` keyword arguments) of a target string."""
    if not spec.startswith("{"):
        return spec, {}
    try:
        table = json.loads(spec)
    except json.JSONDecodeError:
        raise UserError(f"target {spec!r} is neither a model nor a target table.") from None
    if not isinstance(table, dict):
        raise UserError(f"target {spec!r} is neither a model nor a target table.")
    target_table(table)  # the same checks as a study spec's
    return table.pop("model"), table
