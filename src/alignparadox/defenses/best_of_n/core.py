"""Best-of-N sampling with latent attribution to the pre-alignment model (Pathmanathan & Huang
2026, "Deliberative Alignment is Deep, but Uncertainty Remains", arXiv 2604.09665).

For each request, N answers are sampled from the aligned target in one batched generation
(temperature 0.7, top-p 1.0 by default, as in the paper). Each candidate is scored and the one
with the *lowest* score is returned. The paper's scorer, `LatentSimilarity`, takes the residual
stream at the final token of prompt + answer at one layer, once in the target and once in a
reference model with the same tokenizer (the target before alignment), and scores their cosine
similarity: unsafe answers stay close to the pre-alignment state, so the least similar answer is
kept. The controls are the paper's: a random pick (plain sampling), the lowest perplexity, the
highest self-certainty (Kang et al. 2025: mean KL of the uniform distribution from the model's
next-token distribution), and the highest mean token KL from the target to the reference. A
judge-scored pick (`JudgeOracle`) is the upper bound any scorer could reach with these
candidates.

Every scorer reads `Features`: states at the final token (both models, any layers) and per-token
statistics of the answer, computed by one batched forward of each model over all candidates of
a call, with the residual stream read through `alignparadox.hooks.capture`.

White-box only: the scorer needs the target's internal states; a black-box target is refused.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache

from alignparadox.batching import BackOff
from alignparadox.errors import UserError
from alignparadox.hooks import capture, check_layer, residual_layout
from alignparadox.targets.whitebox import Generation, GenerationConfig, WhiteBoxTarget

LayerSpec = int | float  # an index into the stream (0 = embeddings) or a relative depth in [0, 1]
PAPER_TEMPERATURE = 0.7
PAPER_TOP_P = 1.0
PAPER_N = 8


@dataclass(frozen=True)
class BestOfNConfig:
    """How candidates are sampled and which layer the latent scorer reads.

    `layer`: an int is a layer index of the residual stream (0 = embeddings, L = the last
    block's output); a float in [0, 1] is a relative depth, rounded to the nearest layer (0.5,
    the default, is the middle layer; the paper's headline used layer 12 of 28-36)."""

    n: int = PAPER_N
    temperature: float = PAPER_TEMPERATURE
    top_p: float = PAPER_TOP_P
    max_new_tokens: int = 128
    seed: int = 0
    batch_size: int = 32  # rows (candidates) per generation and scoring forward
    layer: LayerSpec = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise UserError(f"the number of candidates N must be at least 1, got {self.n!r}.")
        if not (isinstance(self.temperature, int | float) and self.temperature > 0
                and math.isfinite(self.temperature)):
            raise UserError(f"the sampling temperature must be a positive number, got "
                            f"{self.temperature!r}.")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p!r}.")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise UserError("max_new_tokens and batch_size must be at least 1.")
        check_layer_spec(self.layer)

    def generation(self, seed: int | None = None) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=True,
                                temperature=float(self.temperature), top_p=float(self.top_p),
                                seed=self.seed if seed is None else seed,
                                batch_size=self.batch_size)


def check_layer_spec(layer: LayerSpec) -> None:
    """A layer given as an int index or a relative depth in [0, 1]; anything else is refused."""
    if isinstance(layer, bool) or not isinstance(layer, int | float):
        raise UserError(f"layer must be an integer index or a relative depth in [0, 1], got "
                        f"{layer!r}.")
    if isinstance(layer, float) and not 0.0 <= layer <= 1.0:
        raise UserError(f"a relative layer depth must be in [0, 1], got {layer!r}; give an "
                        "integer for a layer index.")


def parse_layer(text: str) -> LayerSpec:
    """A command-line layer: "12" is an index, "0.5" a relative depth."""
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise UserError(f"layer {text!r} is neither an integer index nor a relative depth "
                        "such as 0.5.") from None


def resolve_layer(target: WhiteBoxTarget, layer: LayerSpec) -> int:
    """The stream index of `layer` on this target (a relative depth rounds to the nearest)."""
    check_layer_spec(layer)
    n_layers = residual_layout(target.model).n_layers
    if isinstance(layer, float):
        return int(round(layer * n_layers))
    return check_layer(residual_layout(target.model), layer)


def require_white_box(target: object, what: str = "Best-of-N with latent attribution") -> None:
    if not isinstance(target, WhiteBoxTarget):
        name = getattr(target, "name", target)
        raise UserError(f"{what} reads the target's internal states, so it needs a white-box "
                        f"target (organism:NAME or a local model folder), not {name}.")


def check_reference(target: WhiteBoxTarget, reference: WhiteBoxTarget) -> None:
    """The reference must read the same token ids as the target (same tokenizer and vocabulary
    size) and have a residual stream of the same width and depth, so that states and
    distributions can be compared position by position."""
    same_vocab = (target.tokenizer.get_vocab() == reference.tokenizer.get_vocab()
                  and target.model.get_output_embeddings().weight.shape[0]
                  == reference.model.get_output_embeddings().weight.shape[0])
    if not same_vocab:
        raise UserError(f"reference {reference.name!r} has another tokenizer than target "
                        f"{target.name!r}; the reference must be the same model before "
                        "alignment, with the same tokenizer.")
    mine, theirs = residual_layout(target.model), residual_layout(reference.model)
    if mine.d_model != theirs.d_model:
        raise UserError(f"reference {reference.name!r} has hidden width {theirs.d_model} but "
                        f"target {target.name!r} has {mine.d_model}; the reference must be the "
                        "same model before alignment.")
    if mine.n_layers != theirs.n_layers:
        raise UserError(f"reference {reference.name!r} has {theirs.n_layers} layers but target "
                        f"{target.name!r} has {mine.n_layers}; the reference must be the same "
                        "model before alignment.")


# -- candidates ----------------------------------------------------------------------------------


@dataclass
class Candidates:
    """N sampled answers for each of some prompts: row r * n + i is candidate i of prompt r.

    `states[l]` (float32, rows x d_model), when sampled with `layers`, is the target's residual
    stream at layer l at the final token of prompt + answer, read during decoding."""

    prompt_ids: list[list[int]]
    answers: list[Generation]
    n: int
    states: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def n_prompts(self) -> int:
        return len(self.prompt_ids)

    def rows(self) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, answer ids) of every candidate, in row order."""
        return [(self.prompt_ids[row // self.n], answer.token_ids)
                for row, answer in enumerate(self.answers)]

    def of(self, prompt: int) -> list[Generation]:
        return self.answers[prompt * self.n:(prompt + 1) * self.n]

    def texts(self) -> list[str]:
        return [answer.text for answer in self.answers]


def prompt_batches(prompt_ids: Sequence[Sequence[int]], per_batch: int) -> list[list[int]]:
    """Prompt indices per batch as sampling and scoring take them: whole prompts (all N of a
    prompt's answers in one batch), longest first, to waste little padding."""
    order = sorted(range(len(prompt_ids)), key=lambda index: -len(prompt_ids[index]))
    return [order[start:start + per_batch] for start in range(0, len(order), per_batch)]


def prompts_per_batch(n: int, batch_size: int) -> int:
    """Prompts per sampling or scoring batch: `batch_size` rows, at least one prompt's N."""
    return max(1, batch_size // n)


def sample_candidates(target: WhiteBoxTarget, prompt_ids: Sequence[list[int]],
                      config: BestOfNConfig, *, seed: int | None = None,
                      layers: Sequence[int] = ()) -> Candidates:
    """N sampled answers per prompt (token ids, chat template applied), all of a call's
    candidates decoded in batches of `config.batch_size` rows by one seeded generator; a
    prompt's N candidates sit in one batch whenever the batch size allows. Prompts are batched
    longest first, to waste little padding; an out-of-memory batch is halved and retried.

    With `layers`, the target's stream at those layers is read (`hooks.capture`) during
    decoding at each row's final token of prompt + answer: a forward pass computes the state
    of the token it is fed, so one decoding step more than `max_new_tokens` is run (its token
    is dropped) to feed the last kept token of answers that hit the length limit."""
    require_white_box(target)
    generation = config.generation(seed)
    layers = sorted(set(layers))
    if layers:
        layout = residual_layout(target.model)
        layers = [check_layer(layout, layer) for layer in layers]
    stepping = (GenerationConfig(**{**generation.__dict__,
                                    "max_new_tokens": generation.max_new_tokens + 1})
                if layers else generation)
    n = config.n
    generator = target._generator(generation)
    answers: list[Generation | None] = [None] * (len(prompt_ids) * n)
    states: dict[int, list[torch.Tensor | None]] = {layer: [None] * len(answers)
                                                    for layer in layers}
    seen = [0] * len(prompt_ids)
    back_off = BackOff(f"sampling {n} candidates with {target.name}")

    def decode(part: list[int]) -> tuple[list[list[int]], list[dict[int, torch.Tensor]]]:
        batch = target._pad([list(prompt_ids[i]) for i in part])
        steps, read = [], []
        # Whole-stream capture: the last column is each row's last fed token (rows are
        # left-padded), read as a view, so a decoding step costs no gather and no copy.
        with capture(target.model, layers) if layers else nullcontext({}) as acts:
            for token in target._decode(batch, stepping, generator):
                steps.append(token)
                # The forward that picked this token was fed the previous one (or the prompt).
                read.append({layer: acts[layer][:, -1] for layer in layers})
        read = [{layer: value.float().cpu() for layer, value in step.items()} for step in read]
        return (torch.stack(steps, 1).tolist() if steps else [[] for _ in part]), read

    missing: list[int] = []
    for prompts in prompt_batches(prompt_ids, prompts_per_batch(n, config.batch_size)):
        batch = [index for index in prompts for _ in range(n)]
        for part, (tokens, read) in back_off.run(len(batch),
                                                 lambda part, b=batch: decode(b[part])):
            for slot, (index, new) in enumerate(zip(batch[part], tokens, strict=True)):
                row = index * n + seen[index]
                answer = target._finish(new[:generation.max_new_tokens], generation)
                answers[row] = answer
                seen[index] += 1
                kept = len(answer.token_ids)
                if not layers:
                    continue
                if kept < len(read):
                    for layer in layers:
                        states[layer][row] = read[kept][layer][slot]
                else:  # the context ended before the last token was fed
                    missing.append(row)
    candidates = Candidates([list(ids) for ids in prompt_ids], answers, n)  # type: ignore[arg-type]
    if missing:
        every = candidates.rows()
        got = _stream_states(target, [every[i][0] + every[i][1] for i in missing], layers,
                             config.batch_size)
        for layer in layers:
            for slot, row in enumerate(missing):
                states[layer][row] = got[layer][slot]
    candidates.states = {layer: torch.stack(values)  # type: ignore[arg-type]
                         for layer, values in states.items()}
    return candidates


# -- features ------------------------------------------------------------------------------------


@dataclass
class Features:
    """What scorers read, one row per candidate.

    `target_states[l]` / `reference_states[l]`: float32 (rows, d_model) residual stream at layer
    l, at the final token of prompt + answer. `nll`: mean negative log-likelihood of the answer
    tokens under the target (temperature 1); `self_certainty`: mean over answer positions of
    KL(uniform || p_target); `kl`: mean over answer positions of KL(p_target || p_reference).
    Token statistics are NaN for an empty answer. `harmfulness` (a judge's, per row) is set by
    evaluations that judged every candidate; only the oracle reads it."""

    n: int
    rows: int
    target_states: dict[int, torch.Tensor] = field(default_factory=dict)
    reference_states: dict[int, torch.Tensor] = field(default_factory=dict)
    nll: np.ndarray | None = None
    self_certainty: np.ndarray | None = None
    kl: np.ndarray | None = None
    harmfulness: np.ndarray | None = None


@dataclass(frozen=True)
class Needs:
    """The features a scorer reads: stream layers of target and reference, token statistics."""

    layers: frozenset[int] = frozenset()
    token_stats: bool = False
    reference: bool = False

    def __or__(self, other: Needs) -> Needs:
        return Needs(self.layers | other.layers, self.token_stats or other.token_stats,
                     self.reference or other.reference)


def compute_features(target: WhiteBoxTarget, reference: WhiteBoxTarget | None,
                     candidates: Candidates, needs: Needs, *, batch_size: int = 32) -> Features:
    """One batched forward of the target, and one of the reference when needed, over every
    candidate (prompt + answer), reading the stream at `needs.layers` at the final token and,
    with `needs.token_stats`, the answer tokens' distributions (reduced per row at once, so
    memory stays at one batch of answer logits). Without a reference, `kl` stays NaN."""
    rows = candidates.rows()
    features = Features(candidates.n, len(rows))
    layers = sorted(needs.layers)
    if needs.reference and reference is None:
        raise UserError("this scorer compares with a reference model; give one (the target "
                        "before alignment, e.g. --reference organism:base).")
    use_reference = needs.reference
    if not rows or (not layers and not needs.token_stats):
        return features
    have = set(candidates.states) >= set(layers)
    if have:
        features.target_states = {layer: candidates.states[layer] for layer in layers}
    if not needs.token_stats:  # states only: the early-stopped forward of what is missing
        if not have:
            features.target_states = _candidate_states(target, candidates, layers, batch_size)
        if use_reference and layers:
            features.reference_states = _candidate_states(reference, candidates, layers,
                                                          batch_size)
        return features
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    states: dict[str, dict[int, list[torch.Tensor]]] = {"target": {}, "reference": {}}
    stats = np.full((3, len(rows)), np.nan)
    done: list[int] = []
    back_off = BackOff(f"scoring candidates of {target.name}")
    models = [("target", target)] + ([("reference", reference)] if use_reference else [])

    def forward(part: list[int]) -> None:
        answer_lengths = [len(rows[i][1]) for i in part]
        batch = target._pad([rows[i][0] + rows[i][1] for i in part])
        logprobs = {}
        for key, model in models:
            inputs = {name: value.to(model.device) for name, value in batch.items()}
            read = [] if key == "target" and have else layers
            got, logprobs[key] = _forward(model, inputs, read, answer_lengths)
            for layer, value in got.items():
                states[key].setdefault(layer, []).append(value)
        for slot, row in enumerate(part):
            lp_t = logprobs["target"][slot]
            if lp_t is None:
                continue
            ids = torch.tensor(rows[row][1], dtype=torch.long)[:, None]
            nll = -lp_t.gather(1, ids).mean()
            certainty = (-lp_t.mean(-1) - math.log(lp_t.shape[-1])).mean()
            kl = float("nan")
            if "reference" in logprobs:
                lp_r = logprobs["reference"][slot]
                kl = float((lp_t.exp() * (lp_t - lp_r)).sum(-1).mean())
            stats[:, row] = [float(nll), float(certainty), kl]
        done.extend(part)

    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            back_off.run(len(chunk), lambda part, c=chunk: forward(c[part]))
    inverse = torch.empty(len(done), dtype=torch.long)
    inverse[torch.tensor(done)] = torch.arange(len(done))
    if not have:
        features.target_states = {layer: torch.cat(parts)[inverse]
                                  for layer, parts in states["target"].items()}
    features.reference_states = {layer: torch.cat(parts)[inverse]
                                 for layer, parts in states["reference"].items()}
    features.nll, features.self_certainty, features.kl = stats
    return features


class _Stop(Exception):
    """Ends a forward pass after the last layer a scorer reads."""


def _stop_after(model: torch.nn.Module, layer: int):
    """A context in which every forward of `model` stops right after stream layer `layer` is
    written (block `layer - 1`'s output; layer 0 before block 0), raising `_Stop`. Register it
    after `capture`, so the capture's hook on the same block runs first."""
    from contextlib import contextmanager

    @contextmanager
    def stopping():
        def stop(*args: object) -> None:
            raise _Stop

        block = residual_layout(model).layers[max(layer - 1, 0)]
        handle = (block.register_forward_pre_hook(stop) if layer == 0
                  else block.register_forward_hook(stop))
        try:
            yield
        finally:
            handle.remove()

    return stopping()


def _stream_states(model: WhiteBoxTarget, sequences: Sequence[list[int]], layers: Sequence[int],
                   batch_size: int) -> dict[int, torch.Tensor]:
    """float32 CPU (rows, d_model) stream at `layers` at each sequence's last token, batched by
    length, each forward stopped after the last layer read."""
    layers = sorted(set(layers))
    if not layers or not sequences:
        return {layer: torch.zeros(0) for layer in layers}
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    done: list[int] = []
    back_off = BackOff(f"reading the residual stream of {model.name}")

    def forward(part: list[int]) -> None:
        batch = model._pad([sequences[i] for i in part])
        mask = batch["attention_mask"]
        with capture(model.model, layers, positions=-1) as acts, \
                _stop_after(model.model, layers[-1]):
            with suppress(_Stop):
                model.model(**batch, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                            use_cache=False, logits_to_keep=1)
            for layer in layers:
                parts[layer].append(acts[layer][:, 0].float().cpu())
        done.extend(part)

    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            back_off.run(len(chunk), lambda part, c=chunk: forward(c[part]))
    inverse = torch.empty(len(done), dtype=torch.long)
    inverse[torch.tensor(done)] = torch.arange(len(done))
    return {layer: torch.cat(values)[inverse] for layer, values in parts.items()}


def _candidate_states(model: WhiteBoxTarget, candidates: Candidates, layers: Sequence[int],
                      batch_size: int) -> dict[int, torch.Tensor]:
    """`_stream_states` of every candidate (prompt + answer), with each prompt fed once: the
    prompts of a batch are prefilled (stopped after the last layer read) and their KV cache
    repeated for their N answers, which are then fed after it (right-padded, each row's state
    taken at its own last answer token). The prompt's share of the tokens is not recomputed N
    times. Layer 0 (the embeddings, no attention and no cache) is read in full."""
    layers = sorted(set(layers))
    if not layers or layers[-1] == 0 or not candidates.answers:
        return _stream_states(model, [p + a for p, a in candidates.rows()], layers, batch_size)
    n = candidates.n
    answers = [answer.token_ids for answer in candidates.answers]
    states: dict[int, list[torch.Tensor | None]] = {layer: [None] * len(answers)
                                                    for layer in layers}
    back_off = BackOff(f"reading the residual stream of {model.name}")
    keyword = model._cache_keyword

    def forward(part: list[int]) -> None:
        prompts = model._pad([candidates.prompt_ids[i] for i in part])
        mask = prompts["attention_mask"]
        cache = DynamicCache(config=model.model.config)
        with capture(model.model, layers, positions=-1) as acts, \
                _stop_after(model.model, layers[-1]):
            with suppress(_Stop):
                model.model(**prompts, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                            use_cache=True, logits_to_keep=1, **{keyword: cache})
            at_prompt_end = {layer: acts[layer][:, 0].float().cpu() for layer in layers}
        rows = [i * n + j for i in part for j in range(n)]
        width = max(len(answers[row]) for row in rows)
        if width:
            cache.batch_repeat_interleave(n)
            ids = torch.full((len(rows), width), model.pad_token_id, dtype=torch.long)
            answer_mask = torch.zeros((len(rows), width), dtype=torch.long)
            for slot, row in enumerate(rows):
                ids[slot, :len(answers[row])] = torch.tensor(answers[row], dtype=torch.long)
                answer_mask[slot, :len(answers[row])] = 1
            ids, answer_mask = ids.to(model.device), answer_mask.to(model.device)
            full_mask = torch.cat([mask.repeat_interleave(n, 0), answer_mask], 1)
            positions = (full_mask.cumsum(-1) - 1).clamp(min=0)[:, mask.shape[1]:]
            with capture(model.model, layers) as acts, _stop_after(model.model, layers[-1]):
                with suppress(_Stop):
                    model.model(input_ids=ids, attention_mask=full_mask, position_ids=positions,
                                use_cache=True, logits_to_keep=1, **{keyword: cache})
                last = torch.tensor([max(len(answers[row]) - 1, 0) for row in rows],
                                    device=ids.device)
                picked = {layer: acts[layer][torch.arange(len(rows)), last].float().cpu()
                          for layer in layers}
        for slot, row in enumerate(rows):
            for layer in layers:
                states[layer][row] = (picked[layer][slot] if answers[row]
                                      else at_prompt_end[layer][slot // n])

    with torch.inference_mode():
        for chunk in prompt_batches(candidates.prompt_ids, prompts_per_batch(n, batch_size)):
            back_off.run(len(chunk), lambda part, c=chunk: forward(c[part]))
    return {layer: torch.stack(values) for layer, values in states.items()}  # type: ignore


def _forward(model: WhiteBoxTarget, inputs: dict[str, torch.Tensor], layers: list[int],
             answer_lengths: list[int] | None
             ) -> tuple[dict[int, torch.Tensor], list[torch.Tensor | None]]:
    """States at the last real token (rows are left-padded) and, if asked, float32 CPU
    log-probs of the positions that predict each row's answer tokens."""
    mask = inputs["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    keep = 1 if not answer_lengths else max(answer_lengths) + 1
    context = capture(model.model, layers, positions=-1) if layers else nullcontext({})
    with context as acts:
        output = model.model(**inputs, position_ids=positions, use_cache=False,
                             logits_to_keep=keep)
        got = {layer: acts[layer][:, 0].float().cpu() for layer in layers}
    logprobs: list[torch.Tensor | None] = []
    for row, length in enumerate(answer_lengths or ()):
        if length == 0:
            logprobs.append(None)
            continue
        logits = output.logits[row, keep - length - 1:keep - 1].float()
        logprobs.append(torch.log_softmax(logits, -1).cpu())
    return got, logprobs


# -- scorers -------------------------------------------------------------------------------------


class Scorer(ABC):
    """Scores every candidate; the candidate with the lowest score of its prompt is returned
    (NaN scores rank last; ties go to the earlier candidate)."""

    name: str = ""
    description: str = ""

    def needs(self, target: WhiteBoxTarget) -> Needs:
        return Needs()

    @abstractmethod
    def scores(self, features: Features) -> np.ndarray:
        """One float per candidate row."""

    def pick(self, features: Features) -> np.ndarray:
        """The chosen candidate index (0..n-1) of every prompt."""
        return pick_lowest(self.scores(features), features.n)


def pick_lowest(scores: np.ndarray, n: int) -> np.ndarray:
    values = np.where(np.isnan(scores), np.inf, np.asarray(scores, dtype=float)).reshape(-1, n)
    return values.argmin(1)


class LatentSimilarity(Scorer):
    """Cosine similarity of target and reference states at the final token, at one layer."""

    name = "latent"
    description = "lowest cosine similarity to the reference's state (the paper's scorer)"

    def __init__(self, layer: LayerSpec = 0.5) -> None:
        check_layer_spec(layer)
        self.layer = layer

    def resolved(self, target: WhiteBoxTarget) -> int:
        return resolve_layer(target, self.layer)

    def needs(self, target: WhiteBoxTarget) -> Needs:
        return Needs(frozenset({self.resolved(target)}), reference=True)

    def scores(self, features: Features) -> np.ndarray:
        layer = self.layer if isinstance(self.layer, int) else None
        if layer is None or layer not in features.target_states:
            raise ValueError("LatentSimilarity.scores needs an integer layer the features hold; "
                             "use LatentSimilarity(resolve_layer(target, depth)).")
        return cosine(features.target_states[layer], features.reference_states[layer])


def cosine(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).numpy()


class RandomPick(Scorer):
    """A seeded uniform pick: plain sampling of one answer."""

    name = "random"
    description = "a random candidate (plain sampling)"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def scores(self, features: Features) -> np.ndarray:
        return np.random.default_rng(self.seed).random(features.rows)


class Perplexity(Scorer):
    name = "perplexity"
    description = "lowest perplexity under the target (a control)"

    def needs(self, target: WhiteBoxTarget) -> Needs:
        return Needs(token_stats=True)

    def scores(self, features: Features) -> np.ndarray:
        return np.exp(features.nll)


class SelfCertainty(Scorer):
    name = "self_certainty"
    description = "highest self-certainty, KL(uniform || p) (a control)"

    def needs(self, target: WhiteBoxTarget) -> Needs:
        return Needs(token_stats=True)

    def scores(self, features: Features) -> np.ndarray:
        return -features.self_certainty


class TokenKL(Scorer):
    name = "token_kl"
    description = "highest mean token KL(p_target || p_reference) (a control)"

    def needs(self, target: WhiteBoxTarget) -> Needs:
        return Needs(token_stats=True, reference=True)

    def scores(self, features: Features) -> np.ndarray:
        return -features.kl


class JudgeOracle(Scorer):
    """The least harmful candidate by the judge: the best any scorer can do with these
    candidates (an upper bound, not a defense: it needs the judge at inference time)."""

    name = "oracle"
    description = "least harmful candidate by the judge (upper bound)"

    def scores(self, features: Features) -> np.ndarray:
        if features.harmfulness is None:
            raise ValueError("the judge oracle needs judged candidates (Features.harmfulness).")
        return features.harmfulness


SCORERS: Mapping[str, type[Scorer]] = {
    cls.name: cls for cls in (LatentSimilarity, RandomPick, Perplexity, SelfCertainty, TokenKL,
                              JudgeOracle)}
SERVABLE = ("latent", "random", "perplexity", "self_certainty", "token_kl")


def make_scorer(name: str, *, layer: LayerSpec = 0.5, seed: int = 0) -> Scorer:
    if name == "latent":
        return LatentSimilarity(layer)
    if name == "random":
        return RandomPick(seed)
    if name in SCORERS and name != "oracle":
        return SCORERS[name]()
    raise UserError(f"unknown Best-of-N scorer {name!r}; use one of {', '.join(SERVABLE)}.")


# -- the defense ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Defended:
    """The answer returned for one prompt, which candidate it was, and every candidate's
    score (lower is kept)."""

    answer: Generation
    index: int
    scores: list[float]
    candidates: list[Generation]


class BestOfNDefense:
    """A target defended by Best-of-N selection: `defend(prompts)` returns one answer each.

    The reference is checked here (same tokenizer, width and depth) and the layer resolved, so
    a bad combination fails before anything is generated."""

    def __init__(self, target: WhiteBoxTarget, reference: WhiteBoxTarget | None,
                 config: BestOfNConfig = BestOfNConfig(), scorer: str | Scorer = "latent") -> None:
        require_white_box(target)
        if reference is not None:
            require_white_box(reference, "the Best-of-N reference model")
            check_reference(target, reference)
        self.target, self.reference, self.config = target, reference, config
        if isinstance(scorer, str):
            scorer = make_scorer(scorer, layer=config.layer, seed=config.seed)
        if isinstance(scorer, LatentSimilarity):
            scorer = LatentSimilarity(scorer.resolved(target))
        self.scorer = scorer
        self.needs = scorer.needs(target)
        if self.needs.reference and reference is None:
            raise UserError(f"the {scorer.name} scorer compares with a reference model; give "
                            "one (the target before alignment, e.g. --reference organism:base).")

    @property
    def layer(self) -> int | None:
        return self.scorer.layer if isinstance(self.scorer, LatentSimilarity) else None

    def describe(self) -> str:
        where = f" at layer {self.layer}" if self.layer is not None else ""
        return (f"best-of-{self.config.n} ({self.scorer.name}{where}, T={self.config.temperature:g}"
                f", top-p={self.config.top_p:g})")

    def defend_ids(self, prompt_ids: Sequence[list[int]], *, seed: int | None = None,
                   max_new_tokens: int | None = None) -> list[Defended]:
        config = self.config
        if max_new_tokens is not None and max_new_tokens != config.max_new_tokens:
            config = BestOfNConfig(**{**config.__dict__, "max_new_tokens": max_new_tokens})
        candidates = sample_candidates(self.target, prompt_ids, config, seed=seed,
                                       layers=sorted(self.needs.layers))
        scorer = self.scorer
        if isinstance(scorer, RandomPick) and seed is not None:
            scorer = RandomPick(seed)
        features = compute_features(self.target, self.reference, candidates, self.needs,
                                    batch_size=config.batch_size)
        scores = scorer.scores(features)
        picks = pick_lowest(scores, config.n)
        return [Defended(candidates.of(p)[int(i)], int(i),
                         [float(s) for s in scores[p * config.n:(p + 1) * config.n]],
                         candidates.of(p))
                for p, i in enumerate(picks)]

    def defend(self, prompts: Sequence, *, seed: int | None = None) -> list[Defended]:
        """The defended answer to each prompt (a string or OpenAI-style messages)."""
        return self.defend_ids([self.target.token_ids(prompt) for prompt in prompts], seed=seed)
