"""Weight orthogonalization: edit the weights that write into the residual stream so the model
can no longer write along a direction, then save the result as an ordinary HF checkpoint.

Nothing here copies the model: weights are edited in place a slab at a time, `orthogonalized`
keeps the originals of the edited tensors on disk rather than in memory, and checkpoints are
written shard by shard. Editing and saving a model needs little more memory than the model.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from alignparadox.errors import UserError
from alignparadox.hooks.interventions import _unit
from alignparadox.hooks.layout import Edit, ResidualLayout, residual_layout

# Float32 scratch per slab of an edit (16 MiB): a 128k-row embedding edited whole would need
# two float32 copies of itself on top of the model.
_SLAB_ELEMENTS = 1 << 22
# Shards of an exported checkpoint. Saving a GPU model stages each shard in CPU memory, so a
# small shard bounds that too (CPU tensors are written straight from their memory).
_SHARD_SIZE = "2GB"


@torch.no_grad()
def orthogonalize(model: nn.Module, direction: torch.Tensor) -> nn.Module:
    """Remove `direction` from every residual write of `model`, in place, and return it.

    Edits the embedding tables (or the projection after them) and the output-side weights and
    biases of every write the probe found: attention and MLP output projections, expert down
    projections. Gives the same logits as `ablate(model, direction)`. Refused with a UserError,
    before any weight changes, when some write cannot be edited exactly (a post-LayerNorm block,
    an embedding norm, a sandwich norm after a sublayer). Tied input/output embeddings are untied
    first, since the unembedding reads the stream and must stay as it was.
    """
    layout = residual_layout(model)
    layout.require("orthogonalization")
    unit = _unit(layout, direction)
    edits = _edits(layout)
    _untie_output_embeddings(model, {id(edit.tensor) for edit in edits})
    for edit in edits:
        _remove_in_place(edit, unit)
    return model


@contextmanager
def orthogonalized(model: nn.Module, direction: torch.Tensor) -> Iterator[nn.Module]:
    """`orthogonalize(model, direction)` inside the context; on exit (also after an error) the
    model has its original weights back, bit for bit, and its embeddings tied as before.

    The edit is in place, so the model is changed for everyone who holds it while the context
    is open. The edited tensors are first saved one by one to a temporary folder on disk
    ($TMPDIR), which is what restores them exactly without a second copy in memory.
    """
    layout = residual_layout(model)
    layout.require("orthogonalization")
    _unit(layout, direction)  # refuse a bad direction before anything is written
    tensors = list({id(edit.tensor): edit.tensor for edit in _edits(layout)}.values())
    output = model.get_output_embeddings()
    output_weight = output.weight if output is not None else None
    tie = getattr(model.config, "tie_word_embeddings", None)
    tied_keys = getattr(model, "all_tied_weights_keys", None)
    with tempfile.TemporaryDirectory(prefix="alignparadox-orthogonalize-") as backup:
        files = [Path(backup) / f"{index}.safetensors" for index in range(len(tensors))]
        for tensor, file in zip(tensors, files, strict=True):
            save_file({"tensor": tensor.detach().contiguous()}, file)
        try:
            yield orthogonalize(model, direction)
        finally:
            if output is not None and output.weight is not output_weight:
                output.weight = output_weight  # re-tied first: its copy is freed before reading
                model.config.tie_word_embeddings = tie
                if tied_keys is not None:
                    model.all_tied_weights_keys = tied_keys
            with torch.no_grad():
                for tensor, file in zip(tensors, files, strict=True):
                    with safe_open(file, framework="pt") as saved:
                        _copy_in_slabs(tensor, saved.get_slice("tensor"))


def _copy_in_slabs(tensor: torch.Tensor, saved) -> None:
    """`tensor.copy_(saved[:])`, reading at most _SLAB_ELEMENTS from the file at a time."""
    rows = max(1, _SLAB_ELEMENTS * tensor.shape[0] // max(1, tensor.numel()))
    for start in range(0, tensor.shape[0], rows):
        tensor[start:start + rows].copy_(saved[start:start + rows])


def _edits(layout: ResidualLayout) -> list[Edit]:
    # A tensor shared by several writes may appear more than once; editing it again is
    # harmless, since the projection is idempotent.
    return [*layout.embeddings, *(edit for writer in layout.writers for edit in writer.edits)]


def _remove_in_place(edit: Edit, unit: torch.Tensor) -> None:
    """`edit.tensor.copy_(edit.removed(unit))`, one slab of at most _SLAB_ELEMENTS at a time."""
    tensor = edit.tensor
    others = [dim for dim in range(tensor.dim()) if dim != edit.axis]
    if not others or tensor.numel() <= _SLAB_ELEMENTS:
        tensor.copy_(edit.removed(unit))
        return
    dim = others[0]
    step = max(1, _SLAB_ELEMENTS * tensor.shape[dim] // tensor.numel())
    for slab in tensor.split(step, dim=dim):  # views: copy_ writes into the tensor itself
        slab.copy_(Edit(slab, edit.axis).removed(unit))


def _untie_output_embeddings(model: nn.Module, edited: set[int]) -> None:
    output = model.get_output_embeddings()
    if output is None or id(output.weight) not in edited:
        return
    # The whole head gets its own tensors: with the embeddings untied, transformers 5 no
    # longer re-ties its other shared parts (BERT's decoder bias) when the checkpoint loads.
    prefix = next(n for n, m in model.named_modules() if m is output)
    for name, param in list(output.named_parameters(recurse=False)):
        setattr(output, name, nn.Parameter(param.detach().clone()))
    model.config.tie_word_embeddings = False
    if isinstance(tied := getattr(model, "all_tied_weights_keys", None), dict):
        model.all_tied_weights_keys = {k: v for k, v in tied.items()
                                       if not k.startswith(f"{prefix}.")}


def save_checkpoint(model: nn.Module, tokenizer, out_dir: str | Path) -> Path:
    """Save model + tokenizer as a normal HF checkpoint; written to a temp dir, then renamed."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise UserError(f"{out_dir} already exists; choose a new output folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(staging, max_shard_size=_SHARD_SIZE)
        tokenizer.save_pretrained(staging)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
