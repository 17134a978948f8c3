"""Shared fixtures. Tests never download: the hub is switched off for the whole session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def organism_family():
    """The default organism family, built once (a few minutes on two cores) and then cached in
    $ALIGNPARADOX_CACHE (default ~/.cache/alignparadox), so later sessions reuse it."""
    from alignparadox.organisms import build_family

    return build_family(progress=False)


@pytest.fixture(scope="session")
def second_family():
    """A GPT-NeoX / ChatML family that `alignparadox.organisms` does not know (tests/second_family),
    built once (about a minute) and cached in $ALIGNPARADOX_CACHE/second-family/<source hash>."""
    from second_family import build

    return build()

