"""Run nanoGCG (GraySwanAI/nanoGCG 0.3.0) on one model for a list of requests; print JSON.

Runs inside benchmarks/.venvs/nanogcg (transformers <= 4.47), started by benchmarks/gcg/run.py:

    python nanogcg_driver.py JOB.json
      ->   {"variants": {NAME: [{"best_string", "losses", "seconds", "step_seconds"}, ...]}}

The job names the model folder and the variants to run, one after another in this process, each
on every request: a name, the model's dtype ("float32" or "bfloat16") and an optional draft
model for nanoGCG's probe sampling (loaded in the same dtype); and an optional wall-clock budget
per request: nanoGCG has none, so its stop flag (checked at the end of every step) is raised by the
first candidate-loss call after the budget is spent, counted from the start of `nanogcg.run`
(its set-up included, as for alignparadox's `time_budget`).

Per-step times come from the start of each step's gradient computation (nanoGCG's first call in
its step loop) to the next one, and to the end of the run for the last step, so set-up (prefix
cache, initial buffer) is left out, as in alignparadox's own `GCGResult.step_seconds`.

nanoGCG 0.3.0's probe sampling crashes when the Spearman correlation of the probe set is
undefined (constant losses: frequent in bf16, whose ties are common, with a probe set of
width / 16 candidates); the driver maps that NaN to 0 (no agreement), as alignparadox does.

Checkpoints saved by transformers 5 name the tokenizer class "TokenizersBackend", which 4.47
does not know; the tokenizer is the same `tokenizer.json`, so it is loaded as a
PreTrainedTokenizerFast with the special tokens and chat template of the checkpoint.
"""

import json
import logging
import math
import sys
import time
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace

import nanogcg
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


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


def stop_after(deadline: list[float]) -> None:
    """Raise nanoGCG's stop flag once `deadline[0]` (perf_counter seconds) has passed; every
    step, probe sampling's too, scores candidates through this method."""
    original = nanogcg.gcg.GCG._compute_candidates_loss_original

    def budgeted(self, *args, **kwargs):
        losses = original(self, *args, **kwargs)
        if time.perf_counter() >= deadline[0]:
            self.stop_flag = True
        return losses

    nanogcg.gcg.GCG._compute_candidates_loss_original = budgeted


def tolerate_undefined_correlation() -> None:
    spearmanr = nanogcg.gcg.spearmanr

    def defined(*args, **kwargs):
        result = spearmanr(*args, **kwargs)
        return SimpleNamespace(correlation=0.0) if math.isnan(result.correlation) else result

    nanogcg.gcg.spearmanr = defined


def load_model(folder: str, dtype: torch.dtype):
    return AutoModelForCausalLM.from_pretrained(folder, torch_dtype=dtype).eval()


def run_variant(job: dict, variant: dict, models: dict, deadline: list[float],
                starts: list[float]) -> list[dict]:
    dtype = DTYPES[variant["dtype"]]
    for folder in (job["model"], variant.get("draft")):
        if folder and (folder, dtype) not in models:
            models[folder, dtype] = load_model(folder, dtype)
    model = models[job["model"], dtype]
    tokenizer = load_tokenizer(Path(job["model"]))
    probe = None
    if variant.get("draft"):
        probe = nanogcg.ProbeSamplingConfig(draft_model=models[variant["draft"], dtype],
                                            draft_tokenizer=load_tokenizer(Path(variant["draft"])))
    runs = []
    for request, target, steps in zip(job["requests"], job["targets"], job["steps"],
                                      strict=True):
        config = nanogcg.GCGConfig(
            num_steps=steps, optim_str_init=job["suffix_init"], search_width=job["search_width"],
            topk=job["topk"], seed=job["seed"], early_stop=job["early_stop"], verbosity="ERROR",
            probe_sampling_config=probe)
        starts.clear()
        started = time.perf_counter()
        deadline[0] = started + (job.get("time_budget") or float("inf"))
        result = nanogcg.run(model, tokenizer, request + job["separator"] + "{optim_str}", target,
                             config)
        ended = time.perf_counter()
        bounds = [*starts, ended]
        runs.append({"best_string": result.best_string, "losses": result.losses,
                     "seconds": ended - started,
                     "step_seconds": [b - a for a, b in pairwise(bounds)]})
    return runs


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    starts: list[float] = []
    deadline = [float("inf")]
    record_step_starts(starts)
    stop_after(deadline)
    tolerate_undefined_correlation()
    torch.set_num_threads(job["threads"])
    models: dict = {}
    print(json.dumps({"variants": {variant["name"]: run_variant(job, variant, models, deadline,
                                                                 starts)
                                   for variant in job["variants"]}}))


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    main()
