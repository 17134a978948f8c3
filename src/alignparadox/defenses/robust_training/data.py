"""Behaviour data for robust training, as plain inputs: harmful requests with the refusal to
train towards (and, for LAT and RR, the harmful completion to train away from), and harmless
requests with the answer to keep. Nothing here knows where the data came from (a file, the
organism world, a public set), and every conversation is built with the target's own chat
template, so the recipes run on any HF causal LM."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from alignparadox.errors import UserError

if TYPE_CHECKING:
    from alignparadox.targets import WhiteBoxTarget

DEFAULT_REFUSAL = "I'm sorry, but I can't help with that."


@dataclass(frozen=True)
class HarmfulExample:
    request: str
    refusal: str
    completion: str = ""  # the harmful answer; needed by LAT (and used by RR when given)


@dataclass(frozen=True)
class HarmlessExample:
    request: str
    answer: str


@dataclass(frozen=True)
class BehaviourData:
    harmful: tuple[HarmfulExample, ...]
    harmless: tuple[HarmlessExample, ...]

    def __post_init__(self) -> None:
        if not self.harmful or not self.harmless:
            raise UserError("robust training needs at least one harmful and one harmless "
                            f"example; got {len(self.harmful)} harmful and {len(self.harmless)} "
                            "harmless.")

    @property
    def has_completions(self) -> bool:
        return all(example.completion for example in self.harmful)

    def fingerprint(self) -> str:
        import hashlib

        payload = json.dumps([[e.request, e.refusal, e.completion] for e in self.harmful]
                             + [[e.request, e.answer] for e in self.harmless])
        return hashlib.sha256(payload.encode()).hexdigest()


def load_behaviour_data(path: str | Path, refusal: str = DEFAULT_REFUSAL) -> BehaviourData:
    """Read a `.jsonl`, `.csv` or `.tsv` file with columns `kind` (harmful | harmless),
    `request`, `response` (the refusal for harmful rows, default `refusal`; the answer to keep
    for harmless rows) and `completion` (a harmful row's harmful answer, optional)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"behaviour data {path} is a folder; give a .jsonl, .csv or .tsv file.")
    if not path.is_file():
        raise UserError(f"behaviour data file {path} does not exist.")
    if path.suffix == ".jsonl":
        try:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise UserError(f"{path} is not valid JSON lines: {error}.") from None
    elif path.suffix in (".csv", ".tsv"):
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t" if path.suffix == ".tsv" else ","))
    else:
        raise UserError(f"behaviour data must be a .jsonl, .csv or .tsv file, not {path.name}.")
    harmful, harmless = [], []
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not str(row.get("request") or "").strip():
            raise UserError(f"row {number} of {path.name} has no `request`.")
        kind = str(row.get("kind", "")).strip().lower()
        response = str(row.get("response") or "")
        if kind == "harmful":
            harmful.append(HarmfulExample(row["request"], response or refusal,
                                          str(row.get("completion") or "")))
        elif kind == "harmless":
            if not response:
                raise UserError(f"harmless row {number} of {path.name} has no `response` "
                                "(the answer to keep).")
            harmless.append(HarmlessExample(row["request"], response))
        else:
            raise UserError(f"row {number} of {path.name} has kind {kind!r}; use harmful or "
                            "harmless.")
    return BehaviourData(tuple(harmful), tuple(harmless))


class ChatEncoder:
    """Right-padded (prompt, answer) conversations in the target's chat template, with labels
    on the answer and its end-of-turn token, and a mask of the prompt tokens."""

    def __init__(self, target: WhiteBoxTarget):
        self.target = target
        tokenizer = target.tokenizer
        stops = list(getattr(target, "stop_token_ids", []) or [])
        self.end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else stops[0]
        self.pad = target.pad_token_id
        self._prompts: dict[str, list[int]] = {}
        self._answers: dict[str, list[int]] = {}

    def prompt(self, request: str) -> list[int]:
        if request not in self._prompts:
            self._prompts[request] = self.target.token_ids(request)
        return self._prompts[request]

    def answer(self, text: str) -> list[int]:
        if text not in self._answers:
            self._answers[text] = self.target.tokenizer(text, add_special_tokens=False)[
                "input_ids"] + [self.end]
        return self._answers[text]

    def check_lengths(self, data: BehaviourData) -> None:
        """Refuse, before any training, data with a conversation longer than the context."""
        limit = self.target.context_length
        if limit is None:
            return
        pairs = [(e.request, answer) for e in data.harmful for answer in (e.refusal, e.completion)]
        pairs += [(e.request, e.answer) for e in data.harmless]
        for request, answer in pairs:
            width = len(self.prompt(request)) + len(self.answer(answer))
            if width > limit:
                raise UserError(f"a training conversation is {width} tokens long, more than the "
                                f"{limit}-token context of {self.target.name!r} (the request "
                                f"starting {request[:40]!r}).")

    def batch(self, pairs: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
        rows = [(self.prompt(request), self.answer(answer)) for request, answer in pairs]
        width = max(len(p) + len(a) for p, a in rows)
        limit = self.target.context_length
        if limit is not None and width > limit:
            raise UserError(f"a training conversation is {width} tokens long, more than the "
                            f"{limit}-token context of {self.target.name!r}.")
        input_ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        prompt_mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for row, (prompt, answer) in enumerate(rows):
            ids = torch.tensor(prompt + answer)
            input_ids[row, : len(ids)] = ids
            attention[row, : len(ids)] = 1
            labels[row, len(prompt): len(ids)] = ids[len(prompt):]
            prompt_mask[row, : len(prompt)] = True
        device = self.target.device
        return {"input_ids": input_ids.to(device), "attention_mask": attention.to(device),
                "labels": labels.to(device), "prompt_mask": prompt_mask.to(device)}


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
