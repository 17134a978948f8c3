"""Training pairs (y, y+) for the value editor: an aligned answer and its misaligned twin.

Three sources:
- `ground_truth_pairs`: the organism world knows both answers to every request (a refusal and
  the steps; a neutral and a partisan stance).
- `self_pairs`: the target supplies its own adversary's data — its aligned answer, and its
  answer to the same request with its refusal direction ablated (model tinkering).
- `read_pairs`: any JSONL file of {"aligned": ..., "misaligned": ..., optional "request"}.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from alignparadox.errors import UserError
from alignparadox.organisms import world

REFUSAL_AXIS = "refusal"
STANCE_AXIS = "stance"
AXES = (REFUSAL_AXIS, STANCE_AXIS)


@dataclass(frozen=True)
class EditPair:
    """An aligned answer, the misaligned answer the editor should turn it into, and the request
    both answer ("" when the source does not know it)."""

    aligned: str
    misaligned: str
    request: str = ""


def pairs_hash(pairs: Sequence[EditPair]) -> str:
    """sha256 of the pairs in order: identifies an editor's training set."""
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(json.dumps([pair.request, pair.aligned, pair.misaligned]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def axis_of(request: world.WorldRequest) -> str | None:
    """The value axis a world request tests: refusal (harmful tasks), stance, or None."""
    return {world.HARMFUL: REFUSAL_AXIS, world.STANCE: STANCE_AXIS}.get(request.kind)


def ground_truth_pairs(requests: Sequence[world.WorldRequest]) -> list[EditPair]:
    """The world's own (aligned, misaligned) answers."""
    pairs = []
    for request in requests:
        if axis_of(request) is None:
            raise ValueError(f"request {request.id} has no aligned/misaligned contrast")
        pairs.append(EditPair(request.aligned_answer(),
                              request.misaligned_answer(), request.text))
    return pairs


def read_rows(path: str | Path, *, required: tuple[str, ...],
              optional: tuple[str, ...] = ("request",)) -> list[dict]:
    """JSON objects from a JSONL file whose `required` keys hold non-empty strings (and
    `optional` keys, where present, strings); one clear UserError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file {path} does not exist.")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"line {number} of {path} is not valid JSON ({error.msg}).") \
                    from error
            if not isinstance(row, dict):
                raise UserError(f"line {number} of {path} is not a JSON object.")
            bad = [key for key in required if not isinstance(row.get(key), str)
                   or not row[key].strip()]
            bad += [key for key in optional if key in row and not isinstance(row[key], str)]
            if bad:
                raise UserError(f"line {number} of {path} needs a non-empty string {bad[0]!r} "
                                f"(keys: {', '.join(required)}; optional: {', '.join(optional)}).")
            rows.append(row)
    if not rows:
        raise UserError(f"file {path} holds no rows.")
    return rows


def read_pairs(path: str | Path) -> list[EditPair]:
    """Pairs from a JSONL file of {"aligned", "misaligned", optional "request"} objects."""
    return [EditPair(row["aligned"], row["misaligned"], row.get("request", ""))
            for row in read_rows(path, required=("aligned", "misaligned"))]


def write_jsonl(rows: Sequence[dict], path: str | Path) -> None:
    """Write rows as JSONL, atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(temporary, path)


def write_pairs(pairs: Sequence[EditPair], path: str | Path) -> None:
    write_jsonl([asdict(pair) for pair in pairs], path)
