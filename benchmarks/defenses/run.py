"""Scoring cost of Best-of-N with latent attribution: the defense at N = 8 vs plain sampling of
the same 8 candidates, as a ratio of wall times (goal <= 1.15x).

    .venv/bin/python benchmarks/defenses/run.py [--quick]

Plain: `sample_candidates` (N sampled answers per prompt, one batched generation). Defended:
`BestOfNDefense.defend_ids` with the latent scorer at the middle layer: the same generation
(the target's state at the final token is read during decoding, one decoding step more), plus
one batched forward of the reference over prompt + answer, stopped after the layer read, and
the pick. Both draw the same candidates (same seed). Runs on one CPU thread, in alternating
rounds (plain, defended, defended, plain, ...); a ratio is the median over rounds.

FLOP table, from the model shapes and the token counts of this run's candidates (drawn once
more, untimed, with the same seed), batched as the code batches them: matmul FLOPs of the
weights (2 x weight entries per token, the LM head only where logits are kept) plus attention
scores (QK^T and AV, 4 x heads x head_dim per query and key, every key of the forward counted,
padded and causally masked ones included). Norms, softmax and sampling are ignored.
`plain GF`: prefill of every row and every decoding step (finished rows are still fed).
`extra GF`: what defending adds, the extra decoding step and the reference's prompt prefill and
answer forward up to the scored layer. `1+share` = 1 + extra / plain, the ratio a purely
compute-bound machine would show. `plain GF/s` = plain FLOPs / median plain time; `extra GF/s`
= extra FLOPs / the median over rounds of (defended - plain time), an effective rate (hooks and
other overhead included).

Pairs: organism:aligned-3 with reference organism:base (real answers, 48 new tokens at most),
and a ~100M-parameter random-weight Llama with a second random Llama of the same shape as the
reference (answers mostly run to 64 new tokens; `--quick` skips it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from alignparadox.defenses.best_of_n.core import (
    BestOfNConfig,
    BestOfNDefense,
    Candidates,
    prompt_batches,
    prompts_per_batch,
    sample_candidates,
)
from alignparadox.hooks import residual_layout
from alignparadox.targets import load_target, open_target
from alignparadox.targets.random_models import make_random_model
from alignparadox.targets.whitebox import Generation, WhiteBoxTarget


@dataclass(frozen=True)
class Shape:
    """Per-token FLOPs of one model: `block` (2 x weight entries of one block), `attention` (per
    key attended, in one block), `head` (the LM head); `n_layers` blocks."""

    block: int
    attention: int
    head: int
    n_layers: int


def model_shape(target: WhiteBoxTarget) -> Shape:
    layout = residual_layout(target.model)
    config = target.model.config.get_text_config()
    # Every 2-D parameter of a block is a matmul weight (norms are 1-D, there is no embedding).
    blocks = [sum(p.numel() for p in block.parameters() if p.ndim == 2) for block in layout.layers]
    if len(set(blocks)) != 1:
        raise ValueError(f"blocks of {target.name} differ in size: {blocks}")
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return Shape(block=2 * blocks[0], attention=4 * heads * head_dim,
                 head=2 * target.model.get_output_embeddings().weight.numel(),
                 n_layers=layout.n_layers)


def forward_flops(shape: Shape, rows: int, fed: int, cached: int, blocks: int,
                  logits: bool) -> int:
    """One forward of `rows` rows, each fed `fed` tokens after `cached` cached ones, through
    `blocks` blocks, with the LM head at the last position of each row if `logits`."""
    per_query = shape.block + shape.attention * (cached + fed)
    return rows * fed * blocks * per_query + (rows * shape.head if logits else 0)


def longest_first(candidates: Candidates, config: BestOfNConfig
                  ) -> list[tuple[int, list[Generation]]]:
    """(padded prompt width, answers) of each batch, as `sample_candidates` and
    `_candidate_states` batch them (`core.prompt_batches`)."""
    per_batch = prompts_per_batch(candidates.n, config.batch_size)
    return [(max(len(candidates.prompt_ids[i]) for i in part),
             [answer for i in part for answer in candidates.of(i)])
            for part in prompt_batches(candidates.prompt_ids, per_batch)]


def sampling_flops(target: WhiteBoxTarget, candidates: Candidates, config: BestOfNConfig,
                   max_steps: int) -> int:
    """`sample_candidates` with at most `max_steps` decoding steps: each batch is prefilled,
    then fed one token per row per step until its longest answer has yielded its last token
    (its stop token, or the step limit)."""
    shape = model_shape(target)
    total = 0
    for width, answers in longest_first(candidates, config):
        room = (target.context_length or 1 << 62) - width
        steps = min(max_steps, room, max(len(answer.token_ids) + 1 for answer in answers))
        total += forward_flops(shape, len(answers), width, 0, shape.n_layers, True)
        for step in range(1, steps):  # the first token came from the prefill
            total += forward_flops(shape, len(answers), 1, width + step - 1, shape.n_layers, True)
    return total


def reference_flops(reference: WhiteBoxTarget, candidates: Candidates, config: BestOfNConfig,
                    layer: int) -> int:
    """`_candidate_states` on the reference: each batch's prompts prefilled once, then all N
    answers per prompt fed after the repeated cache (right-padded), stopped after `layer`
    blocks, so no LM head."""
    shape, n = model_shape(reference), config.n
    total = 0
    for width, answers in longest_first(candidates, config):
        total += forward_flops(shape, len(answers) // n, width, 0, layer, False)
        fed = max(len(answer.token_ids) for answer in answers)
        if fed:
            total += forward_flops(shape, len(answers), fed, width, layer, False)
    return total


def measure(target, reference, prompts: list[list[int]], config: BestOfNConfig,
            rounds: int) -> dict:
    defense = BestOfNDefense(target, reference, config, "latent")
    sample_candidates(target, prompts[:1], config)  # warm-up
    defense.defend_ids(prompts[:1])
    plain, defended = [], []
    for index in range(rounds):
        order = ("plain", "defended") if index % 2 == 0 else ("defended", "plain")
        for which in order:
            started = time.perf_counter()
            if which == "plain":
                sample_candidates(target, prompts, config)
                plain.append(time.perf_counter() - started)
            else:
                defense.defend_ids(prompts)
                defended.append(time.perf_counter() - started)
    ratios = [d / p for d, p in zip(defended, plain, strict=True)]
    extras = [d - p for d, p in zip(defended, plain, strict=True)]
    # The candidates both paths drew (same seed), for the FLOP count; untimed.
    candidates = sample_candidates(target, prompts, config)
    plain_flops = sampling_flops(target, candidates, config, config.max_new_tokens)
    extra_flops = (sampling_flops(target, candidates, config, config.max_new_tokens + 1)
                   - plain_flops + reference_flops(reference, candidates, config, defense.layer))
    return {"plain_s": statistics.median(plain), "defended_s": statistics.median(defended),
            "ratio": statistics.median(ratios), "extra_s": statistics.median(extras),
            "layer": defense.layer,
            "answer_tokens": statistics.mean(len(a.token_ids) for a in candidates.answers),
            "plain_flops": plain_flops, "extra_flops": extra_flops}


def print_rows(rows: list[tuple[str, int, dict]]) -> None:
    print(f"{'pair':45s} {'prompts':>7s} {'layer':>5s} {'plain s':>8s} {'defended s':>10s} "
          f"{'ratio':>6s}")
    for name, count, row in rows:
        print(f"{name:45s} {count:7d} {row['layer']:5d} {row['plain_s']:8.3f} "
              f"{row['defended_s']:10.3f} {row['ratio']:5.2f}x")
    print()
    print(f"{'pair':45s} {'answer tok':>10s} {'plain GF':>9s} {'extra GF':>9s} {'1+share':>8s} "
          f"{'ratio':>6s} {'plain GF/s':>10s} {'extra GF/s':>10s}")
    for name, _, row in rows:
        extra_s = row["extra_s"]
        extra_rate = (f"{row['extra_flops'] / extra_s / 1e9:10.2f}" if extra_s > 0
                      else f"{'n/a':>10s}")
        print(f"{name:45s} {row['answer_tokens']:10.1f} {row['plain_flops'] / 1e9:9.3f} "
              f"{row['extra_flops'] / 1e9:9.3f} "
              f"{1 + row['extra_flops'] / row['plain_flops']:7.3f}x {row['ratio']:5.2f}x "
              f"{row['plain_flops'] / row['plain_s'] / 1e9:10.2f} {extra_rate}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="organisms only, fewer rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    from alignparadox.datasets.behaviours import behaviour_set

    target, reference = open_target("organism:aligned-3"), open_target("organism:base")
    requests = behaviour_set(behaviours="organisms", seed=0).requests("harmful", "test", 8, 0)
    prompts = [target.token_ids(r.text) for r in requests]
    config = BestOfNConfig(n=8, max_new_tokens=48, batch_size=32)
    rows.append(("organism:aligned-3 vs organism:base", len(prompts),
                 measure(target, reference, prompts, config, 3 if args.quick else 7)))
    if not args.quick:
        with tempfile.TemporaryDirectory() as folder:
            target = load_target(make_random_model("llama", Path(folder) / "a", size="100m",
                                                   seed=0))
            reference = load_target(make_random_model("llama", Path(folder) / "b",
                                                      size="100m", seed=1))
            prompts = [target.token_ids(text) for text in
                       ("Write a short note about the weather.", "List three prime numbers.")]
            config = BestOfNConfig(n=8, max_new_tokens=64, batch_size=16)
            rows.append(("random Llama ~100M vs random Llama ~100M", len(prompts),
                         measure(target, reference, prompts, config, 7)))
    print_rows(rows)
    print("goal: <= 1.15x (latent-similarity BoN at N=8 vs plain sampling of the same 8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
