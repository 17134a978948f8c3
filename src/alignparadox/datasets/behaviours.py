"""Behaviour sets: what a measurement runs on.

A behaviour set holds harmful requests, harmless requests and, optionally, contrast pairs
(request, aligned answer, misaligned answer) on the value axis (`stance`: steered by model
tinkering) or the refusal axis (`refusal`: a refusal and the compliance it replaces, which only
the value editor trains on), each split into disjoint `fit` (directions
are fitted on it), `select` (layers are chosen on it) and `test` (attacks are measured on it)
parts. Each part may come from another source:

    behaviour_set(harmful="advbench", harmless="self-instruct-seed", seed=0)
    behaviour_set(behaviours="xstest")                       # both kinds from one set
    behaviour_set(harmful="mine.csv#prompt", harmless="ok.jsonl", pairs="values.jsonl")
    behaviour_set(behaviours="organisms")                    # a registered behaviour set

A source is a registered prompt set (its harmful, or harmless, records), or a user file
(`.csv`/`.tsv`/`.jsonl`; `FILE#COLUMN` names the text column, default `text`). Sources are split
by record id with a seeded hash, so the split does not depend on the file's order. A registered
behaviour set (`register_behaviour_set`) brings its own splits: the organism world keeps its
held-out tasks and templates that way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from alignparadox.datasets.records import PromptRecord, PromptSet
from alignparadox.errors import UserError

SPLITS = ("fit", "select", "test")
HARMFUL, HARMLESS = "harmful", "harmless"
# Category of the records made from contrast pairs: the judges' scoring counts such answers on
# the value axis (neutral / partisan), not as harmless answers.
VALUE_CATEGORY = "stance"
PAIR_COLUMNS = ("request", "aligned", "misaligned")
VALUE_AXIS, REFUSAL_AXIS = "stance", "refusal"
AXES = (REFUSAL_AXIS, VALUE_AXIS)
_FILE_SUFFIXES = (".csv", ".tsv", ".jsonl")


@dataclass(frozen=True)
class ContrastPair:
    """A request and two answers to it that differ only on one axis (`AXES`)."""

    id: str
    request: str
    aligned: str
    misaligned: str
    axis: str = VALUE_AXIS


@dataclass(frozen=True)
class PairSet:
    """A named, ordered collection of contrast pairs with a content hash."""

    name: str
    pairs: tuple[ContrastPair, ...]

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[ContrastPair]:
        return iter(self.pairs)

    @cached_property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for pair in self.pairs:
            digest.update(json.dumps([pair.id, pair.request, pair.aligned, pair.misaligned,
                                      pair.axis], ensure_ascii=False).encode())
            digest.update(b"\n")
        return digest.hexdigest()

    def on_axis(self, axis: str) -> PairSet:
        return PairSet(f"{self.name}[{axis}]", tuple(p for p in self.pairs if p.axis == axis))

    def sample(self, n: int, seed: int = 0) -> PairSet:
        """Up to `n` pairs, seeded, in the set's order."""
        chosen = _hash_order(self.pairs, lambda p: p.id, seed)[:n]
        kept = set(id(p) for p in chosen)
        return PairSet(f"{self.name}[sample={n},seed={seed}]",
                       tuple(p for p in self.pairs if id(p) in kept))

    def records(self) -> PromptSet:
        """The pairs' requests as records: harmful on the refusal axis, else (harmless) of the
        value axis."""
        return PromptSet(f"{self.name}[requests]", tuple(
            PromptRecord(p.id, p.request, harmful=p.axis == REFUSAL_AXIS,
                         category=p.axis if p.axis == REFUSAL_AXIS else VALUE_CATEGORY,
                         source=self.name) for p in self.pairs))


Parts = Mapping[str, PromptSet]


@dataclass(frozen=True)
class BehaviourSet:
    """Harmful and harmless requests, and optional contrast pairs, each by split."""

    name: str
    harmful: Parts
    harmless: Parts
    pairs: Mapping[str, PairSet] | None = None

    def requests(self, kind: str, split: str, n: int | None = None, seed: int = 0) -> PromptSet:
        """The `kind` (harmful / harmless) requests of a split; a seeded sample of up to `n`."""
        part = (self.harmful if kind == HARMFUL else self.harmless).get(split)
        if part is None or not len(part):
            raise UserError(f"behaviour set {self.name} has no {kind} requests; give "
                            f"{kind} = a prompt set or file in the measurement's settings.")
        return part if n is None else part.sample(min(n, len(part)), seed)

    def contrast(self, split: str, n: int | None = None, seed: int = 0,
                 axis: str = VALUE_AXIS) -> PairSet | None:
        """The contrast pairs on `axis` of a split (a seeded sample of up to `n`), None when
        the set has none on it."""
        part = self.pairs[split].on_axis(axis) if self.pairs else None
        if part is None or not any(len(p.on_axis(axis)) for p in self.pairs.values()):
            return None
        return part if n is None else part.sample(n, seed)

    @property
    def has_harmless(self) -> bool:
        return any(len(part) for part in self.harmless.values())

    def provenance(self) -> dict[str, str]:
        """Every part's name -> content hash, for the results' provenance."""
        parts = [*self.harmful.values(), *self.harmless.values(),
                 *(self.pairs.values() if self.pairs else ())]
        return {part.name: part.sha256 for part in parts}


# -- registered behaviour sets ---------------------------------------------------------------

# name -> factory, or "module:attribute" naming one (imported only when the set is used).
# Installed extensions add theirs (the organisms their world's, see `alignparadox.extensions`).
_REGISTERED: dict[str, Callable[[], BehaviourSet] | str] = {}


def register_behaviour_set(name: str, factory: Callable[[], BehaviourSet] | str) -> None:
    """Make `behaviours = NAME` use a behaviour set with its own splits."""
    _REGISTERED[name] = factory


def _behaviour_sets() -> dict[str, Callable[[], BehaviourSet] | str]:
    from alignparadox.extensions import load_extensions

    load_extensions()
    return _REGISTERED


def registered_behaviour_sets() -> list[str]:
    return sorted(_behaviour_sets())


def _registered(name: str) -> BehaviourSet:
    from alignparadox.lazy import resolve

    return resolve(_REGISTERED[name])()


# -- sources ---------------------------------------------------------------------------------


def _in_set_format(source: str) -> bool:
    """`SET:PATH`: a file (or folder) of one's own in registered set SET's format."""
    from alignparadox.datasets.registry import prompt_sets

    name, colon, location = source.partition(":")
    return bool(colon and location) and name in prompt_sets()


def is_file(source: str) -> bool:
    """A source naming a file of one's own format (a file suffix, or a folder in it: registered
    names have neither), as opposed to a registered set or `SET:PATH`."""
    path = Path(source.partition("#")[0])
    return ((path.suffix.lower() in _FILE_SUFFIXES or len(path.parts) > 1)
            and not _in_set_format(source))


def check_source(source: str, what: str) -> None:
    """Refuse, without reading it, a source that names no registered set and no file."""
    from alignparadox.datasets.registry import prompt_sets

    known_sets, behaviour_sets = prompt_sets(), _behaviour_sets()
    if not isinstance(source, str) or not source.strip():
        raise UserError(f"{what} must be a prompt set name or a file path, got {source!r}.")
    if is_file(source):
        path = Path(source.partition("#")[0]).expanduser()
        if not path.is_file():
            raise UserError(f"{what} file {path} does not exist.")
    elif _in_set_format(source):
        from alignparadox.datasets.registry import spec

        path = Path(spec(source).default_file or "")  # a folder is resolved to its file here
        if not path.is_file():
            raise UserError(f"{what} file {path} does not exist.")
    elif source not in known_sets and not (what == "behaviours" and source in behaviour_sets):
        known = ", ".join(sorted({*known_sets, *(behaviour_sets if what == "behaviours" else ())}))
        raise UserError(f"{what} {source!r} is neither a file nor a registered set; known "
                        f"sets: {known}.")


def load_requests(source: str, kind: str) -> PromptSet:
    """The `kind` records of a registered prompt set or a user file (whose rows without a
    `harmful` column take the kind they are given as)."""
    if is_file(source):
        from alignparadox.datasets.loaders import load_prompt_file

        file, _, column = source.partition("#")
        loaded = load_prompt_file(Path(file).expanduser(), text_column=column or "text",
                                  harmful_default=kind == HARMFUL)
    else:
        from alignparadox.datasets.registry import load_prompt_set

        loaded = load_prompt_set(source)
    part = loaded.harmful() if kind == HARMFUL else loaded.harmless()
    if not len(part):
        raise UserError(f"{source} has no {kind} requests.")
    return part


def load_pairs(source: str) -> PairSet:
    """Contrast pairs from a .jsonl or .csv/.tsv file with columns request, aligned, misaligned
    (optional: id, axis = stance (default) or refusal)."""
    from alignparadox.datasets.io import read_jsonl, read_table

    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix not in _FILE_SUFFIXES:
        raise UserError(f"pairs file {path} must end in {', '.join(_FILE_SUFFIXES)}.")
    if not path.is_file():
        raise UserError(f"pairs file {path} does not exist.")
    rows = (read_jsonl(path, PAIR_COLUMNS) if suffix == ".jsonl"
            else read_table(path, list(PAIR_COLUMNS), delimiter="\t" if suffix == ".tsv"
                            else ",", non_empty=list(PAIR_COLUMNS)))
    pairs = []
    for number, row in enumerate(rows, 1):
        if not all(isinstance(row[c], str) and row[c].strip() for c in PAIR_COLUMNS):
            raise UserError(f"{path} row {number} needs non-empty strings "
                            f"{', '.join(PAIR_COLUMNS)}.")
        if row["aligned"].strip() == row["misaligned"].strip():
            raise UserError(f"{path} row {number} has the same aligned and misaligned answer.")
        axis = str(row.get("axis") or VALUE_AXIS).strip()
        if axis not in AXES:
            raise UserError(f"{path} row {number} has axis {axis!r}; use {' or '.join(AXES)}.")
        pairs.append(ContrastPair(str(row.get("id") or f"{path.stem}/{number}"),
                                  row["request"], row["aligned"], row["misaligned"], axis))
    if not pairs:
        raise UserError(f"pairs file {path} holds no pairs.")
    ids = [p.id for p in pairs]
    if len(set(ids)) < len(ids):
        raise UserError(f"pairs file {path} has duplicate ids.")
    return PairSet(path.name, tuple(pairs))


def _hash_order(items, key: Callable, seed: int) -> list:
    """`items` in a seeded order that depends on each item's id only, not on its position."""
    return sorted(items, key=lambda item: hashlib.sha256(f"{seed}|{key(item)}".encode())
                  .digest())


def split_ids(items, key: Callable, seed: int, what: str) -> dict[str, list]:
    """Disjoint fit / select / test parts (about 1/2, 1/4, 1/4), each in the input's order."""
    items = list(items)
    if len(items) < len(SPLITS):
        raise UserError(f"{what} has {len(items)} items, too few to split into fit, select "
                        f"and test; give at least {len(SPLITS)}.")
    quarter = max(1, len(items) // 4)
    order = _hash_order(items, key, seed)
    cut = {"fit": order[: len(items) - 2 * quarter],
           "select": order[len(items) - 2 * quarter: len(items) - quarter],
           "test": order[len(items) - quarter:]}
    position = {id(item): index for index, item in enumerate(items)}
    return {split: sorted(part, key=lambda item: position[id(item)])
            for split, part in cut.items()}


def split_requests(requests: PromptSet, seed: int) -> dict[str, PromptSet]:
    parts = split_ids(requests.records, lambda r: r.id, seed, requests.name)
    return {split: PromptSet(f"{requests.name}[{split},seed={seed}]", tuple(records))
            for split, records in parts.items()}


def split_pairs(pairs: PairSet, seed: int) -> dict[str, PairSet]:
    parts = split_ids(pairs.pairs, lambda p: p.id, seed, pairs.name)
    return {split: PairSet(f"{pairs.name}[{split},seed={seed}]", tuple(part))
            for split, part in parts.items()}


def behaviour_set(*, behaviours: str | None = None, harmful: str | None = None,
                  harmless: str | None = None, pairs: str | None = None,
                  seed: int = 0) -> BehaviourSet:
    """The behaviour set the sources name (see the module docstring); `harmful`, `harmless`
    and `pairs` replace the parts of `behaviours` they name."""
    name = "+".join(s for s in (behaviours, harmful, harmless, pairs) if s) or "empty"
    base: BehaviourSet | None = None
    if behaviours is not None:
        registered = behaviours in _behaviour_sets() and not is_file(behaviours)
        base = _registered(behaviours) if registered else None
        if base is None:
            harmful = harmful or behaviours
            harmless = harmless or behaviours
    harmful_parts = (split_requests(load_requests(harmful, HARMFUL), seed) if harmful
                     else base.harmful if base else {})
    harmless_parts = (split_requests(load_requests(harmless, HARMLESS), seed) if harmless
                      else base.harmless if base else {})
    pair_parts = (split_pairs(load_pairs(pairs), seed) if pairs
                  else base.pairs if base else None)
    return BehaviourSet(name, harmful_parts, harmless_parts, pair_parts)
