"""Residual-stream hooks on tiny random-weight models of every supported architecture."""

from __future__ import annotations

import copy
from contextlib import ExitStack

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Gemma2ForCausalLM

from alignparadox.errors import UserError
from alignparadox.hooks import (
    ablate,
    add_vectors,
    capture,
    collect_activations,
    orthogonalize,
    residual_layout,
    save_checkpoint,
    tokenize_batches,
)
from alignparadox.targets.random_models import ARCHITECTURES, byte_tokenizer, make_random_model

PROMPTS = ["<|user|>Name three colours.<|end|><|assistant|>", "<|user|>Hi<|end|><|assistant|>"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hook_models")
    return {arch: make_random_model(arch, root / arch) for arch in ARCHITECTURES}


@pytest.fixture(params=ARCHITECTURES)
def arch(request):
    return request.param


@pytest.fixture
def loaded(model_dirs, arch):
    model = AutoModelForCausalLM.from_pretrained(model_dirs[arch]).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dirs[arch])
    return model, tokenizer


def left_padded(tokenizer) -> dict[str, torch.Tensor]:
    _, batch = next(tokenize_batches(tokenizer, PROMPTS, batch_size=4, device="cpu"))
    assert batch["attention_mask"].min() == 0  # really padded
    return batch


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def random_unit(d_model: int, seed: int = 1) -> torch.Tensor:
    vector = torch.randn(d_model, generator=torch.Generator().manual_seed(seed))
    return vector / vector.norm()


@torch.no_grad()
def test_capture_equals_output_hidden_states(loaded):
    model, tokenizer = loaded
    layout = residual_layout(model)
    batch = left_padded(tokenizer)
    reference = model(**batch, output_hidden_states=True).hidden_states
    with capture(model, range(layout.n_layers + 1)) as acts:
        model(**batch)
    for layer in range(layout.n_layers):
        assert (acts[layer] - reference[layer]).abs().max() <= 1e-5
    # HF's last hidden state is taken after the final norm; ours is the last block's raw output.
    last = layout.final_norm(acts[layout.n_layers])
    assert (last - reference[layout.n_layers]).abs().max() <= 1e-5


@torch.no_grad()
@pytest.mark.parametrize("padding", ["left", "right"])
def test_capture_positions_count_from_each_rows_last_real_token(loaded, padding):
    model, _ = loaded
    input_ids = torch.randint(10, 200, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(input_ids)
    if padding == "left":
        mask[1, :2] = 0
    else:
        mask[1, -2:] = 0
    last_real = torch.tensor([5, 5 if padding == "left" else 3])
    reference = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
    with capture(model, [1, 2], positions=[-3, -1]) as acts:
        model(input_ids=input_ids, attention_mask=mask)
    for layer in (1, 2):
        assert acts[layer].shape == (2, 2, residual_layout(model).d_model)
        for row in range(2):
            expected = reference.hidden_states[layer][row, [last_real[row] - 2, last_real[row]]]
            assert (acts[layer][row] - expected).abs().max() <= 1e-5


@torch.no_grad()
def test_collect_activations_keeps_prompt_order_and_matches_single_prompts(loaded):
    model, tokenizer = loaded
    prompts = [PROMPTS[0], PROMPTS[1], "<|user|>A longer request to sort last<|end|>"]
    acts = collect_activations(model, tokenizer, prompts, layers=[0, 2], positions=[-2, -1],
                               batch_size=2, progress=False)
    for index, prompt in enumerate(prompts):
        single = collect_activations(model, tokenizer, [prompt], layers=[0, 2],
                                     positions=[-2, -1], progress=False)
        for layer in (0, 2):
            assert (acts[layer][index] - single[layer][0]).abs().max() <= 1e-5


@torch.no_grad()
def test_adding_zero_vectors_leaves_logits_unchanged(loaded):
    model, tokenizer = loaded
    layout = residual_layout(model)
    batch = left_padded(tokenizer)
    reference = model(**batch).logits
    zeros = {layer: torch.zeros(layout.d_model) for layer in range(layout.n_layers + 1)}
    with add_vectors(model, zeros):
        assert torch.equal(model(**batch).logits, reference)
    with add_vectors(model, {1: 4 * random_unit(layout.d_model)}):
        assert (model(**batch).logits - reference).abs().max() > 1e-2


@torch.no_grad()
def test_ablation_leaves_no_component_along_the_direction(loaded):
    model, tokenizer = loaded
    layout = residual_layout(model)
    batch = left_padded(tokenizer)
    direction = random_unit(layout.d_model)
    layers = range(layout.n_layers + 1)

    def largest_relative_projection() -> float:
        with capture(model, layers) as acts:
            model(**batch)
        real = batch["attention_mask"].bool()  # padding embeddings may be exactly zero
        return max(((acts[i] @ direction).abs() / acts[i].norm(dim=-1))[real].max().item()
                   for i in layers)

    assert largest_relative_projection() > 1e-2
    with ablate(model, 3.0 * direction):  # any length: only the direction counts
        assert largest_relative_projection() <= 1e-4


@torch.no_grad()
def test_orthogonalized_checkpoint_matches_hook_ablation(loaded, tmp_path):
    model, tokenizer = loaded
    batch = left_padded(tokenizer)
    direction = random_unit(residual_layout(model).d_model)
    if isinstance(model, Gemma2ForCausalLM):  # sandwich norms: see the test of them below
        with pytest.raises(UserError, match="normalises a write"):
            orthogonalize(copy.deepcopy(model), direction)
        return
    with ablate(model, direction):
        ablated = model(**batch).logits
    out = save_checkpoint(orthogonalize(copy.deepcopy(model), direction), tokenizer,
                          tmp_path / "orthogonalized")
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert (reloaded(**batch).logits - ablated).abs().max() <= 1e-4
    assert (model(**batch).logits - ablated).abs().max() > 1e-3  # the edit did something


@torch.no_grad()
def test_orthogonalize_unties_tied_embeddings(tmp_path):
    tokenizer = byte_tokenizer()
    config = AutoConfig.for_model("gpt2", vocab_size=len(tokenizer), n_embd=32, n_layer=2,
                                  n_head=2, tie_word_embeddings=True, bos_token_id=1,
                                  eos_token_id=2)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    input_ids = torch.randint(10, 200, (1, 8), generator=torch.Generator().manual_seed(0))
    direction = random_unit(32)
    with ablate(model, direction):
        ablated = model(input_ids=input_ids).logits
    orthogonalize(model, direction)
    reloaded = AutoModelForCausalLM.from_pretrained(save_checkpoint(model, tokenizer,
                                                                    tmp_path / "tied")).eval()
    assert (reloaded(input_ids=input_ids).logits - ablated).abs().max() <= 1e-4


@torch.no_grad()
@pytest.mark.parametrize("positions", ["all", "prompt", "generated", 2])
def test_steered_generation_is_the_same_with_and_without_kv_cache(loaded, positions):
    model, tokenizer = loaded
    batch = left_padded(tokenizer)
    settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    plain = model.generate(**batch, **settings)
    vector = 8.0 * random_unit(residual_layout(model).d_model, seed=3)
    outputs = []
    for use_cache in (True, False):
        with add_vectors(model, {2: vector}, positions=positions):
            outputs.append(model.generate(**batch, use_cache=use_cache, **settings))
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], plain)


@torch.no_grad()
def test_hooks_are_removed_even_when_the_body_raises(loaded):
    model, tokenizer = loaded
    batch = left_padded(tokenizer)
    before, reference = hook_count(model), model(**batch).logits
    d_model = residual_layout(model).d_model
    contexts = [
        lambda: capture(model, [0, 1, 2], positions=-1),
        lambda: add_vectors(model, {0: torch.ones(d_model), 3: torch.ones(d_model)}),
        lambda: ablate(model, torch.ones(d_model)),
    ]
    for context in contexts:
        with pytest.raises(RuntimeError, match="boom"), context():
            model(**batch)
            raise RuntimeError("boom")
        assert hook_count(model) == before
    assert torch.equal(model(**batch).logits, reference)


def test_bad_input_is_one_clear_user_error(model_dirs):
    model = AutoModelForCausalLM.from_pretrained(model_dirs["llama"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dirs["llama"])
    d_model = residual_layout(model).d_model
    cases = [
        (lambda: capture(model, [99]), "out of range"),
        (lambda: capture(model, [1], positions=0), "negative"),
        (lambda: add_vectors(model, {-1: torch.zeros(d_model)}), "out of range"),
        (lambda: add_vectors(model, {1: torch.zeros(d_model + 1)}), "width"),
        (lambda: add_vectors(model, {1: torch.full((d_model,), float("nan"))}), "non-finite"),
        (lambda: add_vectors(model, {1: torch.zeros(d_model)}, positions="end"), "positions"),
        (lambda: ablate(model, torch.zeros(d_model)), "zero"),
    ]
    for make, message in cases:
        with pytest.raises(UserError, match=message), make():
            pass
    with pytest.raises(UserError, match="empty"):
        collect_activations(model, tokenizer, [], layers=[1], progress=False)
    with pytest.raises(UserError, match="fewer than"):
        collect_activations(model, tokenizer, ["ab"], layers=[1], positions=[-5], progress=False)
    with pytest.raises(UserError, match="width"):
        orthogonalize(model, torch.ones(3))
    assert hook_count(model) == 0


# Architectures outside the supported list, built from configs, show the discovery is generic.
OTHER_CONFIGS = {
    "opt": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64,
                word_embed_proj_dim=32),
    "mpt": dict(d_model=32, n_layers=2, n_heads=2),
    "falcon": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2),
    "bloom": dict(hidden_size=32, n_layer=2, n_head=2),  # embedding norm: no orthogonalization
}


@torch.no_grad()
@pytest.mark.parametrize("other", sorted(OTHER_CONFIGS))
def test_layout_discovery_generalises_beyond_the_supported_list(other):
    torch.manual_seed(0)
    config = AutoConfig.for_model(other, vocab_size=100, **OTHER_CONFIGS[other])
    model = AutoModelForCausalLM.from_config(config).eval()
    layout = residual_layout(model)
    input_ids = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    reference = model(input_ids=input_ids, output_hidden_states=True).hidden_states
    layers = range(layout.n_layers + 1)
    with capture(model, layers) as acts:
        model(input_ids=input_ids)
    assert all((acts[i] - reference[i]).abs().max() <= 1e-5 for i in range(layout.n_layers))
    direction = random_unit(layout.d_model)
    with ablate(model, direction), capture(model, layers) as ablated:
        logits = model(input_ids=input_ids).logits
    assert all(((ablated[i] @ direction).abs() / ablated[i].norm(dim=-1)).max() <= 1e-4
               for i in layers)
    if other == "bloom":
        with pytest.raises(UserError, match="orthogonalization"):
            orthogonalize(model, direction)
    else:
        edited = orthogonalize(copy.deepcopy(model), direction)
        assert (edited(input_ids=input_ids).logits - logits).abs().max() <= 1e-4


@torch.no_grad()
@pytest.mark.parametrize("post_norm", ["rms", "layer"])
def test_sandwich_norms_are_ablated_after_the_norm_and_refused_by_orthogonalize(model_dirs,
                                                                                post_norm):
    # Gemma 2 adds norm(sublayer(x)): hooks project what the norm returns, which is exact for
    # any norm; no weight edit before a norm gives that, so orthogonalization refuses.
    model = AutoModelForCausalLM.from_pretrained(model_dirs["gemma2"]).eval()
    d_model = residual_layout(model).d_model
    if post_norm == "layer":  # a mean-centring norm, swapped in after a layout was cached
        model.model.layers[-1].post_feedforward_layernorm = torch.nn.LayerNorm(d_model)
    layout = residual_layout(model)
    assert any(writer.module is model.model.layers[-1].post_feedforward_layernorm
               for writer in layout.writers)
    direction = random_unit(d_model)
    before = {name: p.clone() for name, p in model.named_parameters()}
    with pytest.raises(UserError, match="Gemma2ForCausalLM: its decoder block 0 normalises"):
        orthogonalize(model, direction)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    # Every block boundary and the stream the MLP reads mid-block hold no part of the direction.
    input_ids = torch.randint(10, 200, (2, 6), generator=torch.Generator().manual_seed(0))
    mid: list[torch.Tensor] = []
    with ExitStack() as stack:
        for block in layout.layers:
            norm = block.pre_feedforward_layernorm
            stack.callback(norm.register_forward_pre_hook(
                lambda m, args: mid.append(args[0])).remove)
        with ablate(model, direction), capture(model, range(layout.n_layers + 1)) as ablated:
            model(input_ids=input_ids)
    for hidden in [*ablated.values(), *mid]:
        assert ((hidden @ direction).abs() / hidden.norm(dim=-1)).max() <= 1e-4


@torch.no_grad()
def test_the_stream_width_is_where_the_stream_is_and_a_wrong_vector_is_one_user_error():
    # OPT-350m embeds tokens at width 16 and projects them into a stream of width 32.
    config = AutoConfig.for_model("opt", vocab_size=100, hidden_size=32, word_embed_proj_dim=16,
                                  num_hidden_layers=2, num_attention_heads=2, ffn_dim=64)
    model = AutoModelForCausalLM.from_config(config).eval()
    layout = residual_layout(model)
    assert layout.d_model == 32 and model.get_input_embeddings().embedding_dim == 16
    input_ids = torch.randint(0, 100, (1, 5), generator=torch.Generator().manual_seed(0))
    direction = random_unit(32)
    with ablate(model, direction), capture(model, [0, 2]) as acts:
        logits = model(input_ids=input_ids).logits
    assert all(((a @ direction).abs() / a.norm(dim=-1)).max() <= 1e-4 for a in acts.values())
    edited = orthogonalize(copy.deepcopy(model), direction)  # edits project_in, not the table
    assert (edited(input_ids=input_ids).logits - logits).abs().max() <= 1e-4
    for make in (lambda: add_vectors(model, {1: torch.ones(16)}),
                 lambda: ablate(model, torch.ones(16))):
        with pytest.raises(UserError, match="width 32"), make():
            pass
    with pytest.raises(UserError, match="width 32"):
        orthogonalize(model, torch.ones(16))
    assert hook_count(model) == 0


@torch.no_grad()
def test_post_layernorm_models_are_refused_before_any_hook_or_edit():
    # OPT with do_layer_norm_before=False (OPT-350m) normalises the stream after each add; with
    # non-trivial norm weights the old fallback left up to 0.13 of the direction in it.
    config = AutoConfig.for_model("opt", vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, ffn_dim=64, do_layer_norm_before=False)
    model = AutoModelForCausalLM.from_config(config).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.weight.normal_(1.0, 0.5)
            module.bias.normal_(0.0, 0.5)
    before = {name: p.clone() for name, p in model.named_parameters()}
    for refuse in (lambda: ablate(model, random_unit(32)).__enter__(),
                   lambda: orthogonalize(model, random_unit(32))):
        with pytest.raises(UserError, match=r"^.* on OPTForCausalLM: .*post-LayerNorm[^\n]*\.$"):
            refuse()
    assert hook_count(model) == 0
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    with capture(model, [0, 1, 2]) as acts:  # reading the stream is still exact
        model(input_ids=torch.tensor([[5, 6, 7]]))
    assert acts[2].shape == (1, 3, 32)
