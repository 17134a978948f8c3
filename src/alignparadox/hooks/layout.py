"""Where the residual stream lives in a Hugging Face causal LM, and which modules write into it.

The decoder layers are found by attribute paths that the common architectures share, with a
structural fallback. Everything else is read off one probe forward pass on a few tokens, so that
nothing depends on the model class: the stream's width and the block argument that carries it,
the final norm, the modules whose outputs are added to the stream, and the weights behind them.
The probe also checks that the writes it found account for every block's output (a fixed
combination of the block input and the writes), which is what makes projecting them an exact
ablation. An intervention the probe cannot show to be exact is refused, with the reason, rather
than applied approximately.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import reduce

import torch
from torch import nn
from torch.func import functional_call
from transformers.pytorch_utils import Conv1D

from alignparadox.errors import UserError

# Paths of the decoder layer list, relative to the causal LM (llama/qwen2/mistral/gemma2/phi3,
# gpt2, gpt_neox, opt-style, mpt/falcon-style, multimodal wrappers, bare).
_LAYER_PATHS = (
    "model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers",
    "transformer.layers", "transformer.blocks", "model.language_model.layers",
    "language_model.model.layers", "layers",
)
# Layer lists of other modalities, never the text decoder's.
_NOT_TEXT = ("vision", "visual", "image", "audio", "speech")
_LINEAR = (nn.Linear, Conv1D)
# Width-d projections inside a sublayer that read the stream rather than write it.
_READ_NAMES = ("q_proj", "k_proj", "v_proj", "qkv", "query", "key", "gate", "router")
_PROBE_TOKENS = 6
_INTERVENTIONS = {
    "stream": "reading or steering the residual stream",
    "ablation": "directional ablation",
    "orthogonalization": "weight orthogonalization",
}


@dataclass(frozen=True)
class Edit:
    """Remove a direction from `tensor` along `axis`, the axis that indexes the stream's width."""

    tensor: nn.Parameter
    axis: int

    def removed(self, unit: torch.Tensor) -> torch.Tensor:
        """`tensor` with the `unit` component of each of its stream-width vectors removed."""
        moved = self.tensor.detach().float().movedim(self.axis, -1)
        unit = unit.to(device=moved.device, dtype=moved.dtype)
        result = moved - (moved @ unit).unsqueeze(-1) * unit
        return result.movedim(-1, self.axis).to(self.tensor.dtype)


@dataclass(frozen=True)
class Writer:
    """A module whose output is added to the residual stream (an out-projection, an expert
    mixture, or the "sandwich" norm after a sublayer, as in Gemma 2 and OLMo 2), and the weights
    that produce it: empty when they cannot be edited exactly, as for a norm, which rescales
    whatever it is given."""

    module: nn.Module
    edits: tuple[Edit, ...] = ()


@dataclass(frozen=True)
class ResidualLayout:
    """The parts of a causal LM that read and write the residual stream, as the probe found them.

    `refusals` maps an intervention ("stream", "ablation", "orthogonalization") to the reason it
    cannot be exact on this model; `require` turns that into a UserError.
    """

    layers: nn.ModuleList
    final_norm: nn.Module | None
    d_model: int
    architecture: str
    stream_argument: int | str = 0  # where block 0 takes the stream: a position or a keyword
    # The modules (token and position embeddings, a projection after them) whose outputs sum to
    # the stream entering block 0, when it is such a sum; and the weights behind them.
    embedding_writers: tuple[nn.Module, ...] = ()
    embeddings: tuple[Edit, ...] = ()
    writers: tuple[Writer, ...] = ()  # every write into the stream inside the blocks
    refusals: Mapping[str, str] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def require(self, intervention: str) -> None:
        """Raise a UserError naming the architecture when `intervention` cannot be exact here."""
        if (reason := self.refusals.get(intervention)) is not None:
            raise UserError(f"{_INTERVENTIONS[intervention]} cannot be exact on "
                            f"{self.architecture}: {reason}")


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def residual_layout(model: nn.Module) -> ResidualLayout:
    """Find the residual stream of `model` and check on a probe which interventions are exact.

    Probed once per model structure: the result is cached until a module is added or replaced.
    """
    key = tuple(map(id, model.modules()))
    cached = _CACHE.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    path = next((p for p in _LAYER_PATHS if isinstance(_get(model, p), nn.ModuleList)), None)
    layers = _get(model, path) if path is not None else _longest_module_list(model)
    layout = _probe(model, layers)
    _CACHE[model] = (key, layout)
    return layout


def _get(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return reduce(getattr, path.split("."), root) if path else root
    except AttributeError:
        return None


def _longest_module_list(model: nn.Module) -> nn.ModuleList:
    lists = [module for name, module in model.named_modules()
             if isinstance(module, nn.ModuleList) and len(module) > 0
             and not any(word in name.lower() for word in _NOT_TEXT)]
    if not lists:
        raise UserError(f"the residual stream of {type(model).__name__} cannot be found: it has "
                        "no list of decoder layers.")
    return max(lists, key=len)


# ---------------------------------------------------------------------------------------------
# The probe: one forward pass on a few tokens that records what every module reads and returns.


class _Recording:
    """Inputs, outputs and call counts of every module of `model` during one forward pass."""

    def __init__(self, model: nn.Module, layers: nn.ModuleList) -> None:
        self.layers = layers
        inside = {module for block in layers for module in block.modules()}
        self.calls: dict[nn.Module, int] = {}
        self.inputs: dict[nn.Module, tuple[tuple, dict]] = {}
        self.outputs: dict[nn.Module, torch.Tensor] = {}
        self.block_order: list[nn.Module] = []
        self.before_blocks: list[nn.Module] = []  # modules outside the blocks that ran first
        self.outside: list[nn.Module] = []  # modules outside the blocks, in the order they ran
        self.handles = []
        for module in model.modules():
            self.handles.append(module.register_forward_pre_hook(
                self._pre_hook(module), with_kwargs=True))
            self.handles.append(module.register_forward_hook(
                self._hook(module, outside=module not in inside)))

    def _pre_hook(self, module: nn.Module):
        def hook(_: nn.Module, args: tuple, kwargs: dict) -> None:
            self.calls[module] = self.calls.get(module, 0) + 1
            self.inputs[module] = (tuple(map(_copy, args)),
                                   {key: _copy(value) for key, value in kwargs.items()})
            if any(module is block for block in self.layers):
                self.block_order.append(module)
        return hook

    def _hook(self, module: nn.Module, outside: bool):
        def hook(_: nn.Module, args: tuple, output) -> None:
            if (tensor := _first_tensor(output)) is not None:
                self.outputs[module] = tensor.clone()  # later code may add to it in place
            if outside:
                self.outside.append(module)
                if not self.block_order:
                    self.before_blocks.append(module)
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def stream_input(self, module: nn.Module) -> tuple[torch.Tensor | None, int | str]:
        """The stream-carrying input of `module` and where it was passed (position or keyword)."""
        args, kwargs = self.inputs.get(module, ((), {}))
        if args and isinstance(args[0], torch.Tensor):
            return args[0], 0
        if isinstance(kwargs.get("hidden_states"), torch.Tensor):
            return kwargs["hidden_states"], "hidden_states"
        name = next((k for k, v in kwargs.items() if isinstance(v, torch.Tensor)), None)
        return (kwargs[name], name) if name is not None else (None, 0)


@torch.no_grad()
def _probe(model: nn.Module, layers: nn.ModuleList) -> ResidualLayout:
    architecture = type(model).__name__
    recording = _Recording(model, layers)
    modes = {module: module.training for module in model.modules()}
    model.eval()  # dropout would make every write random
    try:
        _probe_forward(model)
    except Exception as error:  # any failure means the structure cannot be checked
        message = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
        raise UserError(f"the residual stream of {architecture} cannot be probed: a forward pass "
                        f"on {_PROBE_TOKENS} tokens failed ({type(error).__name__}: "
                        f"{message.rstrip('.')}).") from error
    finally:
        recording.remove()
        for module, training in modes.items():
            module.training = training
    first, argument = recording.stream_input(layers[0])
    d_model = first.shape[-1] if first is not None else 0
    # The final norm is the norm outside the blocks that reads the last block's output.
    last = recording.outputs.get(layers[-1])
    final_norm = next((m for m in recording.outside if _is_norm(m)
                       and _same(recording.stream_input(m)[0], last)), None)
    layout = dict(layers=layers, final_norm=final_norm, d_model=d_model,
                  architecture=architecture, stream_argument=argument)
    if (reason := _stream_problem(recording)) is not None:
        return ResidualLayout(**layout, refusals=dict.fromkeys(_INTERVENTIONS, reason))
    tolerance = max(1e-4, 8 * torch.finfo(first.dtype).eps)
    writers, reason = _find_writers(recording, tolerance)
    if reason is not None:
        return ResidualLayout(**layout, refusals={"ablation": reason, "orthogonalization": reason})
    sources, reason = _embedding_writers(recording, first, tolerance)
    embeddings: list[Edit] = []
    for module in sources:  # embedding tables store one stream vector per row
        embeddings.extend((Edit(module.weight, 1),) if isinstance(module, nn.Embedding)
                          else _linear_edits(module))
    reason = reason or next((why for _, why in writers if why is not None), None)
    return ResidualLayout(**layout, embedding_writers=sources, embeddings=tuple(embeddings),
                          writers=tuple(writer for writer, _ in writers),
                          refusals={} if reason is None else {"orthogonalization": reason})


def _probe_forward(model: nn.Module) -> None:
    embedding = model.get_input_embeddings()
    vocab = getattr(embedding, "num_embeddings", None) or 100
    # Small distinct ids: the top of the vocabulary often holds image or other special tokens.
    ids = (torch.arange(_PROBE_TOKENS) * 7 + 3) % min(vocab, 200)
    device = next((p.device for p in embedding.parameters()), next(model.parameters()).device)
    ids = ids.unsqueeze(0).to(device)
    try:
        model(input_ids=ids, use_cache=False)
    except TypeError:  # a forward without `use_cache`
        model(input_ids=ids)


def _stream_problem(recording: _Recording) -> str | None:
    """Why the blocks do not pass one (batch, tokens, width) stream along, or None."""
    layers = recording.layers
    for index, block in enumerate(layers):
        if (calls := recording.calls.get(block, 0)) != 1:
            return f"its decoder block {index} runs {calls} times in one forward pass, not once."
    if recording.block_order != list(layers):
        return "its decoder blocks do not run in the order of their list."
    first, _ = recording.stream_input(layers[0])
    if (first is None or not first.is_floating_point()
            or tuple(first.shape[:2]) != (1, _PROBE_TOKENS) or first.dim() != 3):
        return "its blocks do not take the stream as one (batch, tokens, width) tensor."
    for index, block in enumerate(layers):
        output = recording.outputs.get(block)
        if output is None or output.shape != first.shape:
            return f"its decoder block {index} does not return the stream as its first output."
        if index + 1 < len(layers) and not _same(recording.stream_input(layers[index + 1])[0],
                                                   output):
            return (f"its decoder block {index + 1} does not take the output of block {index} "
                    "as its input, so the blocks do not pass one residual stream along.")
    return None


def _find_writers(recording: _Recording, tolerance: float
                  ) -> tuple[list[tuple[Writer, str | None]], str | None]:
    """Every write into the stream, with why its weights cannot be edited (or None); or the
    reason the writes that were found do not account for the stream."""
    writers: list[tuple[Writer, str | None]] = []
    for index, block in enumerate(recording.layers):
        stream_in, _ = recording.stream_input(block)
        stream_out = recording.outputs[block]
        if any(_is_norm(m) and _same(recording.outputs.get(m), stream_out)
               for m in block.modules()):
            return [], ("it normalises the stream after adding to it (post-LayerNorm), so no "
                        "projection keeps the stream that its sublayers read orthogonal to a "
                        "direction.")
        writes = _decompose(recording, block, stream_in, tolerance)
        if writes is None:
            return [], (f"its decoder block {index} does not just add the outputs of its "
                        "sublayers to its input (it normalises the residual, gates a write "
                        "elementwise or adds an extra input), so projecting those outputs would "
                        "not remove the direction.")
        states = [stream_in, *(recording.outputs[w] for w in writes)]
        for module in writes:
            if recording.calls[module] != 1:
                return [], (f"the {type(module).__name__} in its decoder block {index} runs "
                            f"{recording.calls[module]} times in one forward pass.")
            writers.append(_writer(recording, module, index, states, tolerance))
    return writers, None


def _decompose(recording: _Recording, parent: nn.Module, stream_in: torch.Tensor,
               tolerance: float, depth: int = 0) -> list[nn.Module] | None:
    """The modules inside `parent` whose outputs, added to `stream_in` with fixed factors, give
    `parent`'s output; None when no such sum accounts for it.

    A write is the output of a child (with weights, or a norm) that no other such child reads:
    a pre-norm's output is read by its sublayer, an attention output by the sandwich norm or
    the convolution after it. Each write is refined to the writes inside it (an attention
    module to its out-projection) when those account for it, so that only pure writes are
    projected; a child that adds the residual itself (Bloom, MPT) is so split into its own
    write and the residual it was given, which is the stream, not a write.
    """
    output = recording.outputs[parent]
    children = [c for c in _children(parent) if c in recording.outputs
                and (_is_norm(c) or next(c.parameters(), None) is not None)]
    given = {c: _tensors(recording.inputs.get(c, ((), {}))) for c in children}
    writes: list[nn.Module] = []
    for child in children:
        value = recording.outputs[child]
        if (not value.is_floating_point() or value.numel() != output.numel()
                or any(_same(value, x) for other in children if other is not child
                       for x in given[other])):
            continue
        refined = _refine(recording, child, children, tolerance, depth)
        if refined is None:
            return None
        writes += refined

    def residual(kept: list[nn.Module]) -> float:
        return _span_residual(output, [stream_in, *(recording.outputs[w] for w in kept)])

    if residual(writes) > tolerance:
        return None
    # Drop what the sum does not need (inside an attention module, the query, key and value
    # projections). An output too small to tell is kept in a block, where it may be a write
    # initialised to zero, and makes a refinement fail, where the whole module is safe.
    for write in list(writes):
        kept = [w for w in writes if w is not write]
        if residual(kept) <= tolerance:
            if _relative_size(recording.outputs[write], output) > tolerance:
                writes = kept
            elif depth > 0:
                return None
    return writes


def _refine(recording: _Recording, module: nn.Module, siblings: list[nn.Module],
            tolerance: float, depth: int) -> list[nn.Module] | None:
    """The pure writes that make up `module`'s output: the writes inside it, plus those of the
    sibling whose output it adds as a residual; else `module` itself. None when that residual
    is a norm's output (Bloom's `apply_residual_connection_post_layernorm`): the stream is then
    normalised in every block, as in a post-LayerNorm model. None too for a leaf with weights
    that mixes two stream-shaped inputs itself (Ergo's `ErgoResidualGate`, g ⊙ branch +
    h ⊙ residual with learnt per-dimension g, h): it rescales the residual elementwise, so
    no projection of its output keeps the stream it passes on orthogonal to a direction."""
    output = recording.outputs[module]
    if (not _is_norm(module) and not isinstance(module, _LINEAR)
            and next(module.children(), None) is None
            and sum(x.is_floating_point() and x.numel() == output.numel()
                    for x in _tensors(recording.inputs[module])) >= 2):
        return None
    if _is_norm(module) or depth >= 4 or next(module.children(), None) is None:
        return [module]
    for residual in _tensors(recording.inputs[module]):
        if not residual.is_floating_point() or residual.numel() != output.numel():
            continue
        inner = _decompose(recording, module, residual, tolerance, depth + 1)
        if not inner:
            continue
        if _span_residual(output, [recording.outputs[w] for w in inner]) <= tolerance:
            return inner  # a pure sum of the writes inside, such as an out-projection
        producer = next((s for s in siblings if s is not module
                         and _same(recording.outputs[s], residual)), None)
        if producer is None:
            return inner
        if _is_norm(producer):
            return None
        rest = _refine(recording, producer, siblings, tolerance, depth)
        return None if rest is None else inner + rest
    return [module]


def _writer(recording: _Recording, module: nn.Module, index: int, states: list[torch.Tensor],
            tolerance: float) -> tuple[Writer, str | None]:
    if _is_norm(module):
        return Writer(module), (
            f"its decoder block {index} normalises a write before adding it "
            f"({type(module).__name__}), and no edit of the weights before a norm equals "
            "projecting the direction out after it.")
    edits = (_linear_edits(module) if isinstance(module, _LINEAR)
             else _module_edits(recording, module, states, tolerance))
    if not edits:
        return Writer(module), (
            f"the {type(module).__name__} in its decoder block {index} writes through weights "
            "that cannot be edited to remove a direction exactly.")
    return Writer(module, edits), None


def _module_edits(recording: _Recording, module: nn.Module, states: list[torch.Tensor],
                  tolerance: float) -> tuple[Edit, ...]:
    """The output-side weights of a composite writer (a mixture of experts, say), if editing
    them gives the projected output exactly when the module is run again on its probe input.

    Inputs that are stream states (in the span of `states`: the block input and its writes,
    as a module that adds the residual itself receives) are projected for that replay, since
    under ablation the stream is orthogonal to the direction."""
    output = recording.outputs[module]
    width = output.shape[-1]
    edits: list[Edit] = []
    for name, sub in module.named_modules():
        if isinstance(sub, _LINEAR):
            if _out_width(sub) == width and not any(r in name.rpartition(".")[2].lower()
                                                    for r in _READ_NAMES):
                edits.extend(_linear_edits(sub))
            continue
        for param_name, param in sub.named_parameters(recurse=False):
            # Expert tensors (experts, d_model, ffn) or (experts, ffn, d_model), and biases.
            axes = [a for a in range(1, param.dim()) if param.shape[a] == width]
            if (param.dim() in (2, 3) and len(axes) == 1 and not _is_norm(sub)
                    and any(key in param_name.lower() for key in ("down", "out", "w2"))):
                edits.append(Edit(param, axes[0]))
    if not edits:
        return ()
    direction = _test_direction(output)

    def ablated(value):
        if (isinstance(value, torch.Tensor) and value.is_floating_point()
                and value.numel() == output.numel() and _span_residual(value, states) <= tolerance):
            return _project(value, direction)
        return value

    args, kwargs = recording.inputs[module]
    args, kwargs = tuple(map(ablated, args)), {k: ablated(v) for k, v in kwargs.items()}
    names = {id(p): n for n, p in module.named_parameters()}
    try:
        expected = _project(_first_tensor(functional_call(module, {}, args, kwargs)), direction)
        replayed = _first_tensor(functional_call(
            module, {names[id(e.tensor)]: e.removed(direction) for e in edits}, args, kwargs))
    except Exception:  # a module that cannot be run again on its recorded input
        return ()
    error = (replayed - expected).float().norm(dim=-1) / output.float().norm(dim=-1).clamp_min(
        1e-30)
    return tuple(edits) if replayed.shape == expected.shape and error.max() <= tolerance else ()


def _embedding_writers(recording: _Recording, stream: torch.Tensor, tolerance: float
                       ) -> tuple[tuple[nn.Module, ...], str | None]:
    """The embeddings (or linear maps) whose outputs sum to the stream entering block 0, or
    why there are none."""
    width = stream.shape[-1]
    sources = [m for m in dict.fromkeys(recording.before_blocks)
               if isinstance(m, (nn.Embedding, *_LINEAR)) and m in recording.outputs
               and recording.outputs[m].shape[-1] == width]
    if _span_residual(stream, [recording.outputs[m] for m in sources]) > tolerance:
        return (), ("the stream entering its first block is not a sum of embedding rows (it "
                    "passes through a norm, or adds position encodings that are not weights).")
    return tuple(sources), None


# ---------------------------------------------------------------------------------------------
# Small helpers.


def _copy(value):
    return value.clone() if isinstance(value, torch.Tensor) else value


def _tensors(inputs: tuple[tuple, dict]) -> list[torch.Tensor]:
    args, kwargs = inputs
    return [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]


def _first_tensor(value) -> torch.Tensor | None:
    if isinstance(value, tuple | list) and value:
        value = value[0]
    return value if isinstance(value, torch.Tensor) else None


def _children(module: nn.Module):
    for child in module.children():
        if isinstance(child, nn.ModuleList | nn.ModuleDict):  # containers have no forward
            yield from _children(child)
        else:
            yield child


def _is_norm(module: nn.Module) -> bool:
    # LayerNorm, LlamaRMSNorm, Qwen3NextRMSNormGated; not RobertaPreLayerNormAttention.
    name = type(module).__name__.lower()
    return name.endswith(("norm", "normgated")) or isinstance(module, nn.LayerNorm | nn.GroupNorm)


def _out_width(linear: nn.Module) -> int:
    return linear.out_features if isinstance(linear, nn.Linear) else linear.nf


def _linear_edits(linear: nn.Module) -> tuple[Edit, ...]:
    # nn.Linear stores (out, in); GPT-2's Conv1D stores (in, out).
    edits = [Edit(linear.weight, 0 if isinstance(linear, nn.Linear) else 1)]
    if linear.bias is not None:
        edits.append(Edit(linear.bias, 0))
    return tuple(edits)


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Whether `a` and `b` hold the same values, allowing for a flattened batch axis."""
    return (a is not None and b is not None and a.numel() == b.numel()
            and a.shape[-1:] == b.shape[-1:] and torch.equal(a.reshape(b.shape), b))


def _span_residual(target: torch.Tensor, vectors: list[torch.Tensor]) -> float:
    """Largest relative distance, over tokens, from `target` to its best fit as one fixed
    combination of `vectors`. The coefficients are shared by all tokens: a per-token factor may
    depend on the write itself (a norm inside the block's own code), which no projection of the
    write commutes with."""
    width = target.shape[-1]
    rows = target.detach().reshape(-1, width).double().cpu()
    columns = [v.detach().reshape(-1, width).double().cpu().expand_as(rows) for v in vectors
               if v.numel() in (rows.numel(), width)]
    fit = torch.zeros_like(rows)
    if columns:
        basis = torch.stack([c.reshape(-1) for c in columns], dim=-1)  # (tokens * width, k)
        # gelsd (SVD) also fits rank-deficient bases: a zero write, or two equal ones.
        solution = torch.linalg.lstsq(basis, rows.reshape(-1, 1), driver="gelsd").solution
        fit = (basis @ solution).reshape(rows.shape)
    return ((fit - rows).norm(dim=-1) / rows.norm(dim=-1).clamp_min(1e-30)).max().item()


def _relative_size(value: torch.Tensor, reference: torch.Tensor) -> float:
    return (value.float().norm() / reference.float().norm().clamp_min(1e-30)).item()


def _test_direction(like: torch.Tensor) -> torch.Tensor:
    vector = torch.randn(like.shape[-1], generator=torch.Generator().manual_seed(0))
    return (vector / vector.norm()).to(device=like.device, dtype=like.dtype)


def _project(hidden: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    return hidden - (hidden @ unit).unsqueeze(-1) * unit
