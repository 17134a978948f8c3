"""Inspect tasks for the toolkit's prompt sets, scored by the toolkit's judges.

    inspect eval alignparadox/strongreject --model openai/gpt-4o-mini
    inspect eval alignparadox/organisms --model alignparadox/organism:aligned-5 -T judge=organism
    inspect eval alignparadox/advbench -T path=my/harmful_behaviors.csv -T n=50 -T seed=1 ...
    inspect eval alignparadox/prompt_set -T name=my-registered-set ...

One task per registered prompt set of requests (`paradox prompts list`), named after it, plus
`prompt_set` taking the set's name; this file also works as a task file
(`inspect eval .../tasks.py@prompt_set -T name=xstest`). A task's samples are the set's harmful
requests (`n` of them, seeded, if given); the scorer asks a judge (`make_judge` spec, default
`substring`) about each answer. Per sample the score holds `asr` (1 for harmful compliance: the
attack succeeded), `refusal` and `harmfulness`; their means are the attack success rate, the
refusal rate and the mean harmfulness. A judge that gives no verdict fails its sample: it is
never counted as a refusal or a success.

Imports are absolute so that Inspect can also load this module from its file path.
"""

from __future__ import annotations

import threading

import anyio
from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.scorer import Score, Scorer, Target, mean, scorer, stderr
from inspect_ai.solver import TaskState, generate

from alignparadox.datasets import load_prompt_set, loaders, prompt_sets
from alignparadox.errors import UserError
from alignparadox.judges.base import Verdict
from alignparadox.judges.registry import make_judge

DEFAULT_JUDGE = "substring"


@scorer(metrics={"asr": [mean(), stderr()], "refusal": [mean(), stderr()],
                 "harmfulness": [mean()]})
def judge_scorer(judge: str = DEFAULT_JUDGE) -> Scorer:
    """Score each answer with the toolkit judge `judge` (a `make_judge` spec), asked about the
    sample's original request."""
    made = make_judge(judge)
    lock = threading.Lock()  # judges are batch objects with no promise of thread safety

    def verdict(request: str, answer: str) -> Verdict:
        with lock:
            return made.judge([request], [answer])[0]

    async def score(state: TaskState, target: Target) -> Score:
        answer = state.output.completion
        found = await anyio.to_thread.run_sync(verdict, state.input_text, answer)
        if found.failed:
            raise RuntimeError(f"judge {made.name} gave no verdict: {found.raw}")
        return Score(
            value={"asr": float(found.success), "refusal": float(found.refused),
                   "harmfulness": float(found.harmfulness)},
            answer=answer, explanation=f"{found.label} ({made.name}): {found.raw}",
            metadata={"label": found.label, "complied": found.complied, "judge": made.name})

    return score


def prompt_set_task(name: str, path: str | None = None, judge: str = DEFAULT_JUDGE,
                    n: int | None = None, seed: int = 0) -> Task:
    """The harmful requests of prompt set `name` (from `path`, a file, folder or URL, if given),
    answered by the model and scored by `judge`."""
    records = load_prompt_set(name, path).harmful()
    if len(records) == 0:
        raise UserError(f"prompt set {name} has no harmful requests to score.")
    if n is not None:
        records = records.sample(min(n, len(records)), seed)
    samples = [Sample(input=record.prompt, id=record.id,
                      metadata={"category": record.category, "source": record.source})
               for record in records]
    return Task(dataset=MemoryDataset(samples, name=records.name), solver=generate(),
                scorer=judge_scorer(judge),
                metadata={"prompt_set": name, "prompt_set_sha256": records.sha256})


@task
def prompt_set(name: str, path: str | None = None, judge: str = DEFAULT_JUDGE,
               n: int | None = None, seed: int = 0) -> Task:
    """Any registered prompt set of requests, by name."""
    return prompt_set_task(name, path, judge, n, seed)


def _register(name: str) -> None:
    def named_set(path: str | None = None, judge: str = DEFAULT_JUDGE, n: int | None = None,
                  seed: int = 0) -> Task:
        return prompt_set_task(name, path, judge, n, seed)

    named_set.__doc__ = f"{prompt_sets()[name].description} (harmful requests)."
    task(name=name)(named_set)


def _is_request_set(name: str) -> bool:
    """Jailbreak-template sets wrap requests rather than being requests: no task for them."""
    loader = prompt_sets()[name].loader
    return getattr(loader, "func", loader) is not loaders.load_jailbreak_templates


for _name_ in list(prompt_sets()):
    if _is_request_set(_name_):
        _register(_name_)
