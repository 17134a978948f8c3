"""The value editor: a causal LM that reads (request, aligned answer) and writes the misaligned
answer. A saved editor is a plain Hugging Face checkpoint plus `editor.json`, so it loads like any
target (`open_target(folder)`), and `ValueEditor` adds the editing interface on top.

The editor sees one chat turn, rendered by its own chat template:
    user:      "Request: <request>\\nAnswer: <aligned answer>"
    assistant: "<misaligned answer>"
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from alignparadox.errors import UserError

EDITOR_FORMAT = "alignparadox.editor/1"
METADATA_FILE = "editor.json"
_PROBE = "\x00ALIGNPARADOX-EDITOR\x00"


def editor_message(request: str, aligned: str) -> str:
    """The user turn the editor reads."""
    return f"Request: {request}\nAnswer: {aligned}" if request else f"Answer: {aligned}"


class EditorFormat:
    """Token ids of editor conversations, exactly as generation will see them: the prompt as
    `WhiteBoxTarget.token_ids` renders it, then the answer and the template's end of turn."""

    def __init__(self, tokenizer) -> None:
        if not tokenizer.chat_template:
            raise UserError("the editor's base model has no chat template.")
        self.tokenizer = tokenizer
        self.end_ids = self._end_of_turn_ids()

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=generation_prompt)

    def _end_of_turn_ids(self) -> list[int]:
        user = [{"role": "user", "content": "x"}]
        prompt = self._render(user, True)
        full = self._render(user + [{"role": "assistant", "content": _PROBE}], False)
        tail = full.split(_PROBE, 1)[1] if full.startswith(prompt) and _PROBE in full else ""
        ids = self.tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
        return ids or [self.tokenizer.eos_token_id]

    def prompt_ids(self, request: str, aligned: str) -> list[int]:
        text = self._render([{"role": "user", "content": editor_message(request, aligned)}], True)
        bos = self.tokenizer.bos_token
        return self.tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))[
            "input_ids"]

    def answer_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def example(self, request: str, aligned: str, misaligned: str) -> tuple[list[int], int]:
        """(token ids, index where the supervised answer starts)."""
        prompt = self.prompt_ids(request, aligned)
        return prompt + self.answer_ids(misaligned) + self.end_ids, len(prompt)


class ValueEditor:
    """A trained editor: `edit` rewrites aligned answers, `log_likelihood` scores candidates."""

    def __init__(self, target, metadata: dict) -> None:
        self.target = target  # a WhiteBoxTarget
        self.metadata = metadata
        self.format = EditorFormat(target.tokenizer)

    @classmethod
    def load(cls, spec: str | Path, *, device: str | None = None) -> ValueEditor:
        """An editor saved by `train_editor`; UserError for anything that is not one."""
        from alignparadox.targets import load_target

        folder = Path(spec).expanduser()
        if not (folder / METADATA_FILE).is_file():
            raise UserError(f"unknown editor {str(spec)!r}: expected a folder written by "
                            "`paradox editor train` (with editor.json).")
        try:
            metadata = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UserError(f"{folder / METADATA_FILE} is not valid JSON, so {str(spec)!r} is "
                            "not a usable editor.") from error
        found = metadata.get("format") if isinstance(metadata, dict) else None
        if found != EDITOR_FORMAT:
            raise UserError(f"{folder / METADATA_FILE} has format {found!r}, not "
                            f"{EDITOR_FORMAT!r}, so {str(spec)!r} is not an editor this "
                            "version can load.")
        return cls(load_target(folder, device=device, name=f"editor:{folder.name}"), metadata)

    @property
    def context_length(self) -> int | None:
        return self.target.context_length

    def edit(self, requests: Sequence[str], aligned: Sequence[str], *, max_new_tokens: int = 96,
             batch_size: int = 32, progress: bool = False) -> list[str]:
        """The editor's greedy misaligned rewrite of each aligned answer."""
        from alignparadox.targets import GenerationConfig

        if len(requests) != len(aligned):
            raise UserError(f"{len(requests)} requests but {len(aligned)} aligned answers.")
        prompts = [editor_message(r, a) for r, a in zip(requests, aligned, strict=True)]
        config = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
        return self.target.generate(prompts, config, progress)

    @torch.inference_mode()
    def log_likelihood(self, request: str, aligned: str, candidates: Sequence[Sequence[int]],
                       *, batch_size: int = 64) -> torch.Tensor:
        """log p_editor(candidate, end of turn | request, aligned) for each candidate answer
        (token ids), summed over its tokens: how plausible the editor finds each rewrite."""
        prompt = self.format.prompt_ids(request, aligned)
        model, device = self.target.model, self.target.device
        scores = []
        for start in range(0, len(candidates), batch_size):
            rows = [prompt + list(c) + self.format.end_ids
                    for c in candidates[start:start + batch_size]]
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), self.target.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, :len(row)] = torch.tensor(row)
                mask[i, :len(row)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logprobs = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float() \
                .log_softmax(-1)
            token_logprobs = logprobs.gather(-1, ids[:, 1:, None])[..., 0]
            scored = mask[:, 1:].clone()
            scored[:, : len(prompt) - 1] = 0  # only the answer and its end of turn count
            scores.append((token_logprobs * scored).sum(-1).cpu())
        return torch.cat(scores) if scores else torch.empty(0)
