"""Random-weight models built from configs, for tests and benchmarks: nothing is downloaded.

Every architecture the toolkit promises to support has a tiny config here; `size="100m"` gives a
Llama-style model of about 100M parameters for speed benchmarks. Each folder carries a card
(`alignparadox.json`) saying its weights are random, which every report shows: whatever such a
model does is noise, and a study on it tests the plumbing only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma2", "gpt2", "gpt_neox", "phi3")
RANDOM_NOTE = ("random weights (targets.random_models): its behaviour is noise, so its rates "
               "test the plumbing only")

# A plain chat template: the same markers for every random model.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A real byte-level tokenizer (256 byte tokens + chat specials), with a chat template."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: index for index, token in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(_SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|end|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _config_kwargs(architecture: str, size: str, vocab_size: int,
                   context: int | None = None) -> dict:
    if size == "tiny":
        hidden, layers, heads, kv_heads, ffn, default_context = 64, 3, 4, 2, 128, 256
    elif size == "100m":
        hidden, layers, heads, kv_heads, ffn, default_context = 768, 12, 12, 4, 2048, 1024
    else:
        raise ValueError(f"unknown size {size!r}; use 'tiny' or '100m'")
    context = context or default_context
    if architecture == "gpt2":
        return dict(n_embd=hidden, n_layer=layers, n_head=heads, n_inner=ffn, n_positions=context)
    common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=ffn, max_position_embeddings=context)
    if architecture == "gpt_neox":
        return common
    if architecture == "gemma2":
        common.update(head_dim=hidden // heads, sliding_window=context)
    return dict(common, num_key_value_heads=kv_heads)


def make_random_model(
    architecture: str, out_dir: str | Path, *, size: str = "tiny", seed: int = 0,
    context: int | None = None,
) -> Path:
    """Build a random-weight causal LM of `architecture`, save model + tokenizer, return the dir.
    `context`: its context length in (byte) tokens, instead of the size's default."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose from {ARCHITECTURES}")
    tokenizer = byte_tokenizer()
    vocab_size = len(tokenizer)
    config = AutoConfig.for_model(
        architecture,
        vocab_size=vocab_size,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **_config_kwargs(architecture, size, vocab_size, context),
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    card = {"provider": "random weights", "architecture": architecture, "seed": seed,
            "note": RANDOM_NOTE}
    (out_dir / "alignparadox.json").write_text(json.dumps(card, indent=2) + "\n")
    return out_dir
