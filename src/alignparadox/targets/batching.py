"""Continuous batching for `paradox serve`: one worker thread owns the model and decodes every
in-flight request together, one token per request per step.

A request that arrives while the worker is idle waits `window` seconds for company (up to
`max_batch` rows); one that arrives while a batch is decoding is prefilled on its own and joins
that batch at the next step; a finished row leaves at once (its KV-cache rows are dropped and the
left padding that no remaining row needs is cut away). Joining and leaving edit the KV cache's
tensors, which is done only for caches made of plain `DynamicLayer`s (full attention: Llama,
Qwen2, Mistral without a sliding window, GPT-2, ...). For any other cache the worker falls back to
window batching: a batch runs until its last row ends, and later requests wait for the next one.

What batching may change, and what it does not. Every row keeps its own positions, its own
stopping rule and, when sampling, its own generator seeded by its own seed, so no request's
answer depends on the *contents* of another. It can still depend on the batch's *shape*: a row
padded to a wider batch goes through differently sized matrix products, whose float sums may
round differently, and over a long greedy answer one such difference can flip an argmax. The
serve benchmark measures how often that happens. With `max_batch=1` every request is decoded
alone by exactly the forward passes `WhiteBoxTarget.complete([prompt], config)` makes, so
answers are bit-identical to local generation.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from alignparadox.targets.whitebox import FinishReason, GenerationConfig, WhiteBoxTarget, _pick

logger = logging.getLogger("alignparadox.serve")

GenerationContext = Callable[[], AbstractContextManager]
TopLogprobs = list[tuple[int, float]]


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token, its log-probability under the model (temperature 1, no top-p), and
    the `top` most likely tokens at that step."""

    token_id: int
    logprob: float
    top: TopLogprobs


@dataclass(frozen=True)
class Completion:
    """One finished row. `token_ids` are the generated tokens (an end token excluded; with a
    stop string, up to the token that completed it); `text` is cut before the stop string."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    logprobs: list[TokenLogprob] | None = None


@dataclass
class Job:
    """One row to generate: prompt token ids and decoding settings. `on_text`, if given, is
    called from the worker thread with each new piece of text as it becomes final (never a
    piece that a stop string could still remove). `future` gets the `Completion`."""

    prompt_ids: list[int]
    config: GenerationConfig
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    on_text: Callable[[str], None] | None = None
    future: Future = field(default_factory=Future)
    cancelled: bool = False

    def cancel(self) -> None:
        """Stop generating this row (its client went away); its future is cancelled."""
        self.cancelled = True


class _Row:
    """The worker's state for one job in the batch."""

    def __init__(self, job: Job, target: WhiteBoxTarget) -> None:
        self.job = job
        self.target = target
        room = (target.context_length or 1 << 62) - len(job.prompt_ids)
        self.budget = min(job.config.max_new_tokens, room)
        self.tokens: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.generator = (torch.Generator(device=target.device).manual_seed(job.config.seed)
                          if job.config.do_sample else None)
        self.emitted = ""
        self.done: Completion | None = None
        self.needs_text = bool(job.stop) or job.on_text is not None

    def add(self, token: int, logits: torch.Tensor | None) -> None:
        """Record the token picked at this step and decide whether the row is finished."""
        if token in self.target.stop_token_ids:
            self._finish("stop")
            return
        self.tokens.append(token)
        if logits is not None:
            self._add_logprob(token, logits)
        if self.needs_text:
            text = self._text()
            cut = _first_stop(text, self.job.stop, len(self.emitted))
            if cut is not None:
                self._finish("stop", text[:cut])
                return
            self._emit(_final_part(text, self.job.stop))
        if len(self.tokens) >= self.budget:
            self._finish("length")

    def _add_logprob(self, token: int, logits: torch.Tensor) -> None:
        logprobs = torch.log_softmax(logits, -1)
        top: TopLogprobs = []
        if self.job.top_logprobs:
            values, ids = logprobs.topk(self.job.top_logprobs)
            top = list(zip(ids.tolist(), values.tolist(), strict=True))
        self.logprobs.append(TokenLogprob(token, float(logprobs[token]), top))

    def _text(self) -> str:
        return self.target.tokenizer.decode(self.tokens, skip_special_tokens=True)

    def _emit(self, text: str) -> None:
        if self.job.on_text is not None and len(text) > len(self.emitted) \
                and text.startswith(self.emitted):
            self.job.on_text(text[len(self.emitted):])
        if text.startswith(self.emitted):
            self.emitted = text

    def _finish(self, reason: FinishReason, text: str | None = None) -> None:
        text = self._text() if text is None else text
        self._emit(text)
        self.done = Completion(text, list(self.tokens), reason,
                               self.logprobs if self.job.logprobs else None)


def _first_stop(text: str, stops: tuple[str, ...], checked: int) -> int | None:
    """Where the earliest stop string starts in `text`, looking only where a new one can be
    (text before `checked` was already final, so a match must end after it)."""
    found = None
    for stop in stops:
        index = text.find(stop, max(0, checked - len(stop) + 1))
        if index >= 0 and (found is None or index < found):
            found = index
    return found


def _final_part(text: str, stops: tuple[str, ...]) -> str:
    """The prefix of `text` that no later token can change: an unfinished multi-byte character
    and any suffix that could be the start of a stop string are held back."""
    end = len(text.rstrip("\ufffd"))
    for stop in stops:
        for size in range(min(len(stop) - 1, end), 0, -1):
            if text[:end].endswith(stop[:size]):
                end -= size
                break
    return text[:end]


class QueueWorker:
    """One thread that owns a model and answers queued jobs (`_run`, in subclasses).
    `submit(job)` queues a job and returns its future; `close()` stops the thread and fails the
    jobs still queued."""

    thread_name = "paradox-serve-generation"

    def _start_thread(self) -> None:
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        raise NotImplementedError

    def submit(self, job: Job) -> Future:
        if self._closed.is_set():
            raise RuntimeError("the generation worker is closed")
        self._queue.put(job)
        return job.future

    def close(self, timeout: float = 30) -> None:
        self._closed.set()
        self._queue.put(None)
        self._thread.join(timeout)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                _fail(job, RuntimeError("the server is shutting down"))


class BatchWorker(QueueWorker):
    """The generation thread: queued jobs are generated together, in batches of up to
    `max_batch`, and `close()` also fails the jobs still running."""

    def __init__(self, target: WhiteBoxTarget, *, max_batch: int = 16, window: float = 0.005,
                 generation_context: GenerationContext | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.target = target
        self.max_batch = max_batch
        self.window = window
        self.generation_context = generation_context or nullcontext
        self._rows: list[_Row] = []
        self._start_thread()

    # -- the worker thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed.is_set():
            first = self._queue.get()
            if first is None:
                break
            jobs = [first, *self._gather(self.max_batch - 1, self.window)]
            try:
                with self.generation_context():
                    self._decode(jobs)
            except Exception as error:  # a failed forward pass fails its batch, not the server
                logger.exception("generation failed")
                for row in self._rows:
                    _fail(row.job, error)
                for job in jobs:
                    _fail(job, error)
            self._rows = []

    def _gather(self, room: int, wait: float) -> list[Job]:
        """Up to `room` more queued jobs, waiting at most `wait` seconds for them."""
        jobs: list[Job] = []
        deadline = time.monotonic() + wait
        while len(jobs) < room:
            try:
                timeout = deadline - time.monotonic()
                job = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:  # closing: let the current batch finish, then stop
                self._queue.put(None)
                break
            jobs.append(job)
        return jobs

    @torch.inference_mode()
    def _decode(self, jobs: list[Job]) -> None:
        """Decode until no row is left; with a mergeable cache, admit queued jobs each step."""
        batch = _Batch.prefill(self.target, self._start(jobs))
        jobs.clear()  # from here on, failures are reported through self._rows
        self._rows = batch.rows
        while batch.rows:
            free = self.max_batch - len(batch.rows)
            # Each admission costs a prefill pass: under a long queue, admit in groups of a
            # quarter batch rather than one row per step; a short queue is admitted at once.
            if batch.mergeable and free and free >= min(self._queue.qsize(),
                                                       max(1, self.max_batch // 4)):
                joining = self._start(self._gather(free, 0))
                if joining:
                    batch.merge(_Batch.prefill(self.target, joining))
                    self._rows = batch.rows
            batch.step()
            self._rows = batch.rows

    def _start(self, jobs: list[Job]) -> list[_Row]:
        rows = []
        for job in jobs:
            if job.cancelled or not job.future.set_running_or_notify_cancel():
                continue
            rows.append(_Row(job, self.target))
        return rows


class _Batch:
    """Rows decoding together: their left-padded attention mask, next positions, KV cache and
    the logits of the next token of each row."""

    def __init__(self, target: WhiteBoxTarget, rows: list[_Row], mask: torch.Tensor,
                 positions: torch.Tensor, cache, logits: torch.Tensor) -> None:
        self.target, self.rows = target, rows
        self.mask, self.positions, self.cache, self.logits = mask, positions, cache, logits
        layers = getattr(cache, "layers", None)
        self.mergeable = bool(layers) and all(type(layer) is _DynamicLayer for layer in layers)

    @classmethod
    def prefill(cls, target: WhiteBoxTarget, rows: list[_Row]) -> _Batch:
        """The prompt forward pass of `rows`, exactly as `WhiteBoxTarget._decode` makes it."""
        if not rows:
            empty = torch.zeros((0, 0), dtype=torch.long, device=target.device)
            return cls(target, [], empty, empty, None, torch.zeros(0))
        batch = target._pad([row.job.prompt_ids for row in rows])
        mask = batch["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        output = target.model(input_ids=batch["input_ids"], attention_mask=mask,
                              position_ids=positions, use_cache=True, logits_to_keep=1)
        return cls(target, rows, mask, positions[:, -1:],
                   getattr(output, target._cache_keyword), output.logits[:, -1].float())

    def merge(self, other: _Batch) -> None:
        """Append `other`'s rows, left-padding the narrower side's mask and KV cache."""
        if not other.rows:
            return
        width = max(self.mask.shape[1], other.mask.shape[1])
        self.mask = torch.cat([_left_pad(self.mask, width, 2), _left_pad(other.mask, width, 2)])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, width, 3),
                                   _left_pad(theirs.keys, width, 3)])
            mine.values = torch.cat([_left_pad(mine.values, width, 3),
                                     _left_pad(theirs.values, width, 3)])
        self.positions = torch.cat([self.positions, other.positions])
        self.logits = torch.cat([self.logits, other.logits])
        self.rows = self.rows + other.rows

    def step(self) -> None:
        """Pick every row's next token, let finished rows go, and run the next forward pass."""
        tokens = self._pick()
        for index, row in enumerate(self.rows):
            if row.done is not None:  # finished earlier in a batch that cannot drop rows
                continue
            if row.job.cancelled:
                row.done = Completion(row.emitted, list(row.tokens), "stop")
            else:
                row.add(int(tokens[index]),
                        self.logits[index] if row.job.logprobs else None)
            if row.done is not None:
                _resolve(row)
        live = [index for index, row in enumerate(self.rows) if row.done is None]
        if not live:
            self.rows = []
            return
        if len(live) < len(self.rows):
            if self.mergeable:
                self._select(live)
                tokens = tokens[live]
            else:  # the cache cannot drop rows: finished ones decode padding until the end
                finished = torch.tensor([row.done is not None for row in self.rows],
                                        device=tokens.device)
                tokens = torch.where(finished, self.target.pad_token_id, tokens)
        self._forward(tokens)

    def _pick(self) -> torch.Tensor:
        """Next tokens: one argmax for the greedy rows, each sampled row from its own
        generator (the same call `WhiteBoxTarget._decode` makes for a batch of one)."""
        tokens = self.logits.argmax(-1)
        for index, row in enumerate(self.rows):
            if row.generator is not None and row.done is None:
                tokens[index] = _pick(self.logits[index:index + 1], row.job.config,
                                      row.generator)[0]
        return tokens

    def _select(self, keep: list[int]) -> None:
        index = torch.tensor(keep, device=self.mask.device)
        self.rows = [self.rows[i] for i in keep]
        self.cache.batch_select_indices(index)
        self.mask, self.positions = self.mask[index], self.positions[index]
        self.logits = self.logits[index]
        # Cut the left-padding columns that no remaining row attends to.
        used = self.mask.any(0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start:
            self.mask = self.mask[:, start:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]

    def _forward(self, tokens: torch.Tensor) -> None:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], 1)
        self.positions = self.positions + 1
        output = self.target.model(input_ids=tokens[:, None], attention_mask=self.mask,
                                   position_ids=self.positions, use_cache=True, logits_to_keep=1,
                                   **{self.target._cache_keyword: self.cache})
        self.cache = getattr(output, self.target._cache_keyword)
        self.logits = output.logits[:, -1].float()


def _left_pad(tensor: torch.Tensor, width: int, dims: int) -> torch.Tensor:
    """`tensor` with zeros prepended along its sequence axis (1 for masks, 2 for KV tensors)."""
    axis = 1 if dims == 2 else 2
    missing = width - tensor.shape[axis]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], axis)


def _resolve(row: _Row) -> None:
    if row.job.cancelled:
        _fail(row.job, CancelledError())
    elif not row.job.future.done():
        row.job.future.set_result(row.done)


def _fail(job: Job, error: BaseException) -> None:
    future = job.future
    if not future.done() and (future.running() or future.set_running_or_notify_cancel()):
        future.set_exception(error)


def _dynamic_layer_type() -> type:
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # older transformers: no per-layer cache objects, so never mergeable
        return type("NoDynamicLayer", (), {})
    return DynamicLayer


_DynamicLayer = _dynamic_layer_type()

