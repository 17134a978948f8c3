"""nnsight: a trace that saves the residual stream at every layer, against the plain HF model."""

from __future__ import annotations

import nnsight
import torch
import transformers
from nnsight import TransformersModel
from timing import inputs, interleaved, main
from transformers import AutoModelForCausalLM, AutoTokenizer


def body(spec: dict) -> dict:
    transformers.logging.set_verbosity_error()
    model = AutoModelForCausalLM.from_pretrained(spec["model"]).eval()
    # nnsight's wrapper wants a tokenizer even though it is only given token ids.
    traced = TransformersModel(model, tokenizer=AutoTokenizer.from_pretrained(spec["model"]))
    ids, mask = inputs(spec, "capture_ids")

    def plain():
        return model(input_ids=ids, attention_mask=mask, use_cache=False)

    def trace():
        # The same L + 1 tensors as `output_hidden_states`: block 0's input, every block's output.
        with traced.trace(ids, attention_mask=mask, use_cache=False):
            activations = nnsight.save([traced.model.layers[0].input])
            for layer in traced.model.layers:
                activations.append(layer.output)
        assert len(activations) == len(model.model.layers) + 1
        return activations

    with torch.no_grad():
        seconds = interleaved({"plain": plain, "nnsight": trace}, spec["repeats"], spec["warmup"])
    return {"nnsight": nnsight.__version__, "transformers": transformers.__version__,
            "seconds": seconds}


if __name__ == "__main__":
    main(body)
