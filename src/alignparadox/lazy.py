"""Lazy package exports: a package names what it offers, and each name is imported on first use.

Boxes whose contents need torch or transformers export this way, so that importing the
package (as `paradox --help` does for every command group) stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `package` serving `exports` (name -> defining module)."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def resolve(factory: Callable[..., Any] | str) -> Callable[..., Any]:
    """`factory` itself, or the attribute a "module:attribute" string names (imported now):
    registries hold such strings so that registering imports nothing."""
    if not isinstance(factory, str):
        return factory
    module, _, attribute = factory.partition(":")
    return getattr(importlib.import_module(module), attribute)
