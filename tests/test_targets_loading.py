"""Loading white-box targets: safe defaults, one-sentence errors for bad input, weight hashes."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from alignparadox.errors import UserError
from alignparadox.targets import GenerationConfig, WhiteBoxTarget, load_target, open_target
from alignparadox.targets.random_models import CHAT_TEMPLATE, make_random_model

GREEDY = GenerationConfig(max_new_tokens=5)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return make_random_model("llama", tmp_path_factory.mktemp("llama"))


def _copy_without(source, destination, *names):
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns(*names))
    return destination


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_target(tmp_path / "nowhere")


def test_folder_without_weights_is_a_user_error(llama_dir, tmp_path):
    folder = _copy_without(llama_dir, tmp_path / "empty", "*.safetensors")
    with pytest.raises(UserError, match="no model weights"):
        load_target(folder)


def test_pickle_weights_need_allow_pickle(llama_dir, tmp_path):
    folder = _copy_without(llama_dir, tmp_path / "pickled", "*.safetensors")
    torch.save(load_file(llama_dir / "model.safetensors"), folder / "pytorch_model.bin")
    with pytest.raises(UserError, match="--allow-pickle"):
        load_target(folder)
    pickled = load_target(folder, allow_pickle=True)
    safe = load_target(llama_dir)
    assert pickled.generate(["hello"], GREEDY) == safe.generate(["hello"], GREEDY)


def test_model_without_chat_template_needs_an_override(llama_dir, tmp_path):
    folder = _copy_without(llama_dir, tmp_path / "bare", "chat_template.jinja")
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    with pytest.raises(UserError, match="no chat template"):
        load_target(folder)
    from_string = load_target(folder, chat_template="{{ messages[0]['content'] }}!")
    assert from_string.format_chat("hi") == "hi!"
    template_file = tmp_path / "template.jinja"
    template_file.write_text(CHAT_TEMPLATE)
    from_file = load_target(folder, chat_template=template_file)
    assert from_file.format_chat("hi") == "<|user|>hi<|end|><|assistant|>"
    with pytest.raises(UserError, match="neither a file nor"):
        load_target(folder, chat_template=tmp_path / "missing.jinja")


def test_prompt_longer_than_context_is_a_user_error(llama_dir):
    target = load_target(llama_dir)
    with pytest.raises(UserError, match="256-token context"):
        target.generate(["x" * 300], GREEDY)
    with pytest.raises(UserError, match="256-token context"):
        target.encode(["x" * 300])


def test_generation_never_runs_past_the_context(llama_dir):
    target = load_target(llama_dir)
    prompt = "x" * 245
    room = target.context_length - len(target.token_ids(prompt))
    assert 0 < room < 50
    [generation] = target.complete([prompt], GenerationConfig(max_new_tokens=50))
    assert len(generation.token_ids) <= room


def test_weight_hash_is_the_sha256_of_the_weight_file(llama_dir):
    target = load_target(llama_dir)
    expected = hashlib.sha256((llama_dir / "model.safetensors").read_bytes()).hexdigest()
    assert target.weight_hash == expected
    in_memory = WhiteBoxTarget(target.model, target.tokenizer, "copy")
    first = in_memory.weight_hash
    assert first == WhiteBoxTarget(target.model, target.tokenizer, "again").weight_hash
    with torch.no_grad():
        target.model.get_output_embeddings().weight[0, 0] += 1.0
    assert WhiteBoxTarget(target.model, target.tokenizer, "edited").weight_hash != first


def test_raw_prompts_skip_the_template(llama_dir):
    target = load_target(llama_dir)
    formatted = target.format_chat("hello")
    assert target.token_ids(formatted, chat=False) == target.token_ids("hello")
    assert target.generate([formatted], GREEDY, chat=False) == target.generate(["hello"], GREEDY)


def test_bad_device_and_dtype_are_user_errors(llama_dir):
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            load_target(llama_dir, device="cuda")
    with pytest.raises(UserError, match="unknown dtype"):
        load_target(llama_dir, dtype="int3")
    with pytest.raises(UserError, match="unknown device"):
        load_target(llama_dir, device="tpu9")


def test_open_target_passes_folders_through(llama_dir):
    target = open_target(str(llama_dir), dtype="fp32")
    assert target.name == llama_dir.name and target.model.dtype == torch.float32


def test_unknown_organism_is_a_user_error():
    organisms = pytest.importorskip("alignparadox.organisms")
    if not hasattr(organisms, "organism_path"):
        pytest.skip("alignparadox.organisms.organism_path is not written yet")
    with pytest.raises(UserError):
        open_target("organism:no-such-organism")


def test_cli_exits_with_code_2_on_a_missing_target():
    result = subprocess.run(
        [sys.executable, "-m", "alignparadox.cli", "serve", "/nonexistent"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "/nonexistent does not exist" in result.stderr
    assert "Traceback" not in result.stderr
