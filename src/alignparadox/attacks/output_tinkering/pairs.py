"""Training pairs (y, y+) for the value editor: an aligned answer and its misaligned twin.

Three sources:
- `edit_pairs`: a behaviour set's contrast pairs, on the refusal axis (a refusal and the
  compliance it replaces) and the value axis (e.g. a neutral and a partisan stance); the
  organism world supplies its own ground truth this way, a user a pairs file.
- `self_pairs` (steered.py): the target supplies its own adversary's data — its aligned answer,
  and its answer to the same request with its refusal direction ablated (model tinkering).
- `read_pairs`: any JSONL file of {"aligned": ..., "misaligned": ..., optional "request"}.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from alignparadox.datasets.behaviours import AXES, REFUSAL_AXIS, VALUE_AXIS, PairSet
from alignparadox.datasets.io import read_text, write_atomic
from alignparadox.errors import UserError

STANCE_AXIS = VALUE_AXIS
__all__ = ["AXES", "REFUSAL_AXIS", "STANCE_AXIS", "EditPair", "edit_pairs", "pairs_hash",
           "read_pairs", "read_rows", "write_jsonl", "write_pairs"]


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


def edit_pairs(pairs: PairSet) -> list[EditPair]:
    """A behaviour set's contrast pairs as editor training pairs."""
    return [EditPair(p.aligned, p.misaligned, p.request) for p in pairs]


def read_rows(path: str | Path, *, required: tuple[str, ...],
              optional: tuple[str, ...] = ("request",)) -> list[dict]:
    """JSON objects from a JSONL file whose `required` keys hold non-empty strings (and
    `optional` keys, where present, strings); one clear UserError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file {path} does not exist.")
    if not path.read_bytes().strip():
        raise UserError(f"file {path} holds no rows.")
    rows = []
    # Strict UTF-8, a byte-order mark dropped. Lines end at "\n" only: str.splitlines would
    # also split inside a JSON string holding a raw U+2028 (json.dumps writes it unescaped).
    for number, line in enumerate(read_text(path).split("\n"), 1):
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
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    write_atomic(Path(path), text.encode("utf-8"))  # a failed write leaves no temporary file


def write_pairs(pairs: Sequence[EditPair], path: str | Path) -> None:
    write_jsonl([asdict(pair) for pair in pairs], path)
