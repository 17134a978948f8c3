"""One record type for every prompt set, and a collection with seeded sampling, splits and filters.

Jailbreak templates (the in-the-wild DAN-style prompts) are not requests but wrappers around one,
so they get their own small pair of types: `JailbreakTemplate` and `TemplateSet`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

from alignparadox.errors import UserError

# HarmBench's own prompt format for contextual behaviors (baselines/*: context, rule, request).
CONTEXT_SEPARATOR = "\n\n---\n\n"


def normalise_text(text: str) -> str:
    """The form two texts are compared in for de-duplication: NFKC, case-folded, single spaces."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@dataclass(frozen=True)
class PromptRecord:
    """One request of a prompt set.

    `target` is an affirmative target string ("Sure, here is ...") where the set has one.
    `benign_twin_id` is set on a harmful record whose set pairs it 1:1 with a harmless twin.
    `context` is the document a contextual request refers to (HarmBench contextual behaviors).
    """

    id: str
    text: str
    harmful: bool
    category: str
    source: str
    target: str | None = None
    benign_twin_id: str | None = None
    context: str | None = None

    @property
    def prompt(self) -> str:
        """The text to send to a model: the request, preceded by its context if it has one."""
        return self.text if self.context is None else self.context + CONTEXT_SEPARATOR + self.text

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def _digest(items: Sequence[PromptRecord] | Sequence[JailbreakTemplate]) -> str:
    """sha256 over one JSON array of field values per item, in field order."""
    hasher = hashlib.sha256()
    for item in items:
        values = [getattr(item, field.name) for field in dataclasses.fields(item)]
        hasher.update(json.dumps(values, ensure_ascii=False).encode("utf-8"))
        hasher.update(b"\n")
    return hasher.hexdigest()


def _sample_indices(size: int, n: int, seed: int, what: str) -> list[int]:
    if n < 0 or n > size:
        raise UserError(f"cannot sample {n} from {what}, which has {size} rows.")
    # Sorted, so a sample keeps the set's own order; which rows are chosen depends only on seed.
    return sorted(random.Random(seed).sample(range(size), n))


def _split_bounds(size: int, fractions: Sequence[float], what: str) -> list[int]:
    if not fractions or any(not 0 < f <= 1 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise UserError(
            f"split fractions for {what} must be positive and sum to 1, got {list(fractions)}."
        )
    bounds, total = [0], 0.0
    for fraction in fractions:
        total += fraction
        bounds.append(round(total * size))
    bounds[-1] = size
    return bounds


@dataclass(frozen=True)
class PromptSet:
    """A named, ordered, immutable collection of `PromptRecord`s with a content hash."""

    name: str
    records: tuple[PromptRecord, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "records", tuple(self.records))
        duplicates = [i for i, count in Counter(r.id for r in self.records).items() if count > 1]
        if duplicates:
            raise UserError(f"prompt set {self.name} has duplicate ids, e.g. {duplicates[0]!r}.")

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[PromptRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> PromptRecord:
        return self.records[index]

    @cached_property
    def sha256(self) -> str:
        """Hash of the records' content, in order (not of the name): identifies what was run."""
        return _digest(self.records)

    @property
    def texts(self) -> list[str]:
        """The model-ready prompt of every record (context included where there is one)."""
        return [r.prompt for r in self.records]

    def category_counts(self) -> dict[str, int]:
        return dict(Counter(r.category for r in self.records))

    def by_category(self, *categories: str) -> PromptSet:
        """Records in any of the given categories; an unknown category is a user error."""
        known = set(self.category_counts())
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise UserError(
                f"{self.name} has no category {unknown[0]!r}; its categories are "
                f"{', '.join(sorted(known))}."
            )
        wanted = set(categories)
        return self._derive(
            f"category={'|'.join(categories)}", [r for r in self if r.category in wanted]
        )

    def harmful(self) -> PromptSet:
        return self._derive("harmful", [r for r in self if r.harmful])

    def harmless(self) -> PromptSet:
        return self._derive("harmless", [r for r in self if not r.harmful])

    def sample(self, n: int, seed: int = 0) -> PromptSet:
        """`n` records drawn without replacement; the same seed always draws the same records."""
        indices = _sample_indices(len(self), n, seed, self.name)
        return self._derive(f"sample={n},seed={seed}", [self.records[i] for i in indices])

    def split(self, fractions: Sequence[float], seed: int = 0) -> tuple[PromptSet, ...]:
        """Disjoint parts covering the set, sized by `fractions` (summing to 1); seeded shuffle."""
        bounds = _split_bounds(len(self), fractions, self.name)
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        return tuple(
            self._derive(
                f"split={i + 1}/{len(fractions)},seed={seed}",
                [self.records[j] for j in sorted(order[bounds[i] : bounds[i + 1]])],
            )
            for i in range(len(fractions))
        )

    def dedupe(self) -> PromptSet:
        """First occurrence of each (normalised text, normalised context): HarmBench reuses one
        request text with different contexts, and those are different prompts."""
        seen: set[tuple[str, str]] = set()
        kept = []
        for record in self.records:
            key = (normalise_text(record.text), normalise_text(record.context or ""))
            if key not in seen:
                seen.add(key)
                kept.append(record)
        return self._derive("dedupe", kept)

    def _derive(self, operation: str, records: list[PromptRecord]) -> PromptSet:
        return PromptSet(f"{self.name}[{operation}]", tuple(records))


PLACEHOLDERS = ("[INSERT PROMPT HERE]", "[PROMPT]", "[INPUT]")
_PLACEHOLDER = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS), re.IGNORECASE)


@dataclass(frozen=True)
class JailbreakTemplate:
    """An in-the-wild jailbreak prompt: a wrapper the attacker puts a request into."""

    id: str
    text: str
    platform: str | None = None
    source: str | None = None
    community: str | None = None
    date: str | None = None

    @property
    def has_placeholder(self) -> bool:
        return _PLACEHOLDER.search(self.text) is not None

    def fill(self, request: str) -> str:
        """The template with `request` in its placeholder, or appended after it if it has none
        (most collected prompts set up a persona and expect the question as the next message)."""
        if self.has_placeholder:
            return _PLACEHOLDER.sub(lambda _: request, self.text)
        return f"{self.text}\n\n{request}"

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TemplateSet:
    """A named, ordered, immutable collection of `JailbreakTemplate`s with a content hash."""

    name: str
    templates: tuple[JailbreakTemplate, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "templates", tuple(self.templates))

    def __len__(self) -> int:
        return len(self.templates)

    def __iter__(self) -> Iterator[JailbreakTemplate]:
        return iter(self.templates)

    def __getitem__(self, index: int) -> JailbreakTemplate:
        return self.templates[index]

    @cached_property
    def sha256(self) -> str:
        return _digest(self.templates)

    def platform_counts(self) -> dict[str, int]:
        return dict(Counter(t.platform or "unknown" for t in self.templates))

    def by_platform(self, *platforms: str) -> TemplateSet:
        known = set(self.platform_counts())
        unknown = [p for p in platforms if p not in known]
        if unknown:
            raise UserError(
                f"{self.name} has no platform {unknown[0]!r}; its platforms are "
                f"{', '.join(sorted(known))}."
            )
        wanted = set(platforms)
        return self._derive(
            f"platform={'|'.join(platforms)}",
            [t for t in self if (t.platform or "unknown") in wanted],
        )

    def sample(self, n: int, seed: int = 0) -> TemplateSet:
        indices = _sample_indices(len(self), n, seed, self.name)
        return self._derive(f"sample={n},seed={seed}", [self.templates[i] for i in indices])

    def dedupe(self) -> TemplateSet:
        """First occurrence of each normalised template text (the collection repeats reposts)."""
        seen: set[str] = set()
        kept = []
        for template in self.templates:
            key = normalise_text(template.text)
            if key not in seen:
                seen.add(key)
                kept.append(template)
        return self._derive("dedupe", kept)

    def _derive(self, operation: str, templates: list[JailbreakTemplate]) -> TemplateSet:
        return TemplateSet(f"{self.name}[{operation}]", tuple(templates))
