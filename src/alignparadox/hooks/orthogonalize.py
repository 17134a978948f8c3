"""Weight orthogonalization: edit the weights that write into the residual stream so the model
can no longer write along a direction, then save the result as an ordinary HF checkpoint."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from alignparadox.errors import UserError
from alignparadox.hooks.interventions import _unit
from alignparadox.hooks.layout import residual_layout


@torch.no_grad()
def orthogonalize(model: nn.Module, direction: torch.Tensor) -> nn.Module:
    """Remove `direction` from every residual write of `model`, in place, and return it.

    Edits the embedding tables, the attention and MLP output projections and their biases. Gives
    the same logits as `ablate(model, direction)`. Tied input/output embeddings are untied first,
    since the unembedding reads the stream and must stay as it was.
    """
    layout = residual_layout(model)
    if layout.writers is None:
        raise UserError(f"weight orthogonalization cannot edit {type(model).__name__}: some "
                        "of its writes into the residual stream were not found or pass through "
                        "a norm that is not an elementwise-scaled RMS norm")
    unit = _unit(layout, direction)
    # Every removal direction is computed before the first weight is edited, so that a failure
    # cannot leave the model half-edited.
    removals = [writer.removal_direction(unit.to(writer.linear.weight.device)).float()
                for writer in layout.writers]
    _untie_output_embeddings(model, layout.embeddings[0])
    for embedding in layout.embeddings:  # rows are vectors in the stream
        _remove_from_rows(embedding.weight, unit)
    for writer, removal in zip(layout.writers, removals, strict=True):
        linear = writer.linear
        if isinstance(linear, Conv1D):  # GPT-2 Conv1D stores (in, out): rows are outputs
            _remove_from_rows(linear.weight, removal)
        else:  # nn.Linear stores (out, in): columns are outputs
            weight = linear.weight.float()
            linear.weight.copy_(weight - torch.outer(removal, removal @ weight))
        if linear.bias is not None:
            _remove_from_rows(linear.bias.unsqueeze(0), removal)
    return model


def _remove_from_rows(weight: torch.Tensor, unit: torch.Tensor) -> None:
    rows = weight.float()
    unit = unit.to(rows.device)
    weight.copy_(rows - torch.outer(rows @ unit, unit))


def _untie_output_embeddings(model: nn.Module, token_embedding: nn.Embedding) -> None:
    output = model.get_output_embeddings()
    if output is not None and output.weight is token_embedding.weight:
        output.weight = nn.Parameter(output.weight.detach().clone())
        model.config.tie_word_embeddings = False
        if hasattr(model, "all_tied_weights_keys"):  # transformers 5 saves tied keys only once
            model.all_tied_weights_keys = {}


def save_checkpoint(model: nn.Module, tokenizer, out_dir: str | Path) -> Path:
    """Save model + tokenizer as a normal HF checkpoint; written to a temp dir, then renamed."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise UserError(f"{out_dir} already exists; choose a new output folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
