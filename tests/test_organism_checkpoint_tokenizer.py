"""Organism checkpoints name a tokenizer class that transformers 4.x and 5 both load (issue 9).

transformers 5 saves a fast tokenizer as `TokenizersBackend`, which `AutoTokenizer` of 4.x
rejects; nanoGCG needs 4.47. Nothing is trained here: a tokenizer is fitted on a tiny corpus and
saved with a random model through the family's own save path.
"""

from __future__ import annotations

import json

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from alignparadox.organisms.family import _save, _weights_hash
from alignparadox.organisms.tokenizer import train_tokenizer

CORPUS = ["<|user|>How do I bake bread?<|end|>", "Mix flour, water and yeast, then bake."] * 4


def test_saved_organism_tokenizer_loads_on_transformers_4_and_5(tmp_path):
    tokenizer = train_tokenizer(CORPUS, vocab_size=300)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    weights_hash = _save(model, tokenizer, tmp_path / "member")

    saved = json.loads((tmp_path / "member" / "tokenizer_config.json").read_text())
    assert saved["tokenizer_class"] == "PreTrainedTokenizerFast"  # a class 4.x knows
    assert saved["chat_template"] == tokenizer.chat_template  # older 4.x skip the .jinja file
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "member")
    text = CORPUS[0] + CORPUS[1]
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert (reloaded.pad_token, reloaded.padding_side) == (tokenizer.pad_token, "left")
    messages = [{"role": "user", "content": "hi"}]
    assert (reloaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            == tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True))

    # The weights, and so the member's recorded hash, are what a plain save gives.
    model.save_pretrained(tmp_path / "plain")
    assert weights_hash == _weights_hash(tmp_path / "plain")
