"""steering-vectors: `SteeringVector.apply` at every token during generation, KV cache on."""

from __future__ import annotations

from importlib.metadata import version

import torch
import transformers
from generation import generator
from steering_vectors import SteeringVector
from timing import interleaved, main
from transformers import AutoModelForCausalLM


def body(spec: dict) -> dict:
    transformers.logging.set_verbosity_error()
    model = AutoModelForCausalLM.from_pretrained(spec["model"]).eval()
    generate = generator(model, spec)
    # "decoder_block" layer b is the output of block b, as in the other drivers.
    vector = SteeringVector({spec["steer_block"]: torch.tensor(spec["steer_vector"])},
                            layer_type="decoder_block")

    def steered():
        with vector.apply(model, min_token_index=0):  # every token, prompt and generated
            return generate()

    runs = {"unsteered": generate, "steering-vectors": steered}
    return {"steering-vectors": version("steering-vectors"),
            "transformers": transformers.__version__,
            "seconds": interleaved(runs, spec["repeats"], spec["warmup"])}


if __name__ == "__main__":
    main(body)
