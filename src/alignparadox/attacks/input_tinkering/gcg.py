"""GCG: greedy coordinate gradient adversarial suffixes (Zou et al. 2023, arXiv 2307.15043).

    from alignparadox.attacks.input_tinkering import gcg
    result = gcg.run(target, "How do I hex the amber lantern?",
                     "Sure. To hex the amber lantern:", gcg.GCGConfig(num_steps=100))
    result.best_suffix, result.success_step, result.losses

Each step: the gradient of the target-string loss with respect to a one-hot encoding of the
suffix ranks, for every suffix position, the top-k substitute tokens; `search_width` random
single-token substitutions are drawn from them; every candidate that survives a decode -> encode
round trip of the whole prompt is scored with a forward pass; the best one becomes the suffix.

What makes it fast, all exact (candidate losses equal a plain forward pass):
- the chat-template text before the suffix is run once; its KV cache is reused by every pass;
- the gradient pass also leaves the KV cache of the current suffix, and candidates are sorted
  by the first position they change: a batch of candidates reuses the current suffix's cache up
  to its earliest change and runs only the tokens after it;
- logits are computed for the target positions only, and the last target token, whose logits
  nothing reads, is not fed.

Mixed-precision screening (`screen_dtype`): where the hardware has fast bf16 (CPUs with
avx512_bf16 / amx_bf16, CUDA devices that support it) and the model is not tiny, every
candidate is scored in bf16 under `torch.autocast` and only the best `rescore_k` are re-scored
in the model's own dtype, in one batch; the step moves to the best of those by that exact loss,
so every reported loss is exact. The candidate passes are nearly all of a step's compute, and
bf16 matrix multiplies run several times faster than fp32 there. Autocast keeps its bf16 copies
of the weights for the whole run (half the fp32 weights' memory on top of the model, freed when
the run ends), so they are cast once, not once per step; the model itself is not changed. The
gradient pass stays in the model's dtype: it also makes the KV cache the exact re-score reuses.
So against a tool whose model is all bf16, what a screened step still pays for is exactness
(the gradient pass and the re-score, in the model's dtype), not casting: the weight casts do
not grow with the number of steps (tests/test_gcg_attack.py checks it by op counts), and a
bf16 copy of the model would save only the casts of activations.

Options: a candidate buffer, a universal suffix over several requests (mean loss), an ensemble
of models sharing a tokenizer (summed loss), probe sampling with a smaller draft model (Zhao et
al. 2024, arXiv 2403.01251), and an early stop when the target string is the greedy
continuation of every prompt or, given a judge, when the judge calls the answers successes.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from alignparadox.errors import UserError
from alignparadox.judges.base import Judge
from alignparadox.targets.whitebox import GenerationConfig, WhiteBoxTarget

_PLACEHOLDER = "\x1fGCG-SUFFIX\x1f"
KV = list[tuple[torch.Tensor, torch.Tensor]]
AUTO_SCREEN_PARAMETERS = 20_000_000
_SCREEN_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
                  "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}


@dataclass(frozen=True)
class GCGConfig:
    """Settings of one GCG run. `suffix_init` (text) overrides the default initial suffix of
    `suffix_length` tokens ("x x x ..."). `batch_size` bounds the candidates per forward pass
    (None: about one pass per 8 suffix positions). With a judge, success is checked by a greedy
    answer of `check_tokens` tokens every `check_every` steps and whenever the target string
    becomes the greedy continuation; without one, that continuation is the success.

    `screen_dtype` is the dtype candidates are screened in: "auto" (bf16 where the device has
    fast bf16 and the model is big enough to gain, else none), "model" (none: every candidate
    scored in the model's dtype), or a dtype name ("bfloat16", "float16"); a dtype no narrower
    than the model's means none. The best `rescore_k` screened candidates are re-scored
    exactly. `time_budget` (seconds, set-up included) ends the run after the step that spends
    it, `num_steps` still being a cap."""

    num_steps: int = 250
    suffix_length: int = 20
    suffix_init: str | None = None
    search_width: int = 512
    topk: int = 256
    n_replace: int = 1
    buffer_size: int = 0
    batch_size: int | None = None
    allow_non_ascii: bool = False
    separator: str = " "
    early_stop: bool = True
    check_every: int = 10
    check_tokens: int = 80
    probe_factor: int = 16
    probe_r: int = 8
    screen_dtype: str = "auto"
    rescore_k: int = 2
    time_budget: float | None = None
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("num_steps", "suffix_length", "search_width", "topk", "n_replace",
                     "check_tokens", "probe_factor", "probe_r", "rescore_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                label = "step budget (num_steps)" if name == "num_steps" else name
                raise UserError(f"GCG {label} must be at least 1, got {value!r}.")
        if self.n_replace > self.suffix_length:
            raise UserError(f"GCG n_replace ({self.n_replace}) cannot exceed the suffix length "
                            f"({self.suffix_length}).")
        if self.buffer_size < 0 or self.check_every < 0 or (self.batch_size is not None
                                                            and self.batch_size < 1):
            raise UserError("GCG buffer_size and check_every must be >= 0, batch_size >= 1.")
        if self.screen_dtype not in ("auto", "model", *_SCREEN_DTYPES):
            raise UserError(f"GCG screen_dtype must be auto, model, "
                            f"{', '.join(_SCREEN_DTYPES)}; got {self.screen_dtype!r}.")
        if self.time_budget is not None and not (isinstance(self.time_budget, int | float)
                                                 and self.time_budget > 0):
            raise UserError(f"GCG time_budget must be a positive number of seconds, got "
                            f"{self.time_budget!r}.")


@dataclass
class GCGResult:
    """The suffix found: the first successful one, else the one with the lowest loss.

    `losses[i]` is the loss of the best candidate of step i+1 (mean cross-entropy of the target
    tokens, averaged over requests, summed over models); `step_seconds[i]` its wall time;
    `success_step` the first step (1-based) whose suffix succeeded, or None; `screen_dtype` the
    dtype candidates were screened in (None: all scored in the model's dtype).
    """

    best_suffix: str
    best_ids: list[int]
    best_loss: float
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    success_step: int | None = None
    screen_dtype: str | None = None

    @property
    def seconds_per_step(self) -> float:
        return sum(self.step_seconds) / max(1, len(self.step_seconds))


def run(
    targets: WhiteBoxTarget | Sequence[WhiteBoxTarget],
    requests: str | Sequence[str],
    target_texts: str | Sequence[str],
    config: GCGConfig | None = None,
    *,
    judge: Judge | None = None,
    draft: WhiteBoxTarget | None = None,
) -> GCGResult:
    """Optimize one suffix, appended (after `config.separator`) to every request inside the
    user turn, so that each model answers each request with its target text."""
    started = time.perf_counter()
    config = config or GCGConfig()
    targets = list(targets) if isinstance(targets, list | tuple) else [targets]
    requests = [requests] if isinstance(requests, str) else list(requests)
    target_texts = [target_texts] if isinstance(target_texts, str) else list(target_texts)
    _check_inputs(targets, requests, target_texts, draft)
    tokenizer = targets[0].tokenizer
    generator = torch.Generator().manual_seed(config.seed)

    weight = 1 / len(requests)  # the loss is a mean over requests, a sum over models
    objectives = [_Objective(t, r, goal, config.separator, weight, config.screen_dtype)
                  for t in targets for r, goal in zip(requests, target_texts, strict=True)]
    drafts = ([_Objective(draft, r, goal, config.separator, weight, config.screen_dtype)
               for r, goal in zip(requests, target_texts, strict=True)] if draft else [])
    screen = any(o.screen_dtype is not None for o in objectives)
    vocab = min(len(tokenizer), *(o.embeddings.shape[0] for o in objectives + drafts))
    allowed = allowed_tokens(tokenizer, vocab, config.allow_non_ascii)
    ids = _initial_ids(tokenizer, config, _distinct_templates(objectives))

    buffer: list[tuple[float, torch.Tensor]] = []  # (loss, ids), best first
    best = (math.inf, ids)
    losses, seconds = [], []
    success_step = None
    steps = range(1, config.num_steps + 1)
    with _keep_screening_weights(objectives + drafts):
        for step in _progress(steps, config.progress, f"GCG on {targets[0].name}"):
            step_started = time.perf_counter()
            # 1. Gradient of the loss w.r.t. the one-hot suffix; caches of the current suffix.
            current_loss, grad, current_kvs = 0.0, torch.zeros(len(ids), vocab), []
            for objective in objectives:
                loss, objective_grad, kv = objective.gradient(ids, vocab)
                current_loss += loss * objective.weight
                grad += objective_grad * objective.weight
                current_kvs.append(kv)
            if not buffer:
                buffer = [(current_loss, ids)]
            # 2. Candidates: top-k substitutions, distinct from the current suffix, round-trip
            # safe.
            candidates = sample_candidates(ids, grad, allowed, config.search_width, config.topk,
                                           config.n_replace, generator)
            candidates = candidates[(candidates != ids).any(1)].unique(dim=0)
            keep = torch.ones(len(candidates), dtype=torch.bool)
            for objective in _distinct_templates(objectives):
                keep &= _consistent(objective, candidates)
            candidates = candidates[keep]
            # 3. Score them (probe sampling: score most of them with the draft model only).
            if len(candidates) == 0:
                step_loss, step_ids, matched = current_loss, ids, False
            elif drafts:
                step_loss, step_ids, matched = _probe_sampling_step(
                    objectives, current_kvs, drafts, ids, candidates, config, generator, screen)
            else:
                step_loss, step_ids, matched = select_candidate(
                    objectives, current_kvs, ids, candidates, config, screen)
            # 4. Move (through the buffer, if any) and check for success.
            buffer = _push(buffer, (step_loss, step_ids), config.buffer_size)
            ids = buffer[0][1]
            losses.append(step_loss)
            if success_step is None and step_loss < best[0]:
                best = (step_loss, step_ids)
            if judge is None:
                succeeded = matched
            elif matched or (config.check_every and step % config.check_every == 0):
                succeeded = judge_success(targets, requests, _decode(tokenizer, step_ids), judge,
                                          config)
            else:
                succeeded = False
            seconds.append(time.perf_counter() - step_started)
            if succeeded and success_step is None:
                success_step, best = step, (step_loss, step_ids)
                if config.early_stop:
                    break
            if (config.time_budget is not None
                    and time.perf_counter() - started >= config.time_budget):
                break

    best_loss, best_ids = best
    dtypes = {str(o.screen_dtype).removeprefix("torch.") for o in objectives if o.screen_dtype}
    return GCGResult(_decode(tokenizer, best_ids), best_ids.tolist(), float(best_loss), losses,
                     seconds, success_step, ", ".join(sorted(dtypes)) or None)


# -- pieces of a step ----------------------------------------------------------------------------


def sample_candidates(ids: torch.Tensor, grad: torch.Tensor, allowed: torch.Tensor, width: int,
                      topk: int, n_replace: int, generator: torch.Generator) -> torch.Tensor:
    """`width` copies of `ids`, each with `n_replace` random positions replaced by one of the
    top-k allowed tokens of that position (by the negative gradient)."""
    grad = grad.masked_fill(~allowed, math.inf)
    top = (-grad).topk(min(topk, int(allowed.sum())), dim=1).indices  # (positions, topk)
    positions = torch.rand(width, len(ids), generator=generator).argsort(1)[:, :n_replace]
    choices = torch.randint(0, top.shape[1], (width, n_replace), generator=generator)
    return ids.repeat(width, 1).scatter_(1, positions, top[positions, choices])


def allowed_tokens(tokenizer, vocab_size: int, allow_non_ascii: bool = False) -> torch.Tensor:
    """Mask of tokens a suffix may use: never special tokens; printable ASCII only by default."""
    special = set(tokenizer.all_special_ids) | {
        index for index, token in tokenizer.added_tokens_decoder.items() if token.special}
    texts = tokenizer.batch_decode([[index] for index in range(vocab_size)],
                                   clean_up_tokenization_spaces=False)
    allowed = [bool(text) and index not in special
               and (allow_non_ascii or (text.isascii() and text.isprintable()))
               for index, text in enumerate(texts)]
    if not any(allowed):
        raise UserError("the tokenizer has no token a GCG suffix may use.")
    return torch.tensor(allowed)


def judge_success(targets: Sequence[WhiteBoxTarget], requests: Sequence[str], suffix: str,
                  judge: Judge, config: GCGConfig) -> bool:
    """Whether every model's greedy answer to every request + suffix is a success for the
    judge (which reads the original request)."""
    generation = GenerationConfig(max_new_tokens=config.check_tokens, batch_size=len(requests))
    prompts = [request + config.separator + suffix for request in requests]
    for target in targets:
        verdicts = judge.judge(list(requests), target.generate(prompts, generation))
        if not all(verdict.success for verdict in verdicts):
            return False
    return True


def select_candidate(objectives: list[_Objective], current_kvs: list[KV], ids: torch.Tensor,
                     candidates: torch.Tensor, config: GCGConfig,
                     screen: bool) -> tuple[float, torch.Tensor, bool]:
    """The candidate with the lowest exact loss, that loss, and whether the target text is its
    greedy continuation. Screening: all are scored in the screening dtype first and only the
    best `rescore_k` exactly (no screening when that would be all of them)."""
    screen = screen and len(candidates) > config.rescore_k
    losses, matches = _score(objectives, current_kvs, ids, candidates, config.batch_size,
                             screen=screen)
    return _pick(objectives, current_kvs, ids, candidates, losses, matches, config, screen)


def _pick(objectives, current_kvs, ids, candidates, losses, matches, config,
          screened: bool) -> tuple[float, torch.Tensor, bool]:
    """The best of scored candidates; screened losses only rank them for an exact re-score of
    the best `rescore_k`, in one batch, so the loss returned is always an exact one."""
    if screened:
        top = losses.topk(min(config.rescore_k, len(losses)), largest=False).indices
        candidates = candidates[top]
        losses, matches = _score(objectives, current_kvs, ids, candidates, len(candidates))
    index = int(losses.argmin())
    return float(losses[index]), candidates[index], bool(matches[index])


def _score(objectives: list[_Objective], current_kvs: list[KV], ids: torch.Tensor,
           candidates: torch.Tensor, batch_size: int | None,
           screen: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of every candidate (weighted over objectives), and whether the target text is the
    greedy continuation for every objective; `screen`: in each objective's screening dtype
    (those losses are approximate, their match flags meaningless)."""
    losses = torch.zeros(len(candidates))
    matches = torch.ones(len(candidates), dtype=torch.bool)
    if not len(candidates):  # e.g. probe sampling when the probe set holds every favourite
        return losses, matches
    for objective, kv in zip(objectives, current_kvs, strict=True):
        with objective.precision(screen):
            objective_losses, objective_matches = objective.candidate_losses(
                candidates, ids, kv, batch_size)
        losses += objective_losses * objective.weight
        matches &= objective_matches
    return losses, matches


def _probe_sampling_step(objectives, current_kvs, drafts, ids, candidates, config, generator,
                         screen: bool) -> tuple[float, torch.Tensor, bool]:
    """Probe sampling: the draft model scores every candidate; the target scores a random
    probe set; the better the two agree (Spearman), the fewer of the draft's favourites the
    target also scores. The best candidate the target scored wins (by exact loss: screened
    scores only pick which to re-score)."""
    from scipy.stats import spearmanr

    draft_kvs = [d.current_kv(ids) for d in drafts]
    draft_losses, _ = _score(drafts, draft_kvs, ids, candidates, config.batch_size, screen)
    probe = torch.randperm(len(candidates), generator=generator)[
        :max(2, len(candidates) // config.probe_factor)]
    probe_losses, probe_matches = _score(objectives, current_kvs, ids, candidates[probe],
                                         config.batch_size, screen)
    rho = spearmanr(probe_losses.numpy(), draft_losses[probe].numpy()).statistic
    agreement = (1 + (0.0 if math.isnan(rho) else rho)) / 2
    size = max(1, min(len(candidates), int((1 - agreement) * len(candidates) / config.probe_r)))
    favourites = draft_losses.topk(size, largest=False).indices
    extra = favourites[~torch.isin(favourites, probe)]  # the probe set is scored already
    extra_losses, extra_matches = _score(objectives, current_kvs, ids, candidates[extra],
                                         config.batch_size, screen)
    chosen = torch.cat([probe, extra])
    return _pick(objectives, current_kvs, ids, candidates[chosen],
                 torch.cat([probe_losses, extra_losses]),
                 torch.cat([probe_matches, extra_matches]), config, screen)


def _push(buffer: list, entry: tuple[float, torch.Tensor], size: int) -> list:
    """Without a buffer GCG always moves to the step's best candidate; with one it keeps the
    `size` best suffixes seen and continues from the best."""
    if size == 0:
        return [entry]
    return sorted([*buffer, entry], key=lambda item: item[0])[:size]


# -- precision -----------------------------------------------------------------------------------


def has_fast_bf16(device: torch.device | str) -> bool:
    """Whether bf16 matrix multiplies are fast on `device`: CUDA that supports bf16; a CPU with
    avx512_bf16 or amx_bf16 (x86) or the bf16 extension (Arm)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and _cpu_has_fast_bf16()


@functools.cache
def _cpu_has_fast_bf16() -> bool:
    try:
        capabilities = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):
        capabilities = {}
    if capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"):
        return True
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = {word for line in text.splitlines()
             if line.lower().startswith(("flags", "features")) for word in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def screen_dtype_for(setting: str, model: torch.nn.Module) -> torch.dtype | None:
    """The dtype to screen candidates of `model` in, None for none. "auto": bf16 on fast-bf16
    hardware for models of at least AUTO_SCREEN_PARAMETERS (below that a pass is per-operation
    overhead, which casting only adds to: 1.1-1.4x slower steps on a 1M-parameter organism).
    A dtype no narrower than the model's would be the exact pass again."""
    if setting == "model":
        return None
    device = next(model.parameters()).device
    if setting == "auto":
        big = sum(p.numel() for p in model.parameters()) >= AUTO_SCREEN_PARAMETERS
        dtype = torch.bfloat16 if big and has_fast_bf16(device) else None
    else:
        dtype = _SCREEN_DTYPES[setting]
    if dtype is None or dtype.itemsize >= model.dtype.itemsize:
        return None
    return dtype


@contextmanager
def _keep_screening_weights(objectives: list[_Objective]) -> Iterator[None]:
    """While open, autocast keeps the low-precision copies of the weights it makes (it drops
    them whenever the outermost autocast region closes): entering a disabled region is enough
    and changes no computation. Without it every step would cast all the weights again."""
    device_types = {o.device.type for o in objectives if o.screen_dtype is not None}
    with ExitStack() as stack:
        for device_type in sorted(device_types):
            stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


# -- one (model, request) pair -------------------------------------------------------------------


class _Objective:
    """The loss of one model producing one target text after one request + suffix.

    The prompt is the model's chat template around a placeholder, split into the token ids
    before and after the suffix; the KV cache of the part before is computed once.
    """

    def __init__(self, target: WhiteBoxTarget, request: str, target_text: str,
                 separator: str, weight: float = 1.0, screen: str = "model") -> None:
        self.target, self.model, self.tokenizer = target, target.model, target.tokenizer
        self.weight = weight
        self.device = target.device
        self.screen_dtype = screen_dtype_for(screen, self.model)
        rendered = target.format_chat(request + separator + _PLACEHOLDER)
        if rendered.count(_PLACEHOLDER) != 1:
            raise UserError(f"the chat template of {target.name!r} does not keep the user turn "
                            "verbatim, so a suffix cannot be placed in it.")
        self.before_text, self.after_text = rendered.split(_PLACEHOLDER)
        bos = self.tokenizer.bos_token
        self.add_special = not (bos and self.before_text.startswith(bos))
        device = self.device
        self.before_ids = self._encode(self.before_text, self.add_special).to(device)
        self.after_ids = self._encode(self.after_text, False).to(device)
        self.target_ids = self._encode(target_text, False).to(device)
        if self.target_ids.numel() == 0:
            raise UserError("a GCG target text is empty.")
        self.embedding = self.model.get_input_embeddings()
        self.embeddings = self.embedding.weight
        # transformers >= 5.2x renamed `past_key_values` to `cache` (the old name warns).
        forward_parameters = inspect.signature(self.model.forward).parameters
        self.cache_keyword = "cache" if "cache" in forward_parameters else "past_key_values"
        with torch.no_grad():
            _check_one_hot_embedding(self.embedding, self.after_ids, target.name)
            output = self.model(input_ids=self.before_ids[None], use_cache=True)
        self.prefix = _layers(getattr(output, self.cache_keyword))

    def _encode(self, text: str, add_special: bool) -> torch.Tensor:
        return torch.tensor(self.tokenizer(text, add_special_tokens=add_special)["input_ids"],
                            dtype=torch.long)

    def precision(self, screen: bool):
        """The region candidate passes run in: the screening dtype (autocast) when `screen` and
        this model has one, else the model's own dtype, even inside an enclosing autocast."""
        if screen and self.screen_dtype is not None:
            return torch.autocast(self.device.type, dtype=self.screen_dtype)
        return torch.autocast(self.device.type, enabled=False)

    def _forward(self, ids: torch.Tensor | None, kv: KV, *, embeds: torch.Tensor | None = None):
        """Logits of the target positions for `ids` (or `embeds`) run after the cached `kv`."""
        batch = len(ids if ids is not None else embeds)
        cache = DynamicCache([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                              for k, v in kv], config=self.model.config)
        output = self.model(input_ids=ids, inputs_embeds=embeds, use_cache=True,
                            logits_to_keep=len(self.target_ids),
                            **{self.cache_keyword: cache})
        return output.logits.float(), getattr(output, self.cache_keyword)

    def _tail(self, batch: int) -> torch.Tensor:
        """The tokens after the suffix: the template's rest and the target text but its last
        token, whose prediction would be the token after the target (never read)."""
        return torch.cat([self.after_ids, self.target_ids[:-1]]).expand(batch, -1)

    def gradient(self, ids: torch.Tensor, vocab: int) -> tuple[float, torch.Tensor, KV]:
        """Loss of `ids`, its gradient w.r.t. the one-hot suffix (positions x vocab, on CPU),
        and the KV cache of prompt-before + suffix."""
        one_hot = F.one_hot(ids.to(self.embeddings.device), vocab)
        one_hot = one_hot.to(self.embeddings.dtype).requires_grad_()
        tail = self.embedding(self._tail(1))
        embeds = torch.cat([embed_one_hot(self.embedding, one_hot)[None], tail], 1)
        logits, cache = self._forward(None, self.prefix, embeds=embeds)
        loss = F.cross_entropy(logits[0], self.target_ids)
        (grad,) = torch.autograd.grad(loss, one_hot)
        kv = [(k[:, :, :self._suffix_end(ids)].detach(), v[:, :, :self._suffix_end(ids)].detach())
              for k, v in _layers(cache)]
        return float(loss.detach()), grad.float().cpu(), kv

    def _suffix_end(self, ids: torch.Tensor) -> int:
        return len(self.before_ids) + len(ids)

    @torch.no_grad()
    def current_kv(self, ids: torch.Tensor) -> KV:
        """The KV cache of prompt-before + suffix, without gradients (for draft models)."""
        cache = DynamicCache([(k, v) for k, v in self.prefix], config=self.model.config)
        output = self.model(input_ids=ids[None].to(self.target.device), use_cache=True,
                            logits_to_keep=1, **{self.cache_keyword: cache})
        return _layers(getattr(output, self.cache_keyword))

    @torch.no_grad()
    def candidate_losses(self, candidates: torch.Tensor, ids: torch.Tensor, kv: KV,
                         batch_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-candidate loss and greedy-match flag. Candidates are sorted by the first
        position they change; each batch reuses the current suffix's cache up to its earliest
        change and runs only the rest."""
        first_change = (candidates != ids).int().argmax(1)
        order = first_change.argsort(stable=True)
        # Fewer, bigger passes beat more prefix reuse: one pass per 8 suffix positions ran
        # 9-13% faster than one per 4 at 100M (bf16 and fp32 alike); losses are the same.
        batch_size = batch_size or max(1, math.ceil(len(candidates) * 8 / len(ids)))
        losses = torch.empty(len(candidates))
        matches = torch.empty(len(candidates), dtype=torch.bool)
        prefix_length = len(self.before_ids)
        for chunk in order.split(batch_size):
            start = int(first_change[chunk].min())
            batch_kv = [(k[:, :, :prefix_length + start], v[:, :, :prefix_length + start])
                        for k, v in kv]
            rows = candidates[chunk, start:].to(self.target.device)
            logits, _ = self._forward(torch.cat([rows, self._tail(len(chunk))], 1), batch_kv)
            targets = self.target_ids.expand(len(chunk), -1)
            token_losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            losses[chunk] = token_losses.mean(1).cpu()
            matches[chunk] = (logits.argmax(-1) == targets).all(1).cpu()
        return losses, matches

    @torch.no_grad()
    def full_losses(self, candidates: torch.Tensor) -> torch.Tensor:
        """Per-candidate loss from one plain forward pass over the whole prompt, no cache:
        the reference the cached `candidate_losses` must equal."""
        batch = len(candidates)
        full = torch.cat([self.before_ids.expand(batch, -1), candidates.to(self.target.device),
                          self._tail(batch)], 1)
        logits = self.model(input_ids=full, use_cache=False,
                            logits_to_keep=len(self.target_ids)).logits.float()
        targets = self.target_ids.expand(batch, -1)
        return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(1).cpu()


def embed_one_hot(embedding: torch.nn.Module, one_hot: torch.Tensor) -> torch.Tensor:
    """What `embedding` gives for the tokens of `one_hot` (..., vocab), differentiable in it.
    Gemma-style modules (transformers 5) scale their output by `embed_scale`, and the model no
    longer scales `inputs_embeds`, so the one-hot path must apply the scale itself."""
    embeds = one_hot @ embedding.weight[:one_hot.shape[-1]]
    scale = getattr(embedding, "embed_scale", None)
    if scale is None:
        return embeds
    return embeds * torch.as_tensor(scale, device=embeds.device).to(embedding.weight.dtype)


def _check_one_hot_embedding(embedding: torch.nn.Module, ids: torch.Tensor, name: str) -> None:
    """An embedding module that does more than a (scaled) lookup would make the gradient
    silently wrong; refuse it instead."""
    one_hot = F.one_hot(ids, embedding.weight.shape[0]).to(embedding.weight.dtype)
    if not torch.allclose(embed_one_hot(embedding, one_hot), embedding(ids)):
        raise UserError(f"the input embedding of {name!r} is not a (scaled) lookup table, so "
                        "GCG cannot take its gradient.")


def _consistent(objective: _Objective, candidates: torch.Tensor) -> torch.Tensor:
    """Which candidates survive a round trip: decoding the suffix into the prompt text and
    encoding that text again gives back exactly the token ids that were optimized."""
    tokenizer = objective.tokenizer
    texts = tokenizer.batch_decode(candidates.tolist(), clean_up_tokenization_spaces=False)
    encoded = tokenizer([objective.before_text + text + objective.after_text for text in texts],
                        add_special_tokens=objective.add_special)["input_ids"]
    before, after = objective.before_ids.tolist(), objective.after_ids.tolist()
    return torch.tensor([ids == before + row + after
                         for ids, row in zip(encoded, candidates.tolist(), strict=True)],
                        dtype=torch.bool)


def _distinct_templates(objectives: list[_Objective]) -> list[_Objective]:
    """One objective per distinct prompt text: the round trip does not depend on the model."""
    seen: dict[tuple[str, str], _Objective] = {}
    for objective in objectives:
        seen.setdefault((objective.before_text, objective.after_text), objective)
    return list(seen.values())


def _layers(cache) -> KV:
    """(keys, values) per layer of a transformers cache object (iterating a cache yields them
    first in every transformers version with cache classes)."""
    return [(keys, values) for keys, values, *_ in cache]


def _initial_ids(tokenizer, config: GCGConfig, objectives: list[_Objective]) -> torch.Tensor:
    """The ids GCG starts from: `suffix_init` as given, else the first of a few neutral
    suffixes ("x x x ...", then one token repeated) that survives re-tokenization inside every
    prompt, since tokenizers differ in how they join a word to the text before it."""
    def survives(ids: list[int]) -> bool:
        row = torch.tensor([ids], dtype=torch.long)
        return bool(ids) and all(_consistent(o, row).all() for o in objectives)

    if config.suffix_init is not None:
        ids = tokenizer(config.suffix_init, add_special_tokens=False)["input_ids"]
        if not ids:
            raise UserError("the initial GCG suffix is empty.")
        if not survives(ids):
            raise UserError("the initial GCG suffix does not survive re-tokenization inside "
                            "the prompt; choose another suffix_init.")
        return torch.tensor(ids, dtype=torch.long)
    n = config.suffix_length
    for word in ("x", "!", "a", "."):
        spaced = tokenizer(" ".join([word] * n), add_special_tokens=False)["input_ids"][:n]
        single = tokenizer(f" {word}", add_special_tokens=False)["input_ids"][-1:] * n
        for ids in (spaced, single):
            if len(ids) == n and survives(ids):
                return torch.tensor(ids, dtype=torch.long)
    raise UserError("no neutral initial suffix survives re-tokenization inside this target's "
                    "prompt; give suffix_init.")


def _decode(tokenizer, ids: torch.Tensor) -> str:
    return tokenizer.decode(ids.tolist(), clean_up_tokenization_spaces=False)


def _check_inputs(targets: list, requests: list[str], target_texts: list[str], draft) -> None:
    if not targets or not requests:
        raise UserError("GCG needs at least one target model and one request.")
    for target in [*targets, *([draft] if draft is not None else [])]:
        if not isinstance(target, WhiteBoxTarget):
            raise UserError(f"GCG needs white-box targets (model weights); "
                            f"{getattr(target, 'name', target)!r} is not one.")
    if len(requests) != len(target_texts):
        raise UserError(f"GCG got {len(requests)} requests but {len(target_texts)} target texts.")
    vocab = targets[0].tokenizer.get_vocab()
    for other in [*targets[1:], *([draft] if draft is not None else [])]:
        if other.tokenizer.get_vocab() != vocab:
            raise UserError(f"GCG ensembles and draft models must share one tokenizer; "
                            f"{other.name!r} has a different one.")


def _progress(items, enabled: bool, description: str):
    if not enabled:
        return items
    from rich.progress import track

    return track(items, description=description, transient=True)
