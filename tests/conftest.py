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



@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread; two OpenMP threads on a busy 2-core box spin-wait.
    Modules use it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def organism(organism_family):
    """The strongest aligned organism, opened once per module."""
    from alignparadox.targets import open_target

    return open_target("organism:aligned-5")


@pytest.fixture(scope="module")
def refusal_direction(organism, tmp_path_factory):
    """A difference-in-means refusal direction on training requests, saved as `paradox
    directions fit` saves one (vector in .safetensors, recipe with mean_norm in .json)."""
    from alignparadox.datasets import PromptSet, load_prompt_set
    from alignparadox.datasets.behaviours import VALUE_CATEGORY
    from alignparadox.geometry import DiffInMeans, Direction
    from alignparadox.geometry.recipes import mean_norm
    from alignparadox.hooks import collect_activations

    layer, position = 2, -1
    train = load_prompt_set("organisms-train")
    harmless = PromptSet("organisms-train[harmless]",
                         tuple(r for r in train.harmless() if r.category != VALUE_CATEGORY))
    groups = [[organism.format_chat(r.prompt) for r in group.sample(24, 0)]
              for group in (train.harmful(), harmless)]
    harmful, harmless = (collect_activations(organism.model, organism.tokenizer, prompts,
                                             [layer], position, progress=False)[layer][:, 0]
                         for prompts in groups)
    direction = Direction(DiffInMeans().fit(harmful, harmless).direction_, "diff_in_means",
                          layer, (position,), organism.weight_hash,
                          metadata={"mean_norm": mean_norm(organism, groups[0], layer, position)})
    return direction.save(tmp_path_factory.mktemp("directions") / "refusal")
