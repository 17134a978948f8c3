"""Greedy generation of exactly `new_tokens` tokens with the KV cache on, for every driver."""

from __future__ import annotations

import torch
from timing import inputs


def generator(model, spec: dict):
    """A no-argument function that generates from the spec's prompt ids and checks the length."""
    ids, mask = inputs(spec, "prompt_ids")
    new = spec["new_tokens"]

    def generate() -> torch.Tensor:
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new,
                             min_new_tokens=new, do_sample=False, use_cache=True,
                             pad_token_id=model.config.pad_token_id)
        assert out.shape[1] == ids.shape[1] + new
        return out

    return generate
