"""Minimal-edit search: the fewest token edits to an aligned answer that the judge calls
misaligned (harmful compliance, or partisan), guided by the value editor.

1. The editor rewrites the aligned answer; the token-level Levenshtein alignment between the
   two gives the candidate edits (insert, delete, substitute), grouped into hunks of adjacent
   edits.
2. Beam search over sets of hunks, one more hunk per depth, towards the editor's rewrite: each
   depth keeps the `beam` candidates the editor finds most likely and asks the judge about them;
   the first depth with a judged success ends this phase.
3. Shrink: drop single edits from the successful script while the judge still says success
   (the most editor-likely survivor first), until no edit can go.

An exact judge (the organism world's) accepts only the full rewrite, so the result is the
Levenshtein distance to it; a looser judge lets the search stop at a partial rewrite.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from alignparadox.attacks.output_tinkering.editor import ValueEditor
from alignparadox.judges.base import Judge, Verdict

KEEP, SUBSTITUTE, DELETE, INSERT = "keep", "substitute", "delete", "insert"


@dataclass(frozen=True)
class Step:
    """One column of an alignment: `source` index in the aligned answer (the insertion point
    for inserts), `target` index in the rewrite (None for deletes)."""

    kind: str
    source: int
    target: int | None


@dataclass(frozen=True)
class Edit:
    kind: str  # insert | delete | substitute
    position: int  # token index in the aligned answer (insert: before this token)
    old: str | None
    new: str | None


@dataclass(frozen=True)
class Judged:
    edits: frozenset[int]  # indices of alignment steps carried out
    text: str
    verdict: Verdict
    likelihood: float  # editor log-likelihood of the edited answer


@dataclass(frozen=True)
class EditResult:
    success: bool
    edits: list[Edit]
    edited: str
    label: str
    distance: int  # number of token edits
    normalized: float  # distance / max(len(aligned), len(edited)) in tokens
    judge_calls: int


def alignment(source: Sequence[int], target: Sequence[int]) -> list[Step]:
    """A minimum-cost (Levenshtein) alignment of two token sequences."""
    n, m = len(source), len(target)
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        cost[i][0] = i
    for j in range(m + 1):
        cost[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i][j] = min(cost[i - 1][j] + 1, cost[i][j - 1] + 1,
                             cost[i - 1][j - 1] + (source[i - 1] != target[j - 1]))
    steps, i, j = [], n, m
    while i or j:
        if i and j and cost[i][j] == cost[i - 1][j - 1] + (source[i - 1] != target[j - 1]):
            steps.append(Step(KEEP if source[i - 1] == target[j - 1] else SUBSTITUTE, i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i and cost[i][j] == cost[i - 1][j] + 1:
            steps.append(Step(DELETE, i - 1, None))
            i -= 1
        else:
            steps.append(Step(INSERT, i, j - 1))
            j -= 1
    return steps[::-1]


def apply_edits(source: Sequence[int], target: Sequence[int], steps: Sequence[Step],
                applied: set[int]) -> list[int]:
    """`source` with the edit steps whose indices are in `applied` carried out."""
    out = []
    for index, step in enumerate(steps):
        on = index in applied
        if step.kind == KEEP or (step.kind in (SUBSTITUTE, DELETE) and not on):
            out.append(source[step.source])
        elif step.kind in (SUBSTITUTE, INSERT) and on:
            out.append(target[step.target])
    return out


def _hunks(steps: Sequence[Step]) -> list[frozenset[int]]:
    hunks, current = [], []
    for index, step in enumerate(steps):
        if step.kind == KEEP:
            if current:
                hunks.append(frozenset(current))
            current = []
        else:
            current.append(index)
    if current:
        hunks.append(frozenset(current))
    return hunks


def minimal_edit(editor: ValueEditor, judge: Judge, request: str, aligned: str, *,
                 rewrite: str | None = None, beam: int = 4, max_judge_calls: int = 256,
                 max_new_tokens: int = 96) -> EditResult:
    """Search the fewest token edits to `aligned` that `judge` calls a success.

    `rewrite` is the editor's rewrite when already computed. Judge calls are capped by
    `max_judge_calls`; the result reports how many were made.
    """
    if rewrite is None:
        rewrite = editor.edit([request], [aligned], max_new_tokens=max_new_tokens)[0]
    tokenizer = editor.target.tokenizer
    source, target = editor.format.answer_ids(aligned), editor.format.answer_ids(rewrite)
    steps = alignment(source, target)
    calls = 0

    def evaluate(candidates: list[frozenset[int]]) -> list[Judged]:
        """The candidates (within the judge budget) judged, successes first, then fewest
        edits, then most editor-likely."""
        nonlocal calls
        candidates = candidates[: max(0, max_judge_calls - calls)]
        if not candidates:
            return []
        ids = [apply_edits(source, target, steps, set(c)) for c in candidates]
        texts = [tokenizer.decode(i, skip_special_tokens=True) for i in ids]
        likelihood = editor.log_likelihood(request, aligned, ids).tolist()
        verdicts = judge.judge([request] * len(texts), texts)
        calls += len(texts)
        judged = [Judged(*row) for row in zip(candidates, texts, verdicts, likelihood,
                                               strict=True)]
        return sorted(judged, key=lambda j: (not j.verdict.success, len(j.edits), -j.likelihood))

    hunks = _hunks(steps)
    found: Judged | None = None
    frontier: dict[frozenset[int], frozenset[int]] = {frozenset(): frozenset()}  # hunks -> edits
    for _ in range(len(hunks)):
        children: dict[frozenset[int], frozenset[int]] = {}
        for state, edits in frontier.items():
            for index, hunk in enumerate(hunks):
                if index not in state:
                    children.setdefault(state | {index}, edits | hunk)
        keys = list(children)
        ids = [apply_edits(source, target, steps, set(children[k])) for k in keys]
        likelihood = editor.log_likelihood(request, aligned, ids).tolist()
        ranked = sorted(range(len(keys)), key=lambda i: -likelihood[i])[:beam]
        frontier = {keys[i]: children[keys[i]] for i in ranked}
        judged = evaluate(list(frontier.values()))
        if judged and judged[0].verdict.success:
            found = judged[0]
            break
        if calls >= max_judge_calls:
            break
    if found is None:
        label = judge.judge([request], [rewrite])[0].label
        return EditResult(False, [], aligned, label, 0, 0.0, calls + 1)

    while len(found.edits) > 1:  # shrink: drop one edit at a time while the judge agrees
        smaller = evaluate([found.edits - {index} for index in sorted(found.edits)])
        if not smaller or not smaller[0].verdict.success:
            break
        found = smaller[0]
    edits = []
    for index in sorted(found.edits):
        step = steps[index]
        old = tokenizer.decode([source[step.source]]) if step.kind != INSERT else None
        new = tokenizer.decode([target[step.target]]) if step.kind != DELETE else None
        edits.append(Edit(step.kind, step.source, old, new))
    length = max(len(source), len(apply_edits(source, target, steps, set(found.edits))), 1)
    return EditResult(True, edits, found.text, found.verdict.label, len(edits),
                      len(edits) / length, calls)
