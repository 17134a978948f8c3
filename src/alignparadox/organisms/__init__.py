"""Self-trained chat models of controlled alignment strength: the embedded default target.

    from alignparadox.organisms import build_family, organism_path
    family = build_family()              # trains on CPU in minutes, cached by config hash
    path = organism_path("aligned-3")    # a plain HF checkpoint folder

Names are imported lazily (they need torch and transformers) so that `paradox --help`
stays fast.
"""

from __future__ import annotations

from alignparadox.lazy import lazy_getattr

_EXPORTS = {
    "Family": "alignparadox.organisms.family",
    "GroundTruthJudge": "alignparadox.organisms.judge",
    "Member": "alignparadox.organisms.family",
    "OrganismConfig": "alignparadox.organisms.train",
    "build_family": "alignparadox.organisms.family",
    "cache_root": "alignparadox.organisms.family",
    "classify": "alignparadox.organisms.judge",
    "load_family": "alignparadox.organisms.family",
    "organism_path": "alignparadox.organisms.family",
    "parse_request": "alignparadox.organisms.judge",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
