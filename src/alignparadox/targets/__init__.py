"""Targets: the models under audit. White-box targets are local Hugging Face models.

Names are imported lazily so that light modules (e.g. the `paradox` command line) do not pay for
importing torch and transformers until a target is actually opened.
"""

from __future__ import annotations

from alignparadox.lazy import lazy_getattr

_EXPORTS = {
    "Generation": "alignparadox.targets.whitebox",
    "GenerationConfig": "alignparadox.targets.whitebox",
    "TextStream": "alignparadox.targets.whitebox",
    "check_target": "alignparadox.targets.whitebox",
    "TargetProvider": "alignparadox.targets.providers",
    "WhiteBoxTarget": "alignparadox.targets.whitebox",
    "alignment_strength": "alignparadox.targets.providers",
    "describe_target": "alignparadox.targets.providers",
    "load_target": "alignparadox.targets.whitebox",
    "open_target": "alignparadox.targets.whitebox",
    "pick_device": "alignparadox.targets.whitebox",
    "pick_dtype": "alignparadox.targets.whitebox",
    "shared_target": "alignparadox.targets.whitebox",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
