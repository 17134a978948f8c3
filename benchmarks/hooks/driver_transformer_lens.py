"""TransformerLens: `run_with_cache` of the residual stream, against the plain HF model.

TransformerLens 4 loads HF checkpoints through `TransformerBridge.boot_transformers`, which
forces eager attention; the bridge's own forward (no cache) is timed too, so the table can
separate the cost of caching from the cost of the bridge.
"""

from __future__ import annotations

from importlib.metadata import version

import torch
import transformers
from timing import inputs, interleaved, main
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM


def body(spec: dict) -> dict:
    transformers.logging.set_verbosity_error()
    model = AutoModelForCausalLM.from_pretrained(spec["model"]).eval()
    bridge = TransformerBridge.boot_transformers(spec["model"], device="cpu")
    bridge.eval()
    n_layers = bridge.cfg.n_layers
    # The same L + 1 tensors as `output_hidden_states`: every block's input and the last output.
    names = {f"blocks.{i}.hook_resid_pre" for i in range(n_layers)}
    names.add(f"blocks.{n_layers - 1}.hook_resid_post")
    ids, mask = inputs(spec, "capture_ids")

    def plain():
        return model(input_ids=ids, attention_mask=mask, use_cache=False)

    def bridge_forward():
        return bridge(ids)

    def run_with_cache():
        _, cache = bridge.run_with_cache(ids, names_filter=lambda name: name in names)
        assert len(cache) == len(names)
        return cache

    runs = {"plain": plain, "bridge forward": bridge_forward, "run_with_cache": run_with_cache}
    with torch.no_grad():
        seconds = interleaved(runs, spec["repeats"], spec["warmup"])
    return {"transformer_lens": version("transformer_lens"),
            "transformers": transformers.__version__, "seconds": seconds}


if __name__ == "__main__":
    main(body)
