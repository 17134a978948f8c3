"""Run nanoGCG (GraySwanAI/nanoGCG 0.3.0) on one model for a list of requests; print JSON.

Runs inside benchmarks/.venvs/nanogcg (transformers <= 4.47), started by benchmarks/gcg/run.py:

    python nanogcg_driver.py JOB.json
      ->   {"runs": [{"best_string", "losses", "seconds", "step_seconds"}]}

Per-step times come from the start of each step's gradient computation (nanoGCG's first call in
its step loop) to the next one, and to the end of the run for the last step, so set-up (prefix
cache, initial buffer) is left out, as in alignparadox's own `GCGResult.step_seconds`.

Checkpoints saved by transformers 5 name the tokenizer class "TokenizersBackend", which 4.47
does not know; the tokenizer is the same `tokenizer.json`, so it is loaded as a
PreTrainedTokenizerFast with the special tokens and chat template of the checkpoint.
"""

import json
import logging
import sys
import time
from itertools import pairwise
from pathlib import Path

import nanogcg
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast


def load_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    config = json.loads((folder / "tokenizer_config.json").read_text())
    specials = {key: config[key] for key in ("bos_token", "eos_token", "pad_token")
                if key in config}
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **specials)
    template = folder / "chat_template.jinja"
    tokenizer.chat_template = config.get("chat_template") or template.read_text()
    return tokenizer


def record_step_starts(starts: list[float]) -> None:
    """Note the time whenever nanoGCG starts a step (it begins with the token gradient)."""
    gradient = nanogcg.gcg.GCG.compute_token_gradient

    def timed(self, *args, **kwargs):
        starts.append(time.perf_counter())
        return gradient(self, *args, **kwargs)

    nanogcg.gcg.GCG.compute_token_gradient = timed


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    starts: list[float] = []
    record_step_starts(starts)
    torch.set_num_threads(job["threads"])
    folder = Path(job["model"])
    tokenizer = load_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    runs = []
    for request, target, steps in zip(job["requests"], job["targets"], job["steps"],
                                      strict=True):
        config = nanogcg.GCGConfig(
            num_steps=steps, optim_str_init=job["suffix_init"], search_width=job["search_width"],
            topk=job["topk"], seed=job["seed"], early_stop=job["early_stop"], verbosity="ERROR")
        starts.clear()
        started = time.perf_counter()
        result = nanogcg.run(model, tokenizer, request + job["separator"] + "{optim_str}", target,
                             config)
        ended = time.perf_counter()
        bounds = [*starts, ended]
        runs.append({"best_string": result.best_string, "losses": result.losses,
                     "seconds": ended - started,
                     "step_seconds": [b - a for a, b in pairwise(bounds)]})
    print(json.dumps({"runs": runs}))


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    main()
