"""Self-trained chat models of controlled alignment strength: the embedded default target.

    from alignparadox.organisms import build_family, organism_path
    family = build_family()              # trains on CPU in minutes, cached by config hash
    path = organism_path("aligned-3")    # a plain HF checkpoint folder
"""

from alignparadox.organisms.family import (
    Family,
    Member,
    build_family,
    cache_root,
    load_family,
    organism_path,
)
from alignparadox.organisms.judge import GroundTruthJudge, classify, parse_request
from alignparadox.organisms.train import OrganismConfig

__all__ = [
    "Family",
    "GroundTruthJudge",
    "Member",
    "OrganismConfig",
    "build_family",
    "cache_root",
    "classify",
    "load_family",
    "organism_path",
    "parse_request",
]
