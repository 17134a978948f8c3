"""Named prompt sets: where each lives locally, where it is published, its licence, its loader.

Local files are looked up under the datasets root: $ALIGNPARADOX_DATASETS, else
`../shared/datasets` from the current folder, else the copies `paradox prompts fetch` downloaded
into the cache. Any set can instead be read from an explicit file, a folder holding it, or (on a
machine with internet) its public URL, cached after one download. Where a set is named (study
settings, `--prompt-set`), `SET:PATH` reads a file or folder in that set's published format and a
path ending in .csv/.tsv/.jsonl reads a file of one's own (`loaders.load_prompt_file`). The
package bundles none of the data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from alignparadox.datasets import io, loaders
from alignparadox.datasets.io import fetch, is_url
from alignparadox.datasets.records import PromptSet, TemplateSet
from alignparadox.errors import UserError

ENV_VAR = "ALIGNPARADOX_DATASETS"
# A server laid out like the datasets root (MIRROR/advbench/harmful_behaviors.csv, ...), used by
# `paradox prompts fetch` instead of each set's upstream URL (an internal mirror, or a test's).
MIRROR_VAR = "ALIGNPARADOX_PROMPTS_MIRROR"

AnySet = PromptSet | TemplateSet
# A loader gets the resolved local file; a set with no default file gets the user's path or None.
Loader = Callable[[Path | None], AnySet]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    loader: Loader
    default_file: str | None  # relative to the datasets root
    url: str | None
    licence: str
    description: str
    gated: bool = False  # the URL needs HF_TOKEN


REGISTRY: dict[str, DatasetSpec] = {}


def _add(
    name: str,
    loader: Loader,
    default_file: str | None,
    url: str | None,
    licence: str,
    description: str,
    gated: bool = False,
) -> None:
    if name in REGISTRY:
        raise ValueError(f"a prompt set named {name!r} is already registered")
    REGISTRY[name] = DatasetSpec(name, loader, default_file, url, licence, description, gated)


def register_prompt_set(
    name: str,
    loader: Loader,
    *,
    default_file: str | None = None,
    url: str | None = None,
    licence: str = "",
    description: str = "",
) -> None:
    """Make `name` loadable by `load_prompt_set` (or, for a loader of jailbreak templates,
    `load_templates`) and the `paradox prompts` commands.

    Without a `default_file`, `loader` receives the user's path (or None) as given, so a generated
    set (such as the organism world's) can ignore it or read a saved copy from it.
    """
    _add(name, loader, default_file, url, licence, description)


_GITHUB = "https://raw.githubusercontent.com"
_HF = "https://huggingface.co/datasets"
_STRONGREJECT = f"{_GITHUB}/alexandrasouly/strongreject/main/strongreject_dataset"
_ADVBENCH = f"{_GITHUB}/llm-attacks/llm-attacks/main/data/advbench"
_HARMBENCH = f"{_GITHUB}/centerforaisafety/HarmBench/main/data/behavior_datasets"
_JBB = f"{_HF}/JailbreakBench/JBB-Behaviors/resolve/main/data"
_SHEN = f"{_GITHUB}/verazuo/jailbreak_llms/main/data"
_WILDJAILBREAK = f"{_HF}/allenai/wildjailbreak/resolve/main"
_STRONGREJECT_LICENCE = "MIT (+ licences of borrowed rows)"
_SHEN_LICENCE = "MIT (per upstream README)"
_WILDJAILBREAK_LICENCE = "ODC-BY (gated on HF: set HF_TOKEN)"

_add(
    "strongreject",
    loaders.load_strongreject,
    "strongreject/strongreject_dataset.csv",
    f"{_STRONGREJECT}/strongreject_dataset.csv",
    _STRONGREJECT_LICENCE,
    "StrongREJECT (Souly et al. 2024) forbidden prompts",
)
_add(
    "strongreject-small",
    partial(loaders.load_strongreject, name="strongreject-small"),
    "strongreject/strongreject_small_dataset.csv",
    f"{_STRONGREJECT}/strongreject_small_dataset.csv",
    _STRONGREJECT_LICENCE,
    "StrongREJECT (Souly et al. 2024) 10 per category",
)
_add(
    "advbench",
    loaders.load_advbench_behaviors,
    "advbench/harmful_behaviors.csv",
    f"{_ADVBENCH}/harmful_behaviors.csv",
    "MIT",
    "AdvBench (Zou et al. 2023) behaviors with targets",
)
_add(
    "advbench-strings",
    loaders.load_advbench_strings,
    "advbench/harmful_strings.csv",
    f"{_ADVBENCH}/harmful_strings.csv",
    "MIT",
    "AdvBench (Zou et al. 2023) harmful strings",
)
for _name, _functional, _split, _description in [
    ("harmbench", None, "all", "HarmBench (Mazeika et al. 2024) all text behaviors"),
    ("harmbench-standard", "standard", "all", "HarmBench (Mazeika et al. 2024) standard"),
    ("harmbench-contextual", "contextual", "all", "HarmBench (Mazeika et al. 2024) contextual"),
    ("harmbench-val", None, "val", "HarmBench (Mazeika et al. 2024) val split"),
    ("harmbench-test", None, "test", "HarmBench (Mazeika et al. 2024) test split"),
]:
    _add(
        _name,
        partial(loaders.load_harmbench, name=_name, functional=_functional),
        f"harmbench/harmbench_behaviors_text_{_split}.csv",
        f"{_HARMBENCH}/harmbench_behaviors_text_{_split}.csv",
        "MIT",
        _description,
    )
_add(
    "jbb-harmful",
    partial(loaders.load_jbb_behaviors, harmful=True),
    "jbb_behaviors/jbb_harmful_behaviors.csv",
    f"{_JBB}/harmful-behaviors.csv",
    "MIT",
    "JailbreakBench (Chao et al. 2024) harmful, twinned",
)
_add(
    "jbb-benign",
    partial(loaders.load_jbb_behaviors, harmful=False),
    "jbb_behaviors/jbb_benign_behaviors.csv",
    f"{_JBB}/benign-behaviors.csv",
    "MIT",
    "JailbreakBench (Chao et al. 2024) benign twins",
)
_add(
    "xstest",
    loaders.load_xstest,
    "xstest/xstest_prompts.csv",
    f"{_GITHUB}/paul-rottger/exaggerated-safety/main/xstest_prompts.csv",
    "CC BY 4.0",
    "XSTest (Röttger et al. 2024) safe and unsafe",
)
_add(
    "jailbreak-templates",
    loaders.load_jailbreak_templates,
    "jailbreak_llms/jailbreak_prompts_2023_12_25.csv",
    f"{_SHEN}/prompts/jailbreak_prompts_2023_12_25.csv",
    _SHEN_LICENCE,
    "In-the-wild jailbreaks (Shen et al. 2024), 2023-12-25",
)
_add(
    "jailbreak-templates-2023-05",
    partial(loaders.load_jailbreak_templates, name="jailbreak-templates-2023-05"),
    "jailbreak_llms/jailbreak_prompts_2023_05_07.csv",
    f"{_SHEN}/prompts/jailbreak_prompts_2023_05_07.csv",
    _SHEN_LICENCE,
    "In-the-wild jailbreaks (Shen et al. 2024), 2023-05-07",
)
_add(
    "forbidden-questions",
    loaders.load_forbidden_questions,
    "jailbreak_llms/forbidden_question_set.csv",
    f"{_SHEN}/forbidden_question/forbidden_question_set.csv",
    _SHEN_LICENCE,
    "Forbidden questions (Shen et al. 2024), 13 x 30",
)
_add(
    "wildjailbreak-train",
    loaders.load_wildjailbreak_train,
    "wildjailbreak/train/train.tsv",
    f"{_WILDJAILBREAK}/train/train.tsv",
    _WILDJAILBREAK_LICENCE,
    "WildJailbreak (Jiang et al. 2024) train",
    gated=True,
)
_add(
    "wildjailbreak-eval",
    loaders.load_wildjailbreak_eval,
    "wildjailbreak/eval/eval.tsv",
    f"{_WILDJAILBREAK}/eval/eval.tsv",
    _WILDJAILBREAK_LICENCE,
    "WildJailbreak (Jiang et al. 2024) eval",
    gated=True,
)
_add(
    "self-instruct-seed",
    loaders.load_self_instruct_seed,
    "self_instruct_seed/seed_tasks.jsonl",
    f"{_GITHUB}/yizhongw/self-instruct/main/data/seed_tasks.jsonl",
    "Apache-2.0",
    "Self-Instruct (Wang et al. 2023) benign seed tasks",
)


def datasets_root() -> Path:
    """The folder holding the prompt sets: $ALIGNPARADOX_DATASETS, else ../shared/datasets."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        root = Path(configured).expanduser()
        if not root.is_dir():
            raise UserError(f"{ENV_VAR} is set to {root}, which is not a folder.")
        return root
    fallback = Path.cwd() / ".." / "shared" / "datasets"
    if fallback.is_dir():
        return fallback.resolve()
    raise UserError(
        f"no prompt-set folder found: set {ENV_VAR} to the folder holding the sets "
        f"(one sub-folder per set, e.g. strongreject/), or pass an explicit path."
    )


def downloads_root() -> Path:
    """Where `paradox prompts fetch` keeps its copies, in the datasets root's layout."""
    return io.cache_root() / "prompt-sets"


def prompt_sets() -> dict[str, DatasetSpec]:
    """Every registered set by name: the public ones and those installed extensions add."""
    from alignparadox.extensions import load_extensions

    load_extensions()
    return REGISTRY


def spec(name: str) -> DatasetSpec:
    """The registered set `name`, or a user's file named as `SET:PATH` or `PATH.csv|tsv|jsonl`."""
    if name in prompt_sets():
        return REGISTRY[name]
    found = _file_spec(name)
    if found is None:
        raise UserError(
            f"unknown prompt set {name!r}; known sets: {', '.join(REGISTRY)} (or SET:PATH, or a "
            f"path ending in {', '.join(loaders.PROMPT_FILE_SUFFIXES)})."
        )
    return found


def _file_spec(name: str) -> DatasetSpec | None:
    """A set read from the user's file: `advbench:/data/mine.csv` in a registered set's format
    (a folder in its layout works too), or `/data/mine.csv` in the own-file format. Its name is
    the string given, so results name the file they came from."""
    set_name, colon, location = name.partition(":")
    if colon and location and set_name in REGISTRY:
        base = REGISTRY[set_name]
        if base.default_file is None:
            raise UserError(f"prompt set {set_name} is generated; it is not read from a file.")
        path = resolve_path(base, location)
        return replace(base, name=name, loader=_renamed(base.loader, name),
                       default_file=str(Path(path).resolve()), url=None)
    path = Path(name).expanduser()
    if path.suffix.lower() in loaders.PROMPT_FILE_SUFFIXES and not is_url(name):
        return DatasetSpec(name, _renamed(loaders.load_prompt_file, name), str(path.resolve()),
                           None, "", "a prompt file of one's own")
    return None


def _renamed(loader: Loader, name: str) -> Loader:
    def load(path: Path | None) -> AnySet:
        return replace(loader(path), name=name)

    return load


def default_path(dataset: DatasetSpec) -> Path:
    """The file a set is read from when no path is given: a user file's own path, else the one
    under the datasets root, else a copy `paradox prompts fetch` downloaded."""
    assert dataset.default_file is not None
    if Path(dataset.default_file).is_absolute():
        return Path(dataset.default_file)
    downloaded = downloads_root() / dataset.default_file
    try:
        local = datasets_root() / dataset.default_file
    except UserError:
        if downloaded.is_file() and not os.environ.get(ENV_VAR):  # a wrong $ENV_VAR still fails
            return downloaded
        raise
    return downloaded if not local.is_file() and downloaded.is_file() else local


def resolve_path(dataset: DatasetSpec, path: str | os.PathLike[str] | None) -> Path | None:
    """The local file a set is read from: the default (see `default_path`), an explicit file,
    the default file inside an explicit folder, or the cached download of a URL."""
    if is_url(path):
        return fetch(str(path))
    if dataset.default_file is None:
        return None if path is None else Path(path)
    if path is None:
        return default_path(dataset)
    path = Path(path).expanduser()
    if not path.is_dir():
        return path
    # Accept the folder at any level of the default layout: root/, root/set/, root/set/split/.
    parts = Path(dataset.default_file).parts
    for start in range(len(parts)):
        candidate = path.joinpath(*parts[start:])
        if candidate.is_file():
            return candidate
    raise UserError(f"{path} holds no {parts[-1]} for prompt set {dataset.name}.")


def load(name: str, path: str | os.PathLike[str] | None = None) -> AnySet:
    """A registered set (prompts or templates) from `path` (file, folder or URL) or the root."""
    dataset = spec(name)
    return dataset.loader(resolve_path(dataset, path))


def load_prompt_set(name: str, path: str | os.PathLike[str] | None = None) -> PromptSet:
    loaded = load(name, path)
    if not isinstance(loaded, PromptSet):
        raise UserError(
            f"{name} is a set of jailbreak templates, not of requests; use load_templates."
        )
    return loaded


def load_templates(
    name: str = "jailbreak-templates", path: str | os.PathLike[str] | None = None
) -> TemplateSet:
    loaded = load(name, path)
    if not isinstance(loaded, TemplateSet):
        raise UserError(
            f"{name} is a set of requests, not of jailbreak templates; use load_prompt_set."
        )
    return loaded


def fetchable(name: str) -> list[str]:
    """`name`, or for "all" every registered set with a public file, one per file (HarmBench's
    variants share one)."""
    prompt_sets()
    if name != "all":
        dataset = spec(name)
        if dataset.url is None or dataset.default_file is None or name not in REGISTRY:
            raise UserError(f"prompt set {name} has no public file to fetch.")
        return [name]
    files: dict[str, str] = {}
    for dataset in REGISTRY.values():
        if dataset.url is not None and dataset.default_file is not None:
            files.setdefault(dataset.default_file, dataset.name)
    return list(files.values())


def fetch_set(name: str, *, mirror: str | None = None, force: bool = False,
              timeout: float = 60.0) -> Path:
    """Download set `name` into `downloads_root()` (where loading finds it) and return the file.

    From `mirror` (default $ALIGNPARADOX_PROMPTS_MIRROR) laid out like the datasets root, else
    from the set's public URL. The file is written to a temporary name, checked to be non-empty
    and to parse with the set's loader, and only then renamed into place: a failed or
    interrupted fetch leaves nothing behind. A copy already there is kept unless `force`.
    """
    dataset = spec(fetchable(name)[0])
    target = downloads_root() / dataset.default_file
    if target.is_file() and not force:
        return target
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_VAR)
    url = f"{mirror.rstrip('/')}/{dataset.default_file}" if mirror else dataset.url

    def parses(download: Path) -> None:
        try:
            dataset.loader(download)
        except UserError as error:
            raise UserError(f"{url} is not prompt set {name} in its published format: "
                            f"{str(error).replace(str(download), 'the download')}") from None

    try:
        return io.download(url, target, timeout=timeout, check=parses,
                           hint=" (gated on Hugging Face: set HF_TOKEN)" if dataset.gated else "")
    except io.Unreachable as error:
        raise io.Unreachable(f"{error} To fetch prompt set {name}, give a mirror in "
                             f"${MIRROR_VAR}.") from None
