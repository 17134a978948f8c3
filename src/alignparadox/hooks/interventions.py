"""Read, add to and ablate the residual stream of any HF causal LM, as context managers.

Layer numbering follows `output_hidden_states`: layer `l` is the residual stream *entering*
decoder block `l`, so 0 is the embedding output and `L` (the number of blocks) is the last block's
output, taken before the final norm (HF's `hidden_states[L]` is after it).

Positions for reading are negative and counted from each row's last real token (-1 = last), using
the attention mask, so left and right padding both work. Every context manager removes all of its
hooks on exit, also when the body raises.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass

import torch
from rich.progress import track
from torch import nn
from transformers.cache_utils import Cache

from alignparadox.batching import BackOff
from alignparadox.errors import UserError
from alignparadox.hooks.layout import ResidualLayout, residual_layout

Positions = int | Sequence[int]
SteerPositions = str | int  # "all" | "prompt" | "generated" | k (the last k prompt tokens)


# ---------------------------------------------------------------------------------------------
# Per-forward bookkeeping: attention mask, cache offset and prompt length of the current call.


@dataclass
class _ForwardState:
    mask: torch.Tensor | None = None  # 2-D, may cover cached tokens too
    offset: int = 0  # tokens already in the KV cache
    length: int = 0  # tokens in this call
    prompt_length: int | None = None
    prompt_ids: torch.Tensor | None = None
    _indices: torch.Tensor | None = None  # row_indices of this call, computed once

    def update(self, args: tuple, kwargs: dict) -> None:
        self._indices = None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        self.length = (input_ids if input_ids is not None else embeds).shape[1]
        mask = kwargs.get("attention_mask")
        self.mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        cache = next((v for v in kwargs.values() if isinstance(v, Cache)), None)
        self.offset = cache.get_seq_length() if cache is not None else 0
        # A call with an empty cache starts a new prompt unless it re-feeds the current prompt
        # plus generated tokens, which is what `generate(use_cache=False)` does at every step.
        if self.prompt_length is None or (
            self.offset == 0 and not self._continues_prompt(input_ids)
        ):
            self.prompt_length = self.length
            self.prompt_ids = input_ids

    def _continues_prompt(self, input_ids: torch.Tensor | None) -> bool:
        prompt = self.prompt_ids
        return (
            prompt is not None and input_ids is not None
            and input_ids.shape[0] == prompt.shape[0] and input_ids.shape[1] > prompt.shape[1]
            and torch.equal(input_ids[:, : prompt.shape[1]], prompt)
        )

    def row_indices(self, positions: torch.Tensor, device: torch.device) -> torch.Tensor:
        """(B, P) column indices of `positions` counted back from each row's last real token."""
        if self._indices is None:
            self._indices = self._row_indices(positions, device)
        return self._indices

    def _row_indices(self, positions: torch.Tensor, device: torch.device) -> torch.Tensor:
        if self.mask is None:
            last = torch.full((1,), self.length - 1, device=device)
        else:
            mask = self.mask[:, -self.length :].to(device)
            last = self.length - 1 - mask.flip(-1).int().argmax(-1)
        index = last[:, None] + 1 + positions.to(device)[None, :]
        real = index >= 0
        if self.mask is not None:
            real &= mask.gather(1, index.clamp(min=0)).bool()
        if not bool(real.all()):
            raise UserError(f"a prompt has fewer than {-int(positions.min())} tokens, "
                            "so the requested positions do not exist")
        return index


def _track(model: nn.Module, stack: ExitStack) -> _ForwardState:
    state = _ForwardState()

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        state.update(args, kwargs)

    stack.callback(model.register_forward_pre_hook(pre_hook, with_kwargs=True).remove)
    return state


# ---------------------------------------------------------------------------------------------
# Hooks on the stream: layer 0 is block 0's input, layer l > 0 is block l-1's output.


def _on_layer(layout: ResidualLayout, layer: int, edit, stack: ExitStack) -> None:
    """Run `edit(hidden)` on the stream at `layer`; a tensor it returns replaces the stream."""
    if layer == 0:
        where = layout.stream_argument  # the position or keyword the probe saw the stream at

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict):
            if isinstance(where, int) and len(args) > where:
                new = edit(args[where])
                return None if new is None else ((*args[:where], new, *args[where + 1:]), kwargs)
            new = edit(kwargs[where])
            return None if new is None else (args, {**kwargs, where: new})

        handle = layout.layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        def hook(module: nn.Module, args: tuple, output):
            # Decoder layers return a tensor in transformers 5 and a tuple in older versions.
            if isinstance(output, torch.Tensor):
                return edit(output)
            new = edit(output[0])
            return None if new is None else (new, *output[1:])

        handle = layout.layers[layer - 1].register_forward_hook(hook)
    stack.callback(handle.remove)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_layer(layout: ResidualLayout, layer: int) -> int:
    """`layer` as an int, or a UserError when it is not a layer of this model's stream."""
    if not _is_int(layer) or not 0 <= layer <= layout.n_layers:
        raise UserError(f"layer {layer!r} is out of range: this model's residual stream has "
                        f"layers 0..{layout.n_layers} (0 = embeddings, {layout.n_layers} = last "
                        "block output)")
    return int(layer)


def _check_vector(layout: ResidualLayout, vector: torch.Tensor, what: str) -> torch.Tensor:
    vector = torch.as_tensor(vector)
    if vector.shape != (layout.d_model,):
        raise UserError(f"the {what} has shape {tuple(vector.shape)} but this model's residual "
                        f"stream has width {layout.d_model}")
    if not bool(torch.isfinite(vector).all()):
        raise UserError(f"the {what} contains non-finite values (NaN or infinity)")
    return vector


def _check_positions(positions: Positions) -> torch.Tensor:
    values = [positions] if _is_int(positions) else list(positions)
    if not values or any(not _is_int(p) or p >= 0 for p in values):
        raise UserError(f"positions {positions!r} must be negative integers counted from the end "
                        "of each prompt (-1 is the last token)")
    return torch.tensor([int(p) for p in values], dtype=torch.long)


def _to_stream(layout: ResidualLayout, layer: int, vector: torch.Tensor) -> torch.Tensor:
    """`vector` on the device and in the dtype of the block that carries `layer`, moved once."""
    weight = next(layout.layers[max(layer - 1, 0)].parameters())
    return vector.to(device=weight.device, dtype=weight.dtype)


def _project_out(hidden: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    unit = unit.to(device=hidden.device, dtype=hidden.dtype)  # a no-op when already there
    return hidden - (hidden @ unit).unsqueeze(-1) * unit


# ---------------------------------------------------------------------------------------------
# Public context managers.


class _Recorder:
    """Keeps the stream at some layers and positions; can stop the forward after the last one."""

    def __init__(self, model: nn.Module, layers: Iterable[int], positions: Positions | None,
                 stack: ExitStack, *, stop_early: bool = False) -> None:
        self.layout = residual_layout(model)
        self.layout.require("stream")
        self.layers = sorted({check_layer(self.layout, layer) for layer in layers})
        if not self.layers:
            raise UserError("no layers were given to capture")
        self.positions = None if positions is None else _check_positions(positions)
        self.stop_at = self.layers[-1] if stop_early else None
        self.state = _track(model, stack)
        self.activations: dict[int, torch.Tensor] = {}
        for layer in self.layers:
            _on_layer(self.layout, layer, self._recorder(layer), stack)

    def _recorder(self, layer: int):
        def record(hidden: torch.Tensor) -> None:
            if self.positions is None:
                self.activations[layer] = hidden  # a reference: the model never edits it in place
            else:
                index = self.state.row_indices(self.positions, hidden.device)
                index = index.expand(hidden.shape[0], -1)
                self.activations[layer] = hidden.gather(
                    1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
            if layer == self.stop_at:
                raise _StopForward

        return record


class _StopForward(Exception):
    """Raised by a recorder after the last layer it needs, to skip the rest of the forward."""


@contextmanager
def capture(
    model: nn.Module, layers: Iterable[int], positions: Positions | None = None
) -> Iterator[dict[int, torch.Tensor]]:
    """Record the residual stream at `layers` during each forward pass inside the context.

    Yields a dict layer -> tensor, filled by the latest forward pass: (batch, seq, d_model) for
    `positions=None`, else (batch, len(positions), d_model) at the given negative positions.
    """
    with ExitStack() as stack:
        yield _Recorder(model, layers, positions, stack).activations


@contextmanager
def add_vectors(
    model: nn.Module, vectors: Mapping[int, torch.Tensor], positions: SteerPositions = "all"
) -> Iterator[None]:
    """Add `vectors[layer]` to the residual stream at each layer, on every forward pass inside.

    `positions`: "all" tokens, the "prompt" tokens, the "generated" tokens, or an int k for the
    last k prompt tokens. Prompt and generated tokens are told apart by absolute position (the
    KV-cache length plus the index in the call), so `generate` gives the same result with or
    without a KV cache. The prompt is the input of the first call made with an empty cache.
    """
    layout = residual_layout(model)
    layout.require("stream")
    named = positions in ("all", "prompt", "generated")
    if isinstance(positions, bool) or not (named or isinstance(positions, int) and positions > 0):
        raise UserError(f"steering positions {positions!r} must be 'all', 'prompt', 'generated' "
                        "or a positive number of last prompt tokens")
    checked = {
        check_layer(layout, layer): _check_vector(layout, vector, f"vector for layer {layer}")
        for layer, vector in vectors.items()
    }
    with ExitStack() as stack:
        state = _track(model, stack)
        for layer, vector in checked.items():
            _on_layer(layout, layer, _adder(_to_stream(layout, layer, vector), positions, state),
                      stack)
        yield


def _adder(vector: torch.Tensor, positions: SteerPositions, state: _ForwardState):
    def add(hidden: torch.Tensor) -> torch.Tensor | None:
        vec = vector.to(device=hidden.device, dtype=hidden.dtype)  # a no-op when already there
        if positions == "all":
            return hidden + vec
        prompt = state.prompt_length
        if positions == "prompt":
            start, stop = 0, prompt
        elif positions == "generated":
            start, stop = prompt, math.inf
        else:
            start, stop = prompt - positions, prompt
        # Columns of this call that fall in [start, stop) of the whole sequence.
        first = max(start - state.offset, 0)
        last = min(stop - state.offset, hidden.shape[1])
        if first >= last:
            return None
        if first == 0 and last == hidden.shape[1]:
            return hidden + vec
        delta = hidden.new_zeros(hidden.shape[1:])
        delta[first:last] = vec
        return hidden + delta

    return add


@contextmanager
def ablate(model: nn.Module, direction: torch.Tensor) -> Iterator[None]:
    """Project the unit `direction` out of the residual stream at every layer and position.

    The projection is applied to the stream entering block 0 and to the output of every module
    that writes into the stream (attention, MLP, expert mixture or mixer outputs, or the sandwich
    norm after them), so the stream has no component along `direction` anywhere: at every block
    boundary and wherever a sublayer reads it mid-block. The result equals that of
    `orthogonalize` where the weights can be edited. A model for which the probe cannot show the
    writes it found to account for the whole stream (post-LayerNorm blocks, elementwise gates)
    is refused with a UserError before any hook is placed.
    """
    layout = residual_layout(model)
    layout.require("ablation")
    unit = _unit(layout, direction)
    with ExitStack() as stack:
        moved = _to_stream(layout, 0, unit)
        _on_layer(layout, 0, lambda hidden: _project_out(hidden, moved), stack)
        # The embeddings too, for models that also read them outside the blocks (Gemma 3n's
        # per-layer inputs); then every write, where it enters the stream.
        writers = [*layout.embedding_writers, *(writer.module for writer in layout.writers)]
        for module in writers:
            # Moved to the output's device and dtype on first use (a sandwich norm may have no
            # weights to take them from).
            units: dict = {}

            def hook(module: nn.Module, args: tuple, output, units=units):
                write = output if isinstance(output, torch.Tensor) else output[0]
                key = (write.device, write.dtype)
                if key not in units:
                    units[key] = unit.to(device=write.device, dtype=write.dtype)
                projected = _project_out(write, units[key])
                return projected if write is output else (projected, *output[1:])

            stack.callback(module.register_forward_hook(hook).remove)
        yield


def _unit(layout: ResidualLayout, direction: torch.Tensor) -> torch.Tensor:
    direction = _check_vector(layout, direction, "direction").float()
    norm = direction.norm()
    if norm == 0:
        raise UserError("the direction is the zero vector")
    return direction / norm


# ---------------------------------------------------------------------------------------------
# Batched helpers over prompt sets.


def tokenize_batches(
    tokenizer, prompts: Sequence[str], batch_size: int, device: torch.device | str
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Yield (prompt indices, left-padded model inputs), grouping prompts of similar length.

    Prompts are complete model inputs (chat template already applied), so no special tokens are
    added here.
    """
    if not prompts:
        raise UserError("the prompt set is empty")
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    if any(len(ids) == 0 for ids in encoded):
        raise UserError("a prompt is empty after tokenization")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in indices)
        input_ids = torch.full((len(indices), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):
            input_ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            attention_mask[row, width - len(encoded[i]) :] = 1
        yield indices, {"input_ids": input_ids.to(device),
                        "attention_mask": attention_mask.to(device)}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _with_positions(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Position ids that skip left padding, as `generate` makes them, so that models with absolute
    # position embeddings (GPT-2) see a padded prompt exactly as an unpadded one.
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return {**batch, "position_ids": positions, "use_cache": False}


@torch.inference_mode()
def collect_activations(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    layers: Iterable[int],
    positions: Positions = -1,
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[int, torch.Tensor]:
    """Residual stream of all prompts: layer -> float32 CPU (n_prompts, n_positions, d_model).

    Runs each batch only up to the last requested layer.
    """
    layers = list(layers)
    batches = list(tokenize_batches(tokenizer, prompts, batch_size, _device(model)))
    chunks: dict[int, list[torch.Tensor]] = {}
    order: list[int] = []
    with ExitStack() as stack:
        recorder = _Recorder(model, layers, positions, stack, stop_early=True)
        back_off = BackOff("collecting activations")  # halves the batch on out-of-memory

        def forward(part: slice, inputs: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
            with suppress(_StopForward):  # the recorder ends the forward after its last layer
                model(**_with_positions({key: value[part] for key, value in inputs.items()}))
            return {layer: acts.float().cpu() for layer, acts in recorder.activations.items()}

        for indices, inputs in track(batches, description="activations", disable=not progress,
                                     transient=True):
            for part, acts in back_off.run(len(indices),
                                           lambda part, inputs=inputs: forward(part, inputs)):
                for layer, values in acts.items():
                    chunks.setdefault(layer, []).append(values)
                order.extend(indices[part])
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return {layer: torch.cat(parts)[inverse] for layer, parts in chunks.items()}


@torch.inference_mode()
def next_token_logits(
    model: nn.Module, tokenizer, prompts: Sequence[str], *, batch_size: int = 16,
    progress: bool = False,
) -> torch.Tensor:
    """Float32 CPU logits (n_prompts, vocab) of the token after each prompt, under active hooks."""
    rows: dict[int, torch.Tensor] = {}
    batches = list(tokenize_batches(tokenizer, prompts, batch_size, _device(model)))
    back_off = BackOff("computing next-token logits")  # halves the batch on out-of-memory

    def forward(part: slice, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = _with_positions({key: value[part] for key, value in inputs.items()})
        return model(**inputs, logits_to_keep=1).logits[:, -1].float().cpu()

    for indices, inputs in track(batches, description="logits", disable=not progress,
                                 transient=True):
        for part, logits in back_off.run(len(indices),
                                         lambda part, inputs=inputs: forward(part, inputs)):
            rows.update(zip(indices[part], logits, strict=True))
    return torch.stack([rows[i] for i in range(len(prompts))])
