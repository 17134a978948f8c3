"""repeng: a `ControlModel` with a raw control vector during generation, KV cache on."""

from __future__ import annotations

from importlib.metadata import version

import torch
import transformers
from generation import generator
from repeng import ControlModel
from timing import interleaved, main
from transformers import AutoModelForCausalLM


def body(spec: dict) -> dict:
    transformers.logging.set_verbosity_error()
    model = AutoModelForCausalLM.from_pretrained(spec["model"]).eval()
    generate = generator(model, spec)
    block = spec["steer_block"]
    control = {block: torch.tensor(spec["steer_vector"])}

    def steered():
        # ControlModel wraps block `block` in place; unwrapping restores the plain model, so
        # the unsteered runs are the plain HF model, as for every other tool.
        controlled = ControlModel(model, [block])
        controlled.set_raw_control(control)
        try:
            return generate()
        finally:
            controlled.unwrap()

    runs = {"unsteered": generate, "repeng": steered}
    return {"repeng": version("repeng"), "transformers": transformers.__version__,
            "seconds": interleaved(runs, spec["repeats"], spec["warmup"])}


if __name__ == "__main__":
    main(body)
