"""Peak memory of weight orthogonalization on a ~1B-parameter model, relative to its weights.

    nice -n 10 python benchmarks/memory/run.py [--shape tinyllama|llama3.2-1b|tiny]

Each shape runs in a fresh subprocess: a random-weight Llama built from a config in bf16 on the
CPU (nothing downloaded), then, phase by phase, the peak resident memory above what the process
held before the model existed, divided by the bytes of the weights:

- applied:      `WeightOrthogonalization.applied` (in place, originals on disk, restored exactly)
- export:       orthogonalize in place + save as an HF checkpoint (`tinker export`)
- deep copy:    what `applied` did before: orthogonalize a `copy.deepcopy` of the model

The peak of each phase is the kernel's high-water mark (VmHWM), reset before the phase through
/proc/self/clear_refs; the goal for applied and export is at most 1.2x. `tinyllama` is the shape
of TinyLlama-1.1B (untied embeddings); `llama3.2-1b` that of Llama-3.2-1B, whose tied embeddings
must be untied for the edit (the unembedding reads the stream), which costs one more
vocabulary x width matrix however the edit is done.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    "tinyllama": dict(hidden_size=2048, num_hidden_layers=22, intermediate_size=5632,
                      num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                      tie_word_embeddings=False),
    "llama3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, intermediate_size=8192,
                        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                        tie_word_embeddings=True),
    "tiny": dict(hidden_size=256, num_hidden_layers=4, intermediate_size=688,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=4096,
                 tie_word_embeddings=False),  # a smoke run
}
GOAL = 1.2


def _status(field: str) -> int:
    """A memory field of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def child(shape: str, folder: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from alignparadox.attacks.model_tinkering import WeightOrthogonalization
    from alignparadox.geometry import Direction
    from alignparadox.hooks import orthogonalize
    from alignparadox.targets import WhiteBoxTarget
    from alignparadox.targets.random_models import byte_tokenizer

    torch.set_num_threads(2)
    tokenizer = byte_tokenizer()
    config = LlamaConfig(max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, **SHAPES[shape])
    gc.collect()
    before = _status("VmRSS")
    started = time.perf_counter()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    build_seconds = time.perf_counter() - started
    params = {id(p): p for p in model.parameters()}.values()
    weights = sum(p.numel() * p.element_size() for p in params)
    target = WhiteBoxTarget(model, tokenizer, shape)
    vector = torch.randn(config.hidden_size, generator=torch.Generator().manual_seed(1))
    attack = WeightOrthogonalization(Direction(vector, "random", 1, (-1,), target.weight_hash))
    result = {"shape": shape, "parameters": sum(p.numel() for p in params),
              "weight_bytes": weights, "build_seconds": build_seconds, "phases": {}}

    def phase(name: str, run) -> None:
        _reset_peak()
        started = time.perf_counter()
        run()
        result["phases"][name] = {"peak_over_weights": (_status("VmHWM") - before) / weights,
                                  "seconds": time.perf_counter() - started}

    def applied() -> None:
        with attack.applied(target):
            pass

    phase("applied", applied)
    phase("export", lambda: attack.export(target, folder / "exported"))
    phase("deep copy", lambda: orthogonalize(copy.deepcopy(model), vector))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=[*SHAPES, "all"], default="tinyllama")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory(prefix="alignparadox-memory-") as folder:
            print(json.dumps(child(args.child, Path(folder))))
        return
    shapes = [s for s in SHAPES if s != "tiny"] if args.shape == "all" else [args.shape]
    for shape in shapes:
        done = subprocess.run([sys.executable, __file__, "--child", shape], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            print(f"{shape}: failed\n{done.stderr.strip()}")
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{shape}: {result['parameters'] / 1e9:.2f}B parameters, "
              f"{result['weight_bytes'] / 2**30:.2f} GiB of bf16 weights "
              f"(random init {result['build_seconds']:.0f} s)")
        for name, measured in result["phases"].items():
            ratio = measured["peak_over_weights"]
            verdict = "" if name == "deep copy" else (
                "  ok" if ratio <= GOAL else f"  above the {GOAL}x goal")
            print(f"  {name:10s} peak {ratio:.2f}x the weights  ({measured['seconds']:.1f} s)"
                  f"{verdict}")


if __name__ == "__main__":
    main()
