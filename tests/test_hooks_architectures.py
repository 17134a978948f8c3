"""Exact, or refused: the residual-stream hooks on every causal LM class that transformers ships.

For each model type in transformers' causal-LM auto mapping whose tiny random config builds, every
intervention is either exact to the issue-3 tolerances or refused with one sentence that names
the architecture and says why:

- capture equals `output_hidden_states`, and adding zero vectors leaves the logits unchanged;
- ablation leaves no component along the direction at any block boundary nor at any stream read
  mid-block, and gives the logits of an independent reference ablation that projects the stream
  wherever a norm (or the unembedding) reads it;
- an orthogonalized, saved and reloaded checkpoint gives the logits of hook ablation.

Run this file as a script to print the table of architectures and verdicts.
"""

from __future__ import annotations

import copy
import sys
import tempfile
import warnings
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM
from transformers import logging as hf_logging
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.pytorch_utils import Conv1D

from alignparadox.errors import UserError
from alignparadox.hooks import ablate, add_vectors, capture, orthogonalize, residual_layout

ARCHITECTURES = sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
TOKENS, VOCAB, WIDTH = 5, 256, 32
EXACT = 1e-4  # issue 3: relative projection after ablation, logits of two equal ablations
CAPTURE = 1e-5  # issue 3: capture against output_hidden_states

# Tiny sizes, by every name the configs use for them. The expert width differs from the model
# width so that an expert tensor's axes are never ambiguous.
_SIZES = {
    **dict.fromkeys(("hidden_size", "n_embd", "d_model", "n_embed", "embed_dim"), WIDTH),
    **dict.fromkeys(("intermediate_size", "ffn_dim", "n_inner", "d_ff", "ffn_hidden_size",
                     "decoder_ffn_dim", "encoder_ffn_dim", "dff", "inner_hidden_size"), 64),
    **dict.fromkeys(("num_hidden_layers", "n_layer", "n_layers", "num_layers", "decoder_layers",
                     "encoder_layers"), 2),
    **dict.fromkeys(("num_attention_heads", "n_head", "n_heads", "decoder_attention_heads",
                     "encoder_attention_heads"), 2),
    **dict.fromkeys(("num_key_value_heads", "n_kv_heads", "num_kv_heads", "kv_n_heads"), 2),
    **dict.fromkeys(("moe_intermediate_size", "shared_expert_intermediate_size",
                     "expert_intermediate_size"), 24),
    **dict.fromkeys(("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"),
                    4),
    **dict.fromkeys(("num_experts_per_tok", "moe_k", "num_experts_per_token", "moe_topk"), 2),
    "head_dim": 16, "vocab_size": VOCAB, "first_k_dense_replace": 1, "kv_lora_rank": 16,
    "q_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
    "qk_head_dim": 16, "rotary_dim": 8, "n_shared_experts": 1, "emb_dim": WIDTH,
    "vocab_size_per_layer_input": VOCAB, "n_group": 1, "topk_group": 1, "num_expert_group": 1,
    "index_topk": 4, "index_head_dim": 16, "index_n_heads": 2, "linear_head_dim": 16,
    "linear_num_heads": 2, "mamba_n_heads": 4, "mamba_d_head": 16, "mamba_d_state": 16,
    "mamba_chunk_size": 8, "mamba_n_groups": 1,
}
# What the shared sizes do not fit.
_EXTRA = {
    "deepseek_v2": {"head_dim": 8}, "deepseek_v3": {"head_dim": 8}, "deepseek_v32": {"head_dim": 8},
    "youtu": {"head_dim": 8}, "axk1": {"head_dim": 8}, "sarvam_mla": {"head_dim": 8},
    "gpt_neo": {"attention_types": [[["global", "local"], 1]], "num_heads": 2},
    "mamba2": {"num_heads": 4, "n_groups": 1, "state_size": 16, "time_step_rank": 8,
               "chunk_size": 8},
    "falcon_h1": {"mamba_d_ssm": 64},  # mamba_n_heads * mamba_d_head
    "zaya": {"num_experts_per_tok": 1},
}
_MAX_PARAMETERS = 3_000_000


def _overrides(config_class, defaults: dict) -> dict:
    out = {}
    for key, value in defaults.items():
        if isinstance(value, bool):
            continue
        if key in _SIZES and (isinstance(value, int) or value is None):
            out[key] = _SIZES[key]
        elif key.endswith("_token_id") and isinstance(value, int) and value >= VOCAB:
            out[key] = VOCAB - 1 - len(out) % 8  # keep special ids away from the probe's ids
        elif key.endswith("_token_id") and isinstance(value, list):
            out[key] = [min(token, VOCAB - 1) for token in value]
        elif key in ("layer_types", "layers_block_type") and isinstance(value, list) and value:
            out[key] = _two_layers(value)
        elif isinstance(value, dict) and key in getattr(config_class, "sub_configs", {}):
            sub = config_class.sub_configs[key]
            out[key] = {**value, **_overrides(sub, value)}
    return out


def _two_layers(types: list) -> list:
    # One layer of each of the first two kinds, so hybrid models keep both of them.
    kinds = list(dict.fromkeys(map(str, types)))
    chosen = [next(t for t in types if str(t) == kind) for kind in kinds[:2]]
    return (chosen * 2)[:2]


def tiny_model(model_type: str) -> nn.Module:
    """A random-weight model of `model_type` with two tiny layers; pytest.skip when none builds."""
    config_class = CONFIG_MAPPING[model_type]
    try:
        defaults = config_class().to_dict() if model_type != "zaya" else {}
        config = config_class(**{**_overrides(config_class, defaults),
                                 **_EXTRA.get(model_type, {})})
    except Exception as error:
        pytest.skip(f"no tiny config builds ({type(error).__name__}: {_first_line(error)})")
    config.use_cache = False
    with torch.device("meta"):
        try:
            meta = AutoModelForCausalLM.from_config(config)
        except Exception as error:
            pytest.skip(f"the tiny config builds no model ({type(error).__name__}: "
                        f"{_first_line(error)})")
    if (size := sum(p.numel() for p in meta.parameters())) > _MAX_PARAMETERS:
        pytest.skip(f"the tiny config still has {size:,} parameters")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    _randomize(model)
    return model


@torch.no_grad()
def _randomize(model: nn.Module) -> None:
    # Non-trivial weights everywhere the stream is written or normalised: zero-initialised output
    # projections or unit norms would hide a wrong hook.
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        is_norm = _is_norm(module)
        if not isinstance(module, nn.Linear | Conv1D | nn.Embedding) and not is_norm:
            continue
        for name, param in module.named_parameters(recurse=False):
            noise = torch.randn(param.shape, generator=generator).to(param.dtype) * 0.2
            param.copy_(1.0 + noise if is_norm and name == "weight" else noise)


def _is_norm(module: nn.Module) -> bool:
    return type(module).__name__.lower().endswith(("norm", "normgated"))


def _computes(module: nn.Module) -> bool:
    # Dropout, activations and rotary tables compute nothing from the stream's values.
    return _is_norm(module) or next(module.parameters(), None) is not None


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:120] if text else ""


def _input_ids() -> torch.Tensor:
    return torch.randint(3, 200, (2, TOKENS), generator=torch.Generator().manual_seed(0))


def _unit(width: int) -> torch.Tensor:
    vector = torch.randn(width, generator=torch.Generator().manual_seed(2))
    return vector / vector.norm()


def _relative_projection(hidden: torch.Tensor, unit: torch.Tensor) -> float:
    hidden = hidden.float()
    return ((hidden @ unit).abs() / hidden.norm(dim=-1).clamp_min(1e-30)).max().item()


def _close(a: torch.Tensor, b: torch.Tensor, tolerance: float) -> bool:
    scale = max(1.0, b.abs().max().item())  # tiny random models give logits well above 1
    return a.shape == b.shape and (a - b).abs().max().item() <= tolerance * scale


def _first_tensor(value):
    if isinstance(value, tuple | list) and value:
        value = value[0]
    return value if isinstance(value, torch.Tensor) else None


def _copy(value):
    return value.clone() if isinstance(value, torch.Tensor) else value


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    return [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]


def _stream_key(args: tuple, kwargs: dict) -> int | str:
    return 0 if args and isinstance(args[0], torch.Tensor) else "hidden_states"


def _argument(args: tuple, kwargs: dict, key: int | str) -> torch.Tensor | None:
    value = (args[key] if len(args) > key else None) if isinstance(key, int) else kwargs.get(key)
    return value if isinstance(value, torch.Tensor) else None


def _stream_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    return _argument(args, kwargs, _stream_key(args, kwargs))


def _replace(args: tuple, kwargs: dict, key: int | str, new: torch.Tensor):
    if isinstance(key, int):
        return (*args[:key], new, *args[key + 1:]), kwargs
    return args, {**kwargs, key: new}


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return (a is not None and b is not None and a.numel() == b.numel()
            and torch.equal(a.reshape(b.shape), b))


def _children(module: nn.Module):
    for child in module.children():
        if isinstance(child, nn.ModuleList | nn.ModuleDict):
            yield from _children(child)
        else:
            yield child


def _in_span(target: torch.Tensor, vectors: list[torch.Tensor]) -> bool:
    rows = target.reshape(-1, target.shape[-1]).double()
    basis = torch.stack([v.reshape(rows.shape).double() for v in vectors], dim=-1)
    fit = basis @ torch.linalg.lstsq(basis, rows.unsqueeze(-1), driver="gelsd").solution
    return ((fit.squeeze(-1) - rows).norm(dim=-1) / rows.norm(dim=-1)).max().item() <= 1e-6


Read = tuple[nn.Module, int, int | str]  # module, call number, argument


def _stream_reads(model: nn.Module, layers: nn.ModuleList, input_ids: torch.Tensor
                  ) -> list[Read]:
    """The module arguments that carry the residual stream, found independently of the hooks
    under test: every block's input; the input of every norm of a block that is a stream state
    (the block input plus outputs of the block's children) and whose output another module of
    the block reads; the input of every child of a block that takes a stream state computed in
    the block's own code; any argument, anywhere, that is the stream entering block 0 (Zamba 2
    and Gemma 3n read the embeddings again); and the first reader of the last block's output."""
    calls: dict[nn.Module, list[tuple[tuple, dict]]] = {}
    outputs: dict[nn.Module, torch.Tensor | None] = {}
    with ExitStack() as stack:
        for module in model.modules():
            def pre(m, args, kwargs, module=module):  # copies: later code may edit in place
                calls.setdefault(module, []).append((tuple(map(_copy, args)),
                                                     {k: _copy(v) for k, v in kwargs.items()}))

            def post(m, args, output, module=module):
                outputs[module] = _copy(_first_tensor(output))

            stack.callback(module.register_forward_pre_hook(pre, with_kwargs=True).remove)
            stack.callback(module.register_forward_hook(post).remove)
        model(input_ids=input_ids)

    def stream(module: nn.Module, call: int = -1) -> torch.Tensor | None:
        return _stream_input(*calls[module][call]) if module in calls else None

    reads: list[Read] = [(block, 0, _stream_key(*calls[block][0])) for block in layers]
    inside = {m for block in layers for m in block.modules()}
    for block in layers:
        width = outputs[block].numel()
        direct = set(_children(block))
        children = [c for c in direct if outputs.get(c) is not None
                    and outputs[c].numel() == width]
        states = [stream(block), *(outputs[c] for c in children)]
        # A child that adds the residual itself returns the block output (Bloom, RoBERTa with
        # pre-norm); unless it takes the block input as its stream, the child outputs it is
        # also given are the stream mid-block, not writes.
        carried = [outputs[c] for r in children if _same(outputs[r], outputs[block])
                   and not _same(stream(r), stream(block))
                   for c in children if c is not r
                   and not _same(outputs[c], stream(r))
                   and any(_same(outputs[c], v) for v in _tensors(*calls[r][0]))]
        for module in block.modules():
            if module is block or len(calls.get(module, [])) != 1:
                continue
            x = stream(module)
            if (x is None or x.numel() != width or not x.is_floating_point()
                    or not _in_span(x, states)):
                continue
            # A norm of the block that a sublayer reads, or a child that takes a stream state
            # computed in the block's own code (not a sibling's raw output, as a sandwich norm
            # does).
            if _is_norm(module) and module in direct:
                read = any(_same(stream(other), outputs.get(module))
                           for other in block.modules() if other is not module)
            else:
                read = (module in direct and _computes(module)
                        and (any(_same(x, v) for v in carried)
                             or not any(_same(x, outputs[c]) for c in children)))
            if read:
                reads.append((module, 0, _stream_key(*calls[module][0])))
    first, last = stream(layers[0], 0), outputs[layers[-1]]
    around = {m for m in model.modules() if any(b is layers[0] for b in m.modules())}
    for module, module_calls in calls.items():
        if module in around or not _computes(module):
            continue
        for call, (args, kwargs) in enumerate(module_calls):
            keys = [*range(len(args)), *kwargs]
            reads += [(module, call, key) for key in keys
                      if _same(_argument(args, kwargs, key), first)
                      and (module, call, key) not in reads]
    reads += [(m, call, _stream_key(*c)) for m, module_calls in calls.items()
              if m not in inside | around and _computes(m)
              for call, c in enumerate(module_calls) if _same(_stream_input(*c), last)][:1]
    return reads


def _is_refusal(error: UserError, model: nn.Module) -> bool:
    message = str(error)
    return (type(model).__name__ in message and "\n" not in message
            and message.endswith("."))


def check(model: nn.Module) -> dict[str, str]:
    """Verdict per intervention: "exact", or "refused: <the sentence>". Asserts exactness."""
    input_ids = _input_ids()
    with torch.no_grad():
        reference = model(input_ids=input_ids, output_hidden_states=True)
    verdict: dict[str, str] = {}

    def refused(what: str, error: UserError) -> None:
        assert _is_refusal(error, model), f"{what} refusal is not one sentence naming it: {error}"
        verdict[what] = f"refused: {error}"

    try:
        layout = residual_layout(model)
    except UserError as error:
        for what in ("stream", "ablation", "orthogonalization"):
            refused(what, error)
        return verdict
    layers = range(layout.n_layers + 1)
    width = layout.d_model
    unit = _unit(width)
    # Reading and steering.
    try:
        with torch.no_grad(), capture(model, layers) as acts:
            model(input_ids=input_ids)
    except UserError as error:
        refused("stream", error)
    else:
        hidden = reference.hidden_states
        assert len(hidden) == layout.n_layers + 1, "output_hidden_states has another convention"
        last = acts[layout.n_layers]
        normed = layout.final_norm(last) if layout.final_norm is not None else last
        # HF's last entry may come after the final norm, or after OPT-350m's projection out.
        assert (_close(last, hidden[-1], CAPTURE) or _close(normed, hidden[-1], CAPTURE)
                or hidden[-1].shape[-1] != width)
        # HF's tuple starts at the embeddings, or (Mamba-style) at block 0's output.
        start = 0 if _close(acts[0], hidden[0], CAPTURE) else 1
        for layer in range(start, layout.n_layers):
            assert _close(acts[layer], hidden[layer - start], CAPTURE), \
                f"capture differs at {layer}"
        with torch.no_grad(), add_vectors(model, {i: torch.zeros(width) for i in layers}):
            assert torch.equal(model(input_ids=input_ids).logits, reference.logits)
        verdict["stream"] = "exact"
    # Ablation, against the reference that projects every read of the stream.
    hooks = _hook_count(model)  # transformers may keep its own hooks on some models
    try:
        with torch.no_grad(), ablate(model, 3.0 * unit):
            pass
    except UserError as error:
        refused("ablation", error)
        assert _hook_count(model) == hooks, "a refused ablation left hooks behind"
        hooked = None
    else:
        reads = _stream_reads(model, layout.layers, input_ids)
        seen: dict[nn.Module, list[tuple[tuple, dict]]] = {}
        with torch.no_grad(), ablate(model, unit), capture(model, layers) as ablated, \
                ExitStack() as stack:
            for module in {module for module, _, _ in reads}:  # after the ablation's hooks
                def record(m, args, kwargs, module=module):
                    seen.setdefault(module, []).append((args, kwargs))
                stack.callback(module.register_forward_pre_hook(record, with_kwargs=True).remove)
            hooked = model(input_ids=input_ids).logits
        for layer in layers:
            projection = _relative_projection(ablated[layer], unit)
            assert projection <= EXACT, f"layer {layer} keeps {projection:.2g} of the direction"
        for module, call, key in reads:
            projection = _relative_projection(_argument(*seen[module][call], key), unit)
            assert projection <= EXACT, f"{type(module).__name__} reads {projection:.2g} of it"
        with torch.no_grad(), ExitStack() as stack:
            for module in {module for module, _, _ in reads}:
                keys = [(call, key) for m, call, key in reads if m is module]
                count = [0]

                def project(m, args, kwargs, keys=keys, count=count):
                    for call, key in keys:
                        if call == count[0]:
                            x = _argument(args, kwargs, key)
                            args, kwargs = _replace(args, kwargs, key,
                                                    x - (x @ unit).unsqueeze(-1) * unit)
                    count[0] += 1
                    return args, kwargs
                stack.callback(module.register_forward_pre_hook(project, with_kwargs=True).remove)
            expected = model(input_ids=input_ids).logits
        assert _close(hooked, expected, EXACT), "ablation differs from the reference ablation"
        assert not _close(hooked, reference.logits, 1e-3), "the ablation did nothing"
        verdict["ablation"] = "exact"
    # Orthogonalization, saved and reloaded, against hook ablation.
    edited = copy.deepcopy(model)
    try:
        orthogonalize(edited, unit)
    except UserError as error:
        refused("orthogonalization", error)
        assert all(torch.equal(a, b) for a, b in zip(edited.state_dict().values(),
                                                      model.state_dict().values(), strict=True))
    else:
        assert hooked is not None, "orthogonalization works where ablation is refused"
        with tempfile.TemporaryDirectory() as folder, torch.no_grad():
            edited.save_pretrained(Path(folder) / "edited")
            reloaded = type(edited).from_pretrained(Path(folder) / "edited").eval()
            logits = reloaded(input_ids=input_ids).logits
        assert _close(logits, hooked, EXACT), "the exported checkpoint differs from hook ablation"
        verdict["orthogonalization"] = "exact"
    return verdict


@pytest.fixture(autouse=True, scope="module")
def quiet_and_one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models run fastest on one thread
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    hf_logging.set_verbosity(verbosity)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_every_intervention_is_exact_or_refused(model_type):
    model = tiny_model(model_type)
    try:
        with torch.no_grad():
            model(input_ids=_input_ids())
    except Exception as error:
        pytest.skip(f"needs more than input ids ({type(error).__name__}: {_first_line(error)})")
    check(model)


# Settings of the same classes that change where the stream is or how blocks write into it.
VARIANTS = {
    "opt-350m (post-LayerNorm, project_in)": ("opt", dict(
        do_layer_norm_before=False, word_embed_proj_dim=16, ffn_dim=64)),
    "opt (project_in)": ("opt", dict(word_embed_proj_dim=16, ffn_dim=64)),
    "gpt_neox (sequential)": ("gpt_neox", dict(use_parallel_residual=False,
                                               intermediate_size=64)),
    "falcon (new decoder)": ("falcon", dict(new_decoder_architecture=True, num_kv_heads=2)),
    "phi-2": ("phi", dict(intermediate_size=64, partial_rotary_factor=0.5)),
    "bloom (residual after the norm)": ("bloom", dict(
        apply_residual_connection_post_layernorm=True)),
}
VERDICTS = {  # what each variant must come to; anything else is a regression
    "opt-350m (post-LayerNorm, project_in)": ("exact", "refused", "refused"),
    "opt (project_in)": ("exact", "exact", "exact"),
    "gpt_neox (sequential)": ("exact", "exact", "exact"),
    "falcon (new decoder)": ("exact", "exact", "exact"),
    "phi-2": ("exact", "exact", "exact"),
    "bloom (residual after the norm)": ("exact", "refused", "refused"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_are_exact_or_refused(variant):
    model = _variant_model(variant)
    verdict = check(model)
    assert residual_layout(model).d_model == WIDTH  # the stream's width, not the table's
    assert tuple(verdict[what].split(":")[0] for what in
                 ("stream", "ablation", "orthogonalization")) == VERDICTS[variant]


def _variant_model(variant: str) -> nn.Module:
    model_type, settings = VARIANTS[variant]
    config = CONFIG_MAPPING[model_type](vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=2,
                                        num_attention_heads=2, **settings)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    _randomize(model)
    return model


def _row(label: str, model: nn.Module) -> str:
    """One markdown row: label, class, the three verdicts, and the reason for a refusal."""
    verdict = check(model)
    cells = [verdict[what].split(":")[0] for what in ("stream", "ablation", "orthogonalization")]
    why = next((v.split(": ", 1)[1].split(f"{type(model).__name__}: ", 1)[-1]
                for v in verdict.values() if v.startswith("refused")), "")
    return f"| {label} | {type(model).__name__} | {' | '.join(cells)} | {why} |"


def _table_row(model_type: str) -> str:
    try:
        model = tiny_model(model_type)
        with torch.no_grad():
            model(input_ids=_input_ids())
    except pytest.skip.Exception as skip:
        return f"| {model_type} | - | skipped | | | {skip} |"
    except Exception as error:
        return (f"| {model_type} | - | skipped | | | needs more than input ids "
                f"({type(error).__name__}: {_first_line(error)}) |")
    return _row(model_type, model)


if __name__ == "__main__":  # print the table of architectures and verdicts
    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.simplefilter("ignore")
    print("| model type | class | capture/steer | ablation | orthogonalization | why refused |")
    print("|---|---|---|---|---|---|")
    for name in sys.argv[1:] or ARCHITECTURES:
        print(_table_row(name), flush=True)
    for name in [] if sys.argv[1:] else sorted(VARIANTS):
        print(_row(name, _variant_model(name)), flush=True)
