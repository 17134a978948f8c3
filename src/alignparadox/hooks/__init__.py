"""Architecture-generic residual-stream access for Hugging Face causal LMs.

    with capture(model, layers=[4, 8], positions=-1) as acts:
        model(**batch)                      # acts[8]: (batch, 1, d_model)
    with add_vectors(model, {8: 4.0 * d}, positions="generated"):
        model.generate(**batch)             # steered at every generated token, KV cache on
    with ablate(model, d):
        model(**batch)                      # no component along d anywhere in the stream
    save_checkpoint(orthogonalize(model, d), tokenizer, "out/")  # the same edit, in the weights

Layer l is the stream entering block l (`output_hidden_states[l]`): 0 = embeddings, L = the last
block's output before the final norm.

Exact, or refused: a probe forward pass (`residual_layout`, once per model) finds what writes
into the stream and checks that projecting those writes removes the direction from every block
boundary and from the stream each sublayer reads mid-block, and that editing their weights gives
the same logits. Where it cannot show that (post-LayerNorm blocks, elementwise gates, a norm after
the embeddings or after a sublayer), the intervention raises a UserError naming the architecture
and the reason, before any hook is placed or weight edited.
"""

from alignparadox.hooks.interventions import (
    ablate,
    add_vectors,
    capture,
    check_layer,
    collect_activations,
    next_token_logits,
    tokenize_batches,
)
from alignparadox.hooks.layout import Edit, ResidualLayout, Writer, residual_layout
from alignparadox.hooks.orthogonalize import orthogonalize, save_checkpoint

__all__ = [
    "Edit",
    "ResidualLayout",
    "Writer",
    "ablate",
    "add_vectors",
    "capture",
    "check_layer",
    "collect_activations",
    "next_token_logits",
    "orthogonalize",
    "residual_layout",
    "save_checkpoint",
    "tokenize_batches",
]
