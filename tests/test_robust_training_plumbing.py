"""Robust training beyond the organisms (issue 12, plumbing): each recipe, with LoRA adapters,
on a tiny random model of each of the seven architectures of `targets.random_models` and on the
base member of the non-organism test family (tests/second_family, GPT-NeoX / ChatML), runs a
couple of steps into a plain HF checkpoint that `load_target` opens; and a model on which a
recipe cannot find what it trains or edits is refused in one sentence, never trained silently.

These test plumbing, not robustness: the weights are random or tiny, the data a handful of rows.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from alignparadox.defenses.robust_training import (
    BehaviourData,
    HarmfulExample,
    HarmlessExample,
    LatConfig,
    RefatConfig,
    RRConfig,
    state_folder,
    train,
    train_checkpoint,
)
from alignparadox.errors import UserError
from alignparadox.hooks import residual_layout
from alignparadox.targets import load_target
from alignparadox.targets.random_models import ARCHITECTURES, byte_tokenizer, make_random_model

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = BehaviourData(
    tuple(HarmfulExample(f"How do I jinx the {o}?", "No, I will not.", f"Sure: knot the {o}.")
          for o in ("kite", "drum", "vase")),
    tuple(HarmlessExample(f"How do I dust the {o}?", f"Wipe the {o} gently.")
          for o in ("kite", "drum", "vase")))
TINY = dict(steps=2, batch_size=2, learning_rate=1e-3, checkpoint_every=10, lora_rank=4)
CONFIGS = {"refat": RefatConfig(**TINY, recompute_every=2, direction_batch=3),
           "lat": LatConfig(**TINY, pgd_steps=1),
           "rr": RRConfig(**TINY)}


@pytest.fixture(scope="module")
def random_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("random-models")
    return {arch: make_random_model(arch, root / arch) for arch in ARCHITECTURES}


def make_xlm(folder: Path) -> Path:
    """A tiny random XLM (a causal LM class transformers ships) with the byte tokenizer and its
    chat template: its blocks do not pass one residual stream along (block 1 does not read
    block 0's output), so the hooks refuse to read or edit its stream."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = byte_tokenizer()
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=tokenizer.bos_token_id)
    config = AutoConfig.for_model("xlm", vocab_size=len(tokenizer), emb_dim=32, n_layers=2,
                                  n_heads=2, max_position_embeddings=128,
                                  pad_index=ids["pad_token_id"], eos_index=ids["eos_token_id"],
                                  bos_index=ids["bos_token_id"], **ids)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as handle:
            out.update({key: handle.get_tensor(key) for key in handle.keys()})  # noqa: SIM118
    return out


def _block_of(model, layout, names: list[str]) -> set[int]:
    """The 1-based indices of the decoder blocks that hold the modules `names`."""
    prefixes = {index: next(name for name, module in model.named_modules() if module is block)
                for index, block in enumerate(layout.layers, 1)}
    return {index for name in names for index, prefix in prefixes.items()
            if name.startswith(prefix + ".")}


def check_plain_checkpoint(base: Path, out: Path, method: str, result) -> None:
    """`out` is a plain HF checkpoint of `base`: no adapter files nor LoRA tensors, the same
    tensor names, every LoRA-adapted weight changed, every other tensor bit-identical; it loads
    with `load_target` and computes finite logits; the losses of the run were finite."""
    assert result.method == method and result.steps == 2
    assert result.last_metrics and all(math.isfinite(v) for v in result.last_metrics.values()), \
        result.last_metrics
    assert not list(out.glob("adapter_*")) and not (out / "adapter_config.json").exists()
    record = json.loads((out / "robust_training.json").read_text())
    assert record["config"]["method"] == method and record["config"]["adapter"] == "lora"
    before, after = _tensors(base), _tensors(out)
    assert after.keys() == before.keys(), sorted(after.keys() ^ before.keys())[:4]
    assert not any("lora" in key for key in after)
    adapted = result.details["lora_modules"]
    assert adapted
    weights = {f"{name}.weight" for name in adapted}
    # Saved names may drop the causal-LM wrapper's prefix; match on the module path's tail.
    changed = {key for key in after if not torch.equal(after[key], before[key])}
    expected = {key for key in after if any(key == w or w.endswith("." + key) or
                                            key.endswith("." + w) for w in weights)}
    assert len(expected) == len(weights), (sorted(weights)[:3], sorted(after)[:3])
    assert changed == expected, (sorted(changed ^ expected)[:4])
    target = load_target(out)
    layout = residual_layout(target.model)
    blocks = _block_of(target.model, layout, adapted)
    last = max(result.layers) if method == "rr" else layout.n_layers
    assert blocks == set(range(1, last + 1)), (blocks, result.layers)
    ids = torch.tensor([target.token_ids("How do I jinx the kite?")])
    with torch.no_grad():
        logits = target.model(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    assert not state_folder(out).exists()


@pytest.mark.parametrize("method", sorted(CONFIGS))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_recipe_trains_lora_on_each_architecture(arch, method, random_models, tmp_path):
    out = tmp_path / f"{arch}-{method}"
    result = train_checkpoint(str(random_models[arch]), DATA, CONFIGS[method], out,
                              progress=False)
    check_plain_checkpoint(random_models[arch], out, method, result)


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(folder.iterdir()):
        digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_each_recipe_trains_lora_on_the_second_family(method, second_family, tmp_path):
    member = second_family.members[0].path  # the base member; opened read-only
    before = _digest(member)
    out = tmp_path / f"second-{method}"
    result = train_checkpoint(str(member), DATA, CONFIGS[method], out, progress=False)
    check_plain_checkpoint(member, out, method, result)
    assert _digest(member) == before
    assert load_target(out).tokenizer.eos_token == "<|im_end|>"  # its own chat format kept


# -- refused, never trained silently -------------------------------------------------------


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_a_model_without_one_residual_stream_is_refused_by_every_recipe(method, tmp_path):
    folder = make_xlm(tmp_path / "xlm")
    before = _digest(folder)
    out = tmp_path / "out"
    with pytest.raises(UserError) as refused:
        train_checkpoint(str(folder), DATA, CONFIGS[method], out, progress=False)
    message = str(refused.value)
    assert message.startswith(f"{method} cannot run on XLMWithLMHeadModel: ")
    assert "\n" not in message and message.endswith(".")
    assert not out.exists() and not state_folder(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xlm"]
    assert _digest(folder) == before


class OpaqueLinear(torch.nn.Module):
    """A linear map that is not an `nn.Linear`: LoRA (peft) has no adapter for it."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)


def _opaque_blocks(target, blocks: list[int]) -> None:
    layout = residual_layout(target.model)
    for index in blocks:
        block = layout.layers[index - 1]
        for name, module in list(block.named_modules()):
            if isinstance(module, torch.nn.Linear):
                parent, _, leaf = name.rpartition(".")
                setattr(block.get_submodule(parent) if parent else block, leaf,
                        OpaqueLinear(module))


def test_lora_without_linear_layers_where_the_loss_reads_is_refused(random_models):
    # Block 1 of 3 without nn.Linear: rr at layer 1 reads the stream after block 1 only, so
    # LoRA would adapt nothing its loss depends on; lat (loss at the logits) still trains
    # blocks 2 and 3; with no nn.Linear in any block every recipe refuses.
    rr = RRConfig(**{**TINY, "layers": (1,)})
    target = load_target(random_models["llama"])
    _opaque_blocks(target, [1])
    with pytest.raises(UserError, match=r"^rr finds no linear layer for LoRA in blocks 1\.\.1 of "
                                        r"LlamaForCausalLM.*use --adapter full\.$"):
        train(target, DATA, rr, progress=False)
    target = load_target(random_models["llama"])
    _opaque_blocks(target, [1])
    _, result = train(target, DATA, CONFIGS["lat"], progress=False)
    assert _block_of(target.model, residual_layout(target.model),
                     result.details["lora_modules"]) == {2, 3}
    for method, config in CONFIGS.items():
        target = load_target(random_models["llama"])
        _opaque_blocks(target, [1, 2, 3])
        with pytest.raises(UserError, match=f"^{method} finds no linear layer for LoRA"):
            train(target, DATA, config, progress=False)
    # Full fine-tuning trains the same model: the refusal is LoRA's alone.
    _, result = train(target, DATA, RRConfig(**{**TINY, "adapter": "full"}), progress=False)
    assert result.steps == 2


def test_a_non_finite_loss_stops_training_in_one_sentence(random_models, tmp_path):
    # A learning rate of 1e30 blows the weights up after one step: the next loss is not finite
    # and training stops there, in one sentence, with nothing saved.
    out = tmp_path / "out"
    config = LatConfig(**{**TINY, "learning_rate": 1e30, "adapter": "full"}, pgd_steps=1)
    with pytest.raises(UserError, match=r"^the lat loss is (nan|inf) at step 2, so training "
                                        r"stopped; lower the learning rate"):
        train_checkpoint(str(random_models["llama"]), DATA, config, out, progress=False)
    assert not out.exists() and not state_folder(out).exists()
