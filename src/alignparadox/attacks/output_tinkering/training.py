"""Training the value editor: deterministic from a seed, resumable after a kill.

Two kinds of editor:
- base="small:TARGET": a small Llama built from a config on the tokenizer of any target
  (folder, Hub id, organism:NAME), all weights trained; a few hundred steps on CPU take well
  under a minute.
- base=<any HF causal LM: folder, Hub id or provider target>: LoRA adapters (peft) on that
  model, merged into the weights when training ends, so the saved editor is a plain checkpoint.

The batch of every step is a pure function of (seed, step), and every `checkpoint_every` steps
the trainable weights, optimizer state, RNG state and step are written to one file, atomically
(temporary file, then rename). A killed run started again with the same pairs and config resumes
from that file and ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from alignparadox.attacks.output_tinkering.editor import (
    EDITOR_FORMAT,
    METADATA_FILE,
    EditorFormat,
    ValueEditor,
)
from alignparadox.attacks.output_tinkering.pairs import EditPair, pairs_hash
from alignparadox.errors import UserError

SMALL_PREFIX = "small:"


def small_editor_tokenizer(base: str):
    """The tokenizer of a small editor's base ("small:TARGET"), or None for a LoRA base."""
    if not base.startswith(SMALL_PREFIX):
        return None
    from transformers import AutoTokenizer

    from alignparadox.targets.providers import provider_for

    spec = base[len(SMALL_PREFIX):]
    found = provider_for(spec)
    return AutoTokenizer.from_pretrained(found[0].resolve(found[1]) if found else spec)
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class EditorConfig:
    """Everything that determines a trained editor's weights (with the pairs)."""

    base: str  # "small:TARGET" (a small Llama on TARGET's tokenizer) or a model for LoRA
    seed: int = 0
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_share: float = 0.1
    checkpoint_every: int = 50
    # The organism-sized editor.
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 256
    context_length: int = 256
    # LoRA adapters, for any other base.
    lora_rank: int = 8
    lora_alpha: int = 16

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "hidden_size", "layers", "heads",
                     "intermediate_size", "context_length", "lora_rank"):
            if getattr(self, name) < 1:
                raise UserError(f"editor setting {name} must be at least 1, "
                                f"got {getattr(self, name)}.")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise UserError(f"learning rate must be a positive number, got {self.learning_rate}.")
        if self.checkpoint_every < 0:
            raise UserError("checkpoint_every must be 0 (never) or a positive number of steps.")

    def fingerprint(self, pairs: Sequence[EditPair]) -> str:
        """What a checkpoint must match to be resumed (checkpoint_every may change)."""
        settings = {k: v for k, v in asdict(self).items() if k != "checkpoint_every"}
        payload = json.dumps({"config": settings, "pairs": pairs_hash(pairs)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


def _new_model(config: EditorConfig):
    """(model, tokenizer, lora) for the config's base, initialised from config.seed."""
    torch.manual_seed(config.seed)
    tokenizer = small_editor_tokenizer(config.base)
    if tokenizer is not None:
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=config.hidden_size,
            num_hidden_layers=config.layers, num_attention_heads=config.heads,
            num_key_value_heads=config.heads, intermediate_size=config.intermediate_size,
            max_position_embeddings=config.context_length, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False))
        return model, tokenizer, False
    from peft import LoraConfig, get_peft_model

    from alignparadox.targets import open_target

    target = open_target(config.base)
    torch.manual_seed(config.seed)
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(target.model, lora)
    # Adapters train in float32 even on a half-precision base.
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    return model, target.tokenizer, True


def _context_length(model, config: EditorConfig) -> int:
    text_config = model.config.get_text_config()
    value = getattr(text_config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else config.context_length


def _encode(pairs: Sequence[EditPair], tokenizer, context: int) -> list[tuple[list[int], int]]:
    if not pairs:
        raise UserError("there are no pairs to train the editor on.")
    editor_format = EditorFormat(tokenizer)
    examples = []
    for number, pair in enumerate(pairs, 1):
        ids, start = editor_format.example(pair.request, pair.aligned, pair.misaligned)
        if len(ids) > context:
            raise UserError(f"pair {number} is {len(ids)} tokens long with its request, more "
                            f"than the editor's {context}-token context.")
        examples.append((ids, start))
    return examples


def _batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Indices of step `step` (1-based): consecutive slices of per-epoch seeded permutations."""
    first = (step - 1) * batch_size
    orders: dict[int, list[int]] = {}
    indices = []
    for position in range(first, first + batch_size):
        epoch, offset = divmod(position, n)
        if epoch not in orders:
            orders[epoch] = list(range(n))
            random.Random(f"{seed}/{epoch}").shuffle(orders[epoch])
        indices.append(orders[epoch][offset])
    return indices


def _collate(examples: list[tuple[list[int], int]], pad: int, device) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, (ids, start) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        labels[row, start: len(ids)] = torch.tensor(ids[start:])
    return {"input_ids": input_ids.to(device), "attention_mask": attention.to(device),
            "labels": labels.to(device)}


def _learning_rate(config: EditorConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    warmup = max(1, round(config.warmup_share * config.steps))
    if step <= warmup:
        return config.learning_rate * step / warmup
    progress = (step - warmup) / max(1, config.steps - warmup)
    return config.learning_rate * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def _trainable(model) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(path: Path, step: int, fingerprint: str, model, optimizer,
                     losses: list[float]) -> None:
    state = {
        "step": step, "fingerprint": fingerprint, "losses": losses,
        "weights": {name: p.detach().cpu().clone() for name, p in _trainable(model).items()},
        "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
    }
    handle, temporary = tempfile.mkstemp(prefix=".checkpoint-", dir=path.parent)
    with os.fdopen(handle, "wb") as out:
        torch.save(state, out)
    os.replace(temporary, path)


def _load_checkpoint(path: Path, fingerprint: str, model, optimizer) -> tuple[int, list[float]]:
    state = torch.load(path, weights_only=True)  # tensors and plain containers only: no pickle
    if state["fingerprint"] != fingerprint:
        raise UserError(f"{path.parent} holds a checkpoint of different pairs or settings; "
                        "delete it or train into another folder.")
    parameters = _trainable(model)
    with torch.no_grad():
        for name, value in state["weights"].items():
            parameters[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return state["step"], state["losses"]


def fit_editor(pairs: Sequence[EditPair], config: EditorConfig, *,
               checkpoint_dir: Path | None = None, progress: bool = True,
               description: str = "training value editor"):
    """Train an editor on `pairs`; returns (model, tokenizer, mean loss of the last steps).

    With `checkpoint_dir`, state is checkpointed there and a matching checkpoint is resumed.
    LoRA adapters are merged into the returned model.
    """
    with torch.random.fork_rng():
        model, tokenizer, lora = _new_model(config)
        examples = _encode(pairs, tokenizer, _context_length(model, config))
        if checkpoint_dir is not None:  # only once the pairs are known to be trainable
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
        device = next(model.parameters()).device
        optimizer = torch.optim.AdamW(_trainable(model).values(), lr=config.learning_rate,
                                      weight_decay=0.01)
        fingerprint = config.fingerprint(pairs)
        checkpoint = checkpoint_dir / CHECKPOINT_FILE if checkpoint_dir else None
        start, losses = 0, []
        if checkpoint is not None and checkpoint.is_file():
            start, losses = _load_checkpoint(checkpoint, fingerprint, model, optimizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        model.train()
        columns = (TextColumn("{task.description}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total}"),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn())
        with Progress(*columns, disable=not progress, transient=True) as bar:
            task = bar.add_task(description, total=config.steps, completed=start, info="")
            for step in range(start + 1, config.steps + 1):
                for group in optimizer.param_groups:
                    group["lr"] = _learning_rate(config, step)
                indices = _batch_indices(len(examples), config.batch_size, config.seed, step)
                loss = model(**_collate([examples[i] for i in indices], pad, device)).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(_trainable(model).values(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                bar.update(task, completed=step, info=f"loss {losses[-1]:.3f}")
                if checkpoint is not None and config.checkpoint_every and (
                        step % config.checkpoint_every == 0 or step == config.steps):
                    _save_checkpoint(checkpoint, step, fingerprint, model, optimizer, losses)
    model.eval()
    if lora:
        model = model.merge_and_unload()
    tail = losses[-10:]
    return model, tokenizer, sum(tail) / len(tail)


def train_editor(pairs: Sequence[EditPair], out_dir: str | Path,
                 config: EditorConfig, *, progress: bool = True) -> Path:
    """Train an editor and save it to `out_dir` (a new folder, complete or absent).

    Training state lives in a sibling folder `.<name>.training` until the editor is saved, so a
    killed run leaves no half-written editor and the same call resumes it.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir} already exists and is not empty; choose a new folder.")
    work = out_dir.parent / f".{out_dir.name}.training"  # made by fit_editor
    model, tokenizer, final_loss = fit_editor(pairs, config, checkpoint_dir=work,
                                              progress=progress)
    staging = Path(tempfile.mkdtemp(prefix="editor-", dir=work))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / METADATA_FILE).write_text(json.dumps({
        "format": EDITOR_FORMAT, "config": asdict(config), "pairs": len(pairs),
        "pairs_sha256": pairs_hash(pairs), "final_loss": final_loss}, indent=2))
    if out_dir.exists():
        out_dir.rmdir()
    staging.rename(out_dir)
    shutil.rmtree(work)
    return out_dir


def in_memory_editor(pairs: Sequence[EditPair], config: EditorConfig, *,
                     progress: bool = False, name: str = "editor") -> ValueEditor:
    """Train an editor without saving it (for measurements that train many)."""
    from alignparadox.targets import WhiteBoxTarget

    model, tokenizer, final_loss = fit_editor(pairs, config, progress=progress,
                                              description=f"training {name}")
    metadata = {"format": EDITOR_FORMAT, "config": asdict(config), "pairs": len(pairs),
                "pairs_sha256": pairs_hash(pairs), "final_loss": final_loss}
    return ValueEditor(WhiteBoxTarget(model, tokenizer, name), metadata)
