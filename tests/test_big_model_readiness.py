"""What a 70B model needs, checked on tiny CPU models: weight orthogonalization without a copy of
the model, batches that back off on out-of-memory errors, and weights spread over several GPUs.

A real out-of-memory error cannot be produced on a CPU, so the model's forward is wrapped to raise
one when a batch is larger than a limit."""

from __future__ import annotations

import importlib

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from alignparadox.attacks.model_tinkering import DirectionalAblation, WeightOrthogonalization
from alignparadox.batching import BackOff
from alignparadox.errors import UserError
from alignparadox.geometry import Direction
from alignparadox.hooks import ablate, collect_activations, orthogonalize
from alignparadox.targets import GenerationConfig, WhiteBoxTarget, load_target
from alignparadox.targets.random_models import byte_tokenizer, make_random_model
from alignparadox.targets.whitebox import device_map

# The module, not the function `alignparadox.hooks.orthogonalize` that shadows it.
orthogonalize_module = importlib.import_module("alignparadox.hooks.orthogonalize")
PROMPTS = ["Please tell me about the river.", "What is a lantern?", "Hi", "Name three birds.",
           "Why is the sky blue?"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_random_model("llama", tmp_path_factory.mktemp("big") / "llama")


def _direction(target: WhiteBoxTarget, seed: int = 1) -> Direction:
    vector = torch.randn(target.model.config.hidden_size,
                         generator=torch.Generator().manual_seed(seed))
    return Direction(vector, "diff_in_means", 1, (-1,), target.weight_hash)


def _snapshot(model: torch.nn.Module) -> dict[str, tuple[int, torch.Tensor]]:
    return {name: (p.data_ptr(), p.detach().clone()) for name, p in model.named_parameters()}


def _tied_gpt2() -> WhiteBoxTarget:
    tokenizer = byte_tokenizer()
    config = AutoConfig.for_model("gpt2", vocab_size=len(tokenizer), n_embd=32, n_layer=2,
                                  n_head=2, n_positions=64, tie_word_embeddings=True,
                                  pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    return WhiteBoxTarget(AutoModelForCausalLM.from_config(config), tokenizer, "tied-gpt2")


@pytest.mark.parametrize("kind", ["llama", "tied-gpt2"])
def test_orthogonalization_edits_in_place_and_restores_exactly(folder, kind):
    target = load_target(folder) if kind == "llama" else _tied_gpt2()
    direction = _direction(target)
    before = _snapshot(target.model)
    tied = target.model.get_output_embeddings().weight is target.model.get_input_embeddings().weight
    original = target.next_token_logits(PROMPTS)
    with DirectionalAblation(direction).applied(target) as ablated:
        by_hooks = ablated.next_token_logits(PROMPTS)
    with WeightOrthogonalization(direction).applied(target) as edited:
        assert edited.model is target.model  # no copy
        pointers = {name: p.data_ptr() for name, p in edited.model.named_parameters()}
        assert all(pointers[name] == pointer for name, (pointer, _) in before.items()
                   if name in pointers)
        by_weights = edited.next_token_logits(PROMPTS)
    assert not torch.allclose(by_hooks, original, atol=1e-3)
    assert torch.allclose(by_weights, by_hooks, atol=1e-4)
    after = dict(target.model.named_parameters())
    assert after.keys() == before.keys()
    for name, (pointer, value) in before.items():
        assert after[name].data_ptr() == pointer and torch.equal(after[name], value), name
    assert (target.model.get_output_embeddings().weight
            is target.model.get_input_embeddings().weight) == tied
    assert torch.equal(target.next_token_logits(PROMPTS), original)


def test_weights_are_restored_when_the_body_raises(folder):
    target = load_target(folder)
    before = _snapshot(target.model)
    with pytest.raises(RuntimeError, match="boom"), \
            WeightOrthogonalization(_direction(target)).applied(target):
        raise RuntimeError("boom")
    assert all(torch.equal(p, before[n][1]) for n, p in target.model.named_parameters())


def test_slab_by_slab_edits_equal_whole_tensor_edits_and_export_equals_ablation(
        folder, tmp_path, monkeypatch):
    whole, slabs = load_target(folder), load_target(folder)
    direction = _direction(whole).vector
    with ablate(whole.model, direction):
        by_hooks = whole.next_token_logits(PROMPTS)
    orthogonalize(whole.model, direction)
    monkeypatch.setattr(orthogonalize_module, "_SLAB_ELEMENTS", 100)  # many slabs per tensor
    orthogonalize(slabs.model, direction)
    for (name, a), b in zip(whole.model.named_parameters(), slabs.model.parameters(),
                            strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    exported = WeightOrthogonalization(_direction(load_target(folder))).export(
        load_target(folder), tmp_path / "exported")
    assert torch.allclose(load_target(exported).next_token_logits(PROMPTS), by_hooks, atol=1e-4)


class _OutOfMemoryAbove:
    """Makes `model.forward` raise CUDA's out-of-memory error for batches above `rows`."""

    def __init__(self, model: torch.nn.Module, rows: int, monkeypatch) -> None:
        self.rows, self.failures, self.forward = rows, 0, model.forward
        monkeypatch.setattr(model, "forward", self)

    def __call__(self, *args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[0] > self.rows:
            self.failures += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.forward(*args, **kwargs)


def test_generation_and_logits_back_off_on_out_of_memory(folder, monkeypatch, caplog):
    target = load_target(folder)
    config = GenerationConfig(max_new_tokens=6, batch_size=4)
    expected = target.complete(PROMPTS, config)
    expected_logits = target.next_token_logits(PROMPTS, batch_size=4)
    failing = _OutOfMemoryAbove(target.model, 1, monkeypatch)
    assert target.complete(PROMPTS, config) == expected  # greedy: the same answers
    assert failing.failures == 2  # 4 -> 2 -> 1 once, then batches of one
    assert "retrying with 1" in caplog.text
    assert torch.allclose(target.next_token_logits(PROMPTS, batch_size=4), expected_logits,
                          atol=1e-5)
    failing.rows = 0  # not even one prompt fits
    with pytest.raises(UserError, match="out of memory even one prompt at a time"):
        target.generate(PROMPTS[:1], config)


def test_activation_collection_backs_off_and_other_errors_pass_through(folder, monkeypatch):
    target = load_target(folder)
    texts = [target.format_chat(p) for p in PROMPTS]
    expected = collect_activations(target.model, target.tokenizer, texts, [1, 2], batch_size=8,
                                   progress=False)
    _OutOfMemoryAbove(target.model, 2, monkeypatch)
    backed_off = collect_activations(target.model, target.tokenizer, texts, [1, 2], batch_size=8,
                                     progress=False)
    for layer in (1, 2):
        assert torch.allclose(backed_off[layer], expected[layer], atol=1e-5)

    def broken(part: slice) -> None:
        raise RuntimeError("shape mismatch")  # not memory: no retry, no disguise

    with pytest.raises(RuntimeError, match="shape mismatch"):
        BackOff("testing").run(4, broken)
    mps_style = RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)")
    calls = []

    def once(part: slice) -> int:
        calls.append(part.stop - part.start)
        if len(calls) == 1:
            raise mps_style
        return part.stop - part.start

    assert [rows for _, rows in BackOff("testing").run(4, once)] == [2, 2] and calls == [4, 2, 2]


def test_several_gpus_get_device_map_auto(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device_map(torch.device("cuda")) == "auto"
    assert device_map(torch.device("cuda:1")) == "cuda:1"  # a pinned GPU stays pinned
    assert device_map(torch.device("cpu")) == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert device_map(torch.device("cuda")) == "cuda"
