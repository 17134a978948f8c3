"""alignparadox hooks: capture every layer / steer generation, against the plain HF model."""

from __future__ import annotations

import torch
import transformers
from generation import generator
from timing import inputs, interleaved, main
from transformers import AutoModelForCausalLM

import alignparadox
from alignparadox.hooks import add_vectors, capture, residual_layout


def body(spec: dict) -> dict:
    transformers.logging.set_verbosity_error()
    model = AutoModelForCausalLM.from_pretrained(spec["model"]).eval()
    versions = {"alignparadox": alignparadox.__version__, "transformers": transformers.__version__}
    if spec["task"] == "capture":
        return {**versions, "seconds": time_capture(model, spec)}
    return {**versions, "seconds": time_generation(model, spec)}


def time_capture(model, spec: dict) -> dict[str, list[float]]:
    ids, mask = inputs(spec, "capture_ids")
    layers = range(residual_layout(model).n_layers + 1)

    def plain():
        return model(input_ids=ids, attention_mask=mask, use_cache=False)

    def captured():
        with capture(model, layers) as activations:
            plain()
        assert len(activations) == len(layers)
        return activations

    with torch.no_grad():
        return interleaved({"plain": plain, "ours": captured}, spec["repeats"], spec["warmup"])


def time_generation(model, spec: dict) -> dict[str, list[float]]:
    generate = generator(model, spec)
    # The stream leaving block b is our layer b + 1 (layer 0 is the embedding output).
    vectors = {spec["steer_block"] + 1: torch.tensor(spec["steer_vector"])}

    def steered(positions: str):
        def run():
            with add_vectors(model, vectors, positions=positions):
                return generate()
        return run

    runs = {"unsteered": generate, "ours": steered("all"),
            "ours (generated tokens only)": steered("generated")}
    return interleaved(runs, spec["repeats"], spec["warmup"])


if __name__ == "__main__":
    main(body)
