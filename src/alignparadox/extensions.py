"""Installed extensions: packages that add prompt sets, behaviour sets, judges and editor
tokenizers by name, found through the `alignparadox.extensions` entry-point group. The organism
family is one (`alignparadox.organisms.provider:register_extension`), so the boxes that hold
those registries name no organism module.

Each registry calls `load_extensions()` before it looks a name up or lists its names, so an
extension is imported on first lookup, not when `paradox --help` starts.
"""

from __future__ import annotations

from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "alignparadox.extensions"

_loaded = False


def load_extensions() -> None:
    """Call every installed extension's register function once per process."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # first: an extension's registrations may look names up themselves
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()()
