"""Where the residual stream lives in a Hugging Face causal LM: decoder layers, final norm, writers.

Found by attribute names that the common architectures share, with a structural fallback, so that
the hooks work on any `AutoModelForCausalLM` whose decoder layers can be found. Nothing here
depends on the model class: only on `torch.nn.Module` structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from alignparadox.errors import UserError

# Paths of the decoder layer list, relative to the causal LM (llama/qwen2/mistral/gemma2/phi3,
# gpt2, gpt_neox, opt-style, mpt/falcon-style, bare).
_LAYER_PATHS = (
    "model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers",
    "transformer.layers", "transformer.blocks", "layers",
)
# Final norm names on the module that owns the layer list.
_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f")
# Modules inside a block whose output is added to the residual stream (first match wins).
_ATTENTION_WRITERS = (
    "self_attn.o_proj", "attn.c_proj", "attention.dense", "self_attention.dense",
    "self_attn.out_proj", "attn.out_proj",
)
_MLP_WRITERS = (
    "mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc_out", "mlp.fc2", "ffn.down_proj",
    "fc2",
)


@dataclass(frozen=True)
class Writer:
    """A linear map whose output is added to the residual stream, possibly through a norm.

    `norm` is set for post-norm ("sandwich") blocks such as Gemma 2, where the block adds
    `norm(linear(x))`: there an elementwise-scaled RMSNorm maps a write orthogonal to `s * d` onto
    one orthogonal to `d`, so that is the direction to remove from the linear's output. A
    mean-centring or biased post-norm has no such direction (`editable` is False).
    """

    linear: nn.Linear | Conv1D
    norm: nn.Module | None = None

    @property
    def editable(self) -> bool:
        """Whether removing one direction from `linear`'s output removes `d` from the write."""
        return self.norm is None or not (isinstance(self.norm, nn.LayerNorm)
                                         or getattr(self.norm, "bias", None) is not None)

    def removal_direction(self, direction: torch.Tensor) -> torch.Tensor:
        """Unit vector to remove from `linear`'s output so the write has no `direction` part."""
        if self.norm is None:
            return direction
        if not self.editable:
            raise UserError(f"a write through {type(self.norm).__name__} (a mean-centring or "
                            "biased norm) cannot be made orthogonal to a direction")
        probe = torch.ones(direction.shape[-1], dtype=direction.dtype, device=direction.device)
        # An RMS-style norm of a constant vector returns its elementwise scale (up to one factor).
        with torch.no_grad():
            scale = self.norm(probe.to(_param_dtype(self.norm))).to(direction.dtype)
        scaled = direction * scale
        return scaled / scaled.norm()


@dataclass(frozen=True)
class ResidualLayout:
    """The parts of a causal LM that read and write the residual stream."""

    layers: nn.ModuleList
    final_norm: nn.Module | None
    embeddings: tuple[nn.Embedding, ...]  # every embedding table added into the stream
    writers: tuple[Writer, ...] | None  # None when the writes cannot all be edited linearly
    d_model: int

    @property
    def n_layers(self) -> int:
        return len(self.layers)


def residual_layout(model: nn.Module) -> ResidualLayout:
    """Find the decoder layers, final norm, embeddings and residual writers of `model`."""
    path = next((p for p in _LAYER_PATHS if isinstance(_get(model, p), nn.ModuleList)), None)
    if path is not None:
        layers = _get(model, path)
        owner = _get(model, path.rpartition(".")[0]) if "." in path else model
    else:
        layers, owner = _longest_module_list(model)
    embeddings = _embeddings(model, owner)
    d_model = embeddings[0].embedding_dim
    return ResidualLayout(
        layers=layers,
        final_norm=_final_norm(owner, layers),
        embeddings=embeddings,
        writers=None if _has_embedding_norm(owner) else _writers(layers),
        d_model=d_model,
    )


def _get(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return reduce(getattr, path.split("."), root) if path else root
    except AttributeError:
        return None


def _longest_module_list(model: nn.Module) -> tuple[nn.ModuleList, nn.Module]:
    best: tuple[nn.ModuleList, nn.Module] | None = None
    for owner in model.modules():
        for child in owner.children():
            if isinstance(child, nn.ModuleList) and (best is None or len(child) > len(best[0])):
                best = (child, owner)
    if best is None or len(best[0]) == 0:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")
    return best


def _embeddings(model: nn.Module, owner: nn.Module) -> tuple[nn.Embedding, ...]:
    token = model.get_input_embeddings()
    # Learned position embeddings (GPT-2 `wpe`) also write into the stream.
    others = [
        child for child in owner.children()
        if isinstance(child, nn.Embedding) and child is not token
        and child.embedding_dim == token.embedding_dim
    ]
    return (token, *others)


def _final_norm(owner: nn.Module, layers: nn.ModuleList) -> nn.Module | None:
    for name in _FINAL_NORM_NAMES:
        if isinstance(module := getattr(owner, name, None), nn.Module):
            return module
    norms = [c for c in owner.children() if c is not layers and "norm" in type(c).__name__.lower()]
    return norms[-1] if norms else None


def _has_embedding_norm(owner: nn.Module) -> bool:
    # A norm between the embedding tables and block 0 (BLOOM) makes the first write nonlinear.
    return any("emb" in name and "norm" in name for name, _ in owner.named_children())


def _writers(layers: nn.ModuleList) -> tuple[Writer, ...] | None:
    writers: list[Writer] = []
    for block in layers:
        attention = next((m for p in _ATTENTION_WRITERS if (m := _get(block, p)) is not None), None)
        mlp = next((m for p in _MLP_WRITERS if (m := _get(block, p)) is not None), None)
        if not all(isinstance(m, nn.Linear | Conv1D) for m in (attention, mlp)):
            return None
        # Post-norm blocks (Gemma 2/3, OLMo 2) normalise each write before adding it.
        post_norm = getattr(block, "post_feedforward_layernorm", None) is not None
        writers.append(Writer(attention, block.post_attention_layernorm if post_norm else None))
        writers.append(Writer(mlp, block.post_feedforward_layernorm if post_norm else None))
    # One write that cannot be edited linearly makes the whole stream uneditable by weights.
    return tuple(writers) if all(writer.editable for writer in writers) else None


def _param_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype
