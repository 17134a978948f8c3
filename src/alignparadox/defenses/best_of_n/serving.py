"""The defended target behind `paradox serve TARGET --defense bon-latent --reference REF`.

`DefendedWorker` takes the place of the server's batching worker: one thread owns the target
and the reference, and answers each queued job (one choice of one request) with the defense's
pick among N candidates. The defended system samples its candidates with its own settings (the
paper's T = 0.7, top-p 1.0 unless set): a request's `seed` seeds them and its `max_tokens`
bounds them, but its temperature and top-p do not apply, since the deployed system is what an
adaptive attacker queries. Stop strings cut the chosen answer; `logprobs` are the target's
(temperature 1) over the chosen answer. A streamed reply arrives in one piece, after the
choice is made.
"""

from __future__ import annotations

import logging
from concurrent.futures import CancelledError

import torch

from alignparadox.defenses.best_of_n.core import BestOfNDefense
from alignparadox.targets.batching import Completion, Job, QueueWorker, TokenLogprob

logger = logging.getLogger("alignparadox.serve")


class DefendedWorker(QueueWorker):
    """Takes the place of `targets.batching.BatchWorker`: one job at a time."""

    thread_name = "paradox-serve-defended"

    def __init__(self, defense: BestOfNDefense) -> None:
        self.defense = defense
        self.target = defense.target
        self._start_thread()

    def _run(self) -> None:
        while not self._closed.is_set():
            job = self._queue.get()
            if job is None:
                break
            if job.cancelled or not job.future.set_running_or_notify_cancel():
                continue
            try:
                completion = self.answer(job)
            except Exception as error:  # a failed job fails its request, not the server
                logger.exception("defended generation failed")
                _fail(job, error)
                continue
            if job.cancelled:
                _fail(job, CancelledError())
            elif not job.future.done():
                job.future.set_result(completion)

    def answer(self, job: Job) -> Completion:
        """The defended completion of one job."""
        room = (self.target.context_length or 1 << 62) - len(job.prompt_ids)
        budget = max(1, min(job.config.max_new_tokens, room))
        defended = self.defense.defend_ids([job.prompt_ids], seed=job.config.seed,
                                           max_new_tokens=budget)[0]
        answer = defended.answer
        text, ids, reason = answer.text, list(answer.token_ids), answer.finish_reason
        cut = _first_stop(text, job.stop)
        if cut is not None:
            text, ids, reason = text[:cut], _ids_through(self.target.tokenizer, ids, cut), "stop"
        logprobs = (_logprobs(self.target, job.prompt_ids, ids, job.top_logprobs)
                    if job.logprobs else None)
        if job.on_text is not None and text:
            job.on_text(text)
        return Completion(text, ids, reason, logprobs)


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [index for stop in stops if (index := text.find(stop)) >= 0]
    return min(found) if found else None


def _ids_through(tokenizer, ids: list[int], cut: int) -> list[int]:
    """The shortest prefix of `ids` whose text reaches past character `cut` (the token that
    completed the stop string), as the batching worker counts them."""
    for size in range(1, len(ids) + 1):
        if len(tokenizer.decode(ids[:size], skip_special_tokens=True)) > cut:
            return ids[:size]
    return ids


@torch.inference_mode()
def _logprobs(target, prompt_ids: list[int], ids: list[int], top: int) -> list[TokenLogprob]:
    if not ids:
        return []
    batch = target._pad([prompt_ids + ids])
    mask = batch["attention_mask"]
    output = target.model(**batch, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                          use_cache=False, logits_to_keep=len(ids) + 1)
    logprobs = torch.log_softmax(output.logits[0, :-1].float(), -1)
    result = []
    for position, token in enumerate(ids):
        row = logprobs[position]
        best = []
        if top:
            values, indices = row.topk(top)
            best = list(zip(indices.tolist(), values.tolist(), strict=True))
        result.append(TokenLogprob(token, float(row[token]), best))
    return result


def _fail(job: Job, error: BaseException) -> None:
    future = job.future
    if not future.done() and (future.running() or future.set_running_or_notify_cancel()):
        future.set_exception(error)


def defended_worker(target, reference_spec: str | None, *, scorer: str = "latent", n: int = 8,
                    layer: int | float = 0.5, temperature: float = 0.7, top_p: float = 1.0,
                    reference_options: dict | None = None):
    """A worker factory for `targets.serve.make_server`: opens and checks the reference now
    (so a bad one fails before the server starts) and returns `target -> DefendedWorker`."""
    from alignparadox.defenses.best_of_n.core import BestOfNConfig, require_white_box
    from alignparadox.targets.whitebox import open_target

    require_white_box(target)
    reference = (open_target(reference_spec, **(reference_options or {}))
                 if reference_spec is not None else None)
    defense = BestOfNDefense(target, reference,
                             BestOfNConfig(n=n, layer=layer, temperature=temperature,
                                           top_p=top_p), scorer)
    return defense, (lambda served: DefendedWorker(defense))
