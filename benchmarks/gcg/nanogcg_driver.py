"""Run nanoGCG (GraySwanAI/nanoGCG 0.3.0) on one model for a list of requests; print JSON.

Runs inside benchmarks/.venvs/nanogcg (transformers <= 4.47), started by benchmarks/gcg/run.py:

    python nanogcg_driver.py JOB.json   ->   {"runs": [{"best_string", "losses", "seconds"}]}

Checkpoints saved by transformers 5 name the tokenizer class "TokenizersBackend", which 4.47
does not know; the tokenizer is the same `tokenizer.json`, so it is loaded as a
PreTrainedTokenizerFast with the special tokens and chat template of the checkpoint.
"""

import json
import logging
import sys
import time
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


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
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
        started = time.perf_counter()
        result = nanogcg.run(model, tokenizer, request + job["separator"] + "{optim_str}", target,
                             config)
        runs.append({"best_string": result.best_string, "losses": result.losses,
                     "seconds": time.perf_counter() - started})
    print(json.dumps({"runs": runs}))


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    main()
