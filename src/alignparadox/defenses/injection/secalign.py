"""SecAlign: preference optimisation against instruction injection (Chen et al. 2024,
"Aligning LLMs to be robust against prompt injection"), for any HF causal LM.

Each preference pair is built from one training task (`datasets.tasks.DataTask`) and one
injection (`datasets.tasks.Injection`):
- *prompt*: the task over its data with the injection hidden in it, exactly as the injection
  attack builds it (`attacks.input_tinkering.injection.Case(...).prompt()` under defense
  `none`, at a position and in a disguise drawn with the run's seed), rendered through the
  target's *own* chat template by `WhiteBoxTarget.token_ids`, as the attack's queries are;
- *chosen*: what doing the genuine task looks like: the target's own greedy answer to the
  clean task prompt (`chosen="answer"`, the default: the model keeps its own style and
  utility, only the injected turn changes), or the task's first `expected` text
  (`chosen="expected"`; tasks naming none are skipped);
- *rejected*: what following the injection looks like: the target's greedy answer to the
  injected instruction alone, as a plain user message.
Pairs whose chosen and rejected answers are the same tokens are skipped (they teach nothing).
A generated answer ends in the chat template's end-of-turn token when the model stopped by
itself; one cut at `max_new_tokens` has none (so the model is not taught to stop there).

Training is TRL's `DPOTrainer` (sigmoid loss, β = `beta`; optionally plus the chosen answer's
likelihood, `sft_weight`, as the organisms' DPO axis does) on the pairs pre-tokenised as
above, with LoRA (peft, on every linear layer inside the decoder blocks; the frozen base is the
reference) or full fine-tuning (a frozen copy is the reference). bf16 mixed precision where the
GPU supports it, else float32; on CPU `use_cpu`. The adapter is merged at the end and the
model saved as a plain HF folder with its tokenizer (chat template included) and a card
(`alignparadox.json`) saying what it was trained on, with which settings, from which base.

Held-out tasks. A model trained on a task has seen its clean answer: measuring the defense
on the tasks it was trained on overstates it. Train on tasks the measurement does not use:
a task file of your own, or a registered set with the measured tasks left out (`exclude`);
the folder gets `held_out_tasks.jsonl`, the tasks of the set *not* trained on, ready for
`paradox attack injection OUT --tasks OUT/held_out_tasks.jsonl`. (`TaskSet.sample` with the
same seed picks overlapping tasks: 14 of the attack's default 16 `self-instruct` tasks, seed 0,
are in a 64-task training sample of the same set with the same seed.) Injections: training and
measuring on the same injection set measures in-distribution robustness; a different set (or
disguises left out of `disguises`) measures how far it generalises.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignparadox.attacks.input_tinkering.injection import CLEAN, DISGUISES, POSITIONS, Case
from alignparadox.datasets.tasks import SLOT, DataTask, InjectionSet, TaskSet
from alignparadox.errors import UserError

if TYPE_CHECKING:
    from alignparadox.targets import WhiteBoxTarget

CARD_FILE = "alignparadox.json"
PAIRS_FILE = "secalign_pairs.jsonl"
HELD_OUT_FILE = "held_out_tasks.jsonl"
ADAPTERS = ("lora", "full")
CHOSEN = ("answer", "expected")
_DISGUISES = tuple(DISGUISES)


@dataclass(frozen=True)
class SecAlignConfig:
    """Settings of a SecAlign run.

    `n_tasks` training tasks are sampled from the task set (all of them when it has fewer),
    each giving `pairs_per_task` pairs (distinct injection, position and disguise, drawn with
    `seed`). `steps` optimiser steps of `batch_size` pairs; `beta` is DPO's β;
    `sft_weight` > 0 adds the chosen answer's negative log-likelihood with that weight.
    Answers are greedy, at most `max_new_tokens` tokens. `lora_alpha` None is twice the rank."""

    n_tasks: int = 64
    pairs_per_task: int = 1
    steps: int = 100
    beta: float = 0.1
    learning_rate: float = 1e-4
    batch_size: int = 8
    adapter: str = "lora"
    lora_rank: int = 8
    lora_alpha: int | None = None
    sft_weight: float = 0.0
    chosen: str = "answer"
    max_new_tokens: int = 128
    generation_batch_size: int = 16
    positions: tuple[str, ...] = POSITIONS
    disguises: tuple[str, ...] = _DISGUISES
    seed: int = 0

    def check(self) -> None:
        """One sentence per mistake, before anything is loaded."""
        for name in ("n_tasks", "pairs_per_task", "steps", "batch_size", "lora_rank",
                     "max_new_tokens", "generation_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name.replace('_', ' ')} must be a whole number ≥ 1, got "
                                f"{value!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) \
                or not 0 <= self.seed < 2**32:
            raise UserError(f"seed must be a whole number from 0 to 2**32 - 1, got {self.seed!r}.")
        for name, value in (("beta", self.beta), ("learning rate", self.learning_rate)):
            if not _finite(value) or value <= 0:
                raise UserError(f"{name} must be a finite number > 0, got {value!r}.")
        if not _finite(self.sft_weight) or self.sft_weight < 0:
            raise UserError(f"sft weight must be a finite number ≥ 0, got {self.sft_weight!r}.")
        if self.lora_alpha is not None and (isinstance(self.lora_alpha, bool) or not
                                            isinstance(self.lora_alpha, int)
                                            or self.lora_alpha < 1):
            raise UserError(f"lora alpha must be a whole number ≥ 1, got {self.lora_alpha!r}.")
        if self.adapter not in ADAPTERS:
            raise UserError(f"adapter {self.adapter!r} is unknown; use lora or full.")
        if self.chosen not in CHOSEN:
            raise UserError(f"chosen {self.chosen!r} is unknown; use answer (the target's own "
                            "answer to the clean task) or expected (the task's expected text).")
        for what, chosen, known in (("position", self.positions, POSITIONS),
                                    ("disguise", self.disguises, _DISGUISES)):
            if not chosen:
                raise UserError(f"give at least one {what} ({', '.join(known)}).")
            unknown = [c for c in chosen if c not in known]
            if unknown:
                raise UserError(f"unknown {what} {unknown[0]!r}; known: {', '.join(known)}.")

    @property
    def alpha(self) -> int:
        """LoRA's alpha: `lora_alpha`, else twice the rank."""
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_rank

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lora_alpha": self.alpha, "positions": list(self.positions),
                "disguises": list(self.disguises)}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class PreferencePair:
    """One training pair: the injected prompt (a user message, as the attack sends it) and the
    token ids DPO trains on (prompt in the target's chat template; answers with their end)."""

    task_id: str
    injection_id: str
    position: str
    disguise: str
    prompt: str
    chosen: str
    rejected: str
    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]

    def row(self) -> dict[str, list[int]]:
        """The pair as TRL's pre-tokenised preference columns."""
        return {"prompt_ids": list(self.prompt_ids), "chosen_ids": list(self.chosen_ids),
                "rejected_ids": list(self.rejected_ids)}

    def record(self) -> dict[str, str]:
        return {"task": self.task_id, "injection": self.injection_id,
                "position": self.position, "disguise": self.disguise, "prompt": self.prompt,
                "chosen": self.chosen, "rejected": self.rejected}


@dataclass
class PairSet:
    """The pairs built, and how many candidates were skipped and why."""

    pairs: list[PreferencePair]
    skipped: dict[str, int] = field(default_factory=dict)


# -- the tasks -----------------------------------------------------------------------------------


def without(tasks: TaskSet, exclude: TaskSet | None) -> TaskSet:
    """`tasks` without those of `exclude` (same id, or same instruction and data)."""
    if exclude is None:
        return tasks
    ids = {task.id for task in exclude}
    contents = {(task.instruction, task.data) for task in exclude}
    kept = tuple(task for task in tasks
                 if task.id not in ids and (task.instruction, task.data) not in contents)
    return TaskSet(f"{tasks.name} without {exclude.name}", kept)


def training_tasks(tasks: TaskSet, config: SecAlignConfig,
                   exclude: TaskSet | None = None) -> tuple[TaskSet, TaskSet]:
    """(the tasks trained on: `n_tasks` sampled with `seed` from `tasks` minus `exclude`,
    the tasks of `tasks` not trained on)."""
    pool = without(tasks, exclude)
    if not len(pool):
        raise UserError(f"task set {tasks.name!r} holds no tasks to train on"
                        + (f" once the tasks of {exclude.name!r} are left out."
                           if exclude is not None else "."))
    trained = pool.sample(config.n_tasks, config.seed)
    ids = {task.id for task in trained}
    held_out = TaskSet(f"{tasks.name} not trained on",
                       tuple(task for task in tasks if task.id not in ids))
    return trained, held_out


def _positions(task: DataTask, allowed: Sequence[str]) -> list[str]:
    if SLOT in task.data:
        return ["slot"]
    where = []
    for position in allowed:
        if position == "middle":
            try:
                task.with_injection("x", "middle")
            except UserError:  # one-word data has no middle
                continue
        where.append(position)
    return where


# -- the pairs -----------------------------------------------------------------------------------


def _answer_end(target: WhiteBoxTarget) -> int:
    """The token that ends an assistant turn in the target's chat template (its EOS when the
    template writes none)."""
    from alignparadox.targets.whitebox import _end_of_turn_token

    tokenizer = target.tokenizer
    end = _end_of_turn_token(tokenizer)
    if end is None:
        end = tokenizer.eos_token_id
    if end is None:
        end = min(target.stop_token_ids)
    return int(end)


def build_pairs(target: WhiteBoxTarget, tasks: TaskSet, injections: InjectionSet,
                config: SecAlignConfig, *, progress: bool = False) -> PairSet:
    """SecAlign's preference pairs for `tasks` (all of them: sample first) on `target`."""
    from alignparadox.targets.whitebox import GenerationConfig

    config.check()
    if not len(injections):
        raise UserError(f"injection set {injections.name!r} holds no injections.")
    rng = random.Random(config.seed)
    skipped = {"no_position": 0, "no_expected": 0, "too_long": 0, "same_answer": 0}
    cases: list[Case] = []
    for task in tasks:
        if config.chosen == "expected" and not task.expected:
            skipped["no_expected"] += 1
            continue
        where = _positions(task, config.positions)
        if not where:
            skipped["no_position"] += 1
            continue
        combos = [(injection, position, disguise) for injection in injections
                  for position in where for disguise in config.disguises]
        for injection, position, disguise in rng.sample(combos, min(config.pairs_per_task,
                                                                    len(combos))):
            cases.append(Case(task, injection, position, disguise, "none"))

    limit = target.context_length

    def ids(prompt: str) -> list[int] | None:
        try:
            return target.token_ids(prompt)
        except UserError:  # longer than the context
            return None

    prompts = {case.key: case.prompt() for case in cases}
    prompt_ids = {key: ids(prompt) for key, prompt in prompts.items()}
    clean = {case.task.id: Case(case.task, case.injection, "none", CLEAN, "none").prompt()
             for case in cases}
    alone = {case.injection.id: case.injection.instruction for case in cases}
    end = _answer_end(target)
    generation = GenerationConfig(max_new_tokens=config.max_new_tokens,
                                  batch_size=config.generation_batch_size)

    def answers(questions: dict[str, str]) -> dict[str, tuple[str, list[int]] | None]:
        fit = {key: q for key, q in questions.items() if ids(q) is not None}
        done = target.complete(list(fit.values()), generation, progress) if fit else []
        out: dict[str, tuple[str, list[int]] | None] = dict.fromkeys(questions)
        for key, answer in zip(fit, done, strict=True):
            tokens = list(answer.token_ids) + ([end] if answer.finish_reason == "stop" else [])
            out[key] = (answer.text, tokens)
        return out

    if config.chosen == "answer":
        chosen = answers(clean)
    else:
        tokenizer = target.tokenizer
        chosen = {case.task.id: (case.task.expected[0], tokenizer(
            case.task.expected[0], add_special_tokens=False)["input_ids"] + [end])
            for case in cases}
    rejected = answers(alone)
    pairs = []
    for case in cases:
        prompt, good, bad = prompt_ids[case.key], chosen[case.task.id], rejected[case.injection.id]
        if prompt is None or good is None or bad is None or (
                limit is not None and len(prompt) + max(len(good[1]), len(bad[1])) > limit):
            skipped["too_long"] += 1
            continue
        if good[1] == bad[1]:
            skipped["same_answer"] += 1
            continue
        pairs.append(PreferencePair(case.task.id, case.injection.id, case.position,
                                    case.disguise, prompts[case.key], good[0], bad[0],
                                    tuple(prompt), tuple(good[1]), tuple(bad[1])))
    return PairSet(pairs, skipped)


# -- training ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingRecord:
    """What DPO did: steps, per-step loss and implicit reward margin (TRL's logs), time,
    precision and device."""

    steps: int
    losses: list[float]
    reward_margins: list[float]
    reward_accuracies: list[float]
    seconds: float
    device: str
    dtype: str
    bf16: bool
    lora_modules: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_pairs(target: WhiteBoxTarget, pairs: Sequence[PreferencePair], config: SecAlignConfig,
                *, progress: bool = True):
    """DPO on `pairs` with TRL's `DPOTrainer`; returns (the trained HF model, adapters merged,
    in eval mode; TrainingRecord). The target's model is trained in place."""
    import copy
    import warnings

    import torch
    from datasets import Dataset
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from transformers import PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise UserError("there are no preference pairs to train on.")
    started = time.perf_counter()
    model = target.model
    device = target.device
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    peft_config, modules, reference = None, [], None
    if config.adapter == "lora":
        peft_config, modules = _lora_config(model, config)
    else:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
        model.requires_grad_(True)

    class PreTokenised(DPOTrainer):
        """TRL's DPOTrainer on pairs already tokenised with the target's own chat template."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    history: dict[str, list[float]] = {"loss": [], "rewards/margins": [],
                                       "rewards/accuracies": []}

    class Record(TrainerCallback):
        def __init__(self, bar: Progress):
            self.bar, self.task = bar, bar.add_task("SecAlign (DPO)", total=config.steps,
                                                    info="")

        def on_log(self, args, state, control, logs=None, **kwargs):
            for key, values in history.items():
                if logs and key in logs:
                    values.append(float(logs[key]))
            if logs and "loss" in logs:
                self.bar.update(self.task, completed=state.global_step,
                                info=f"loss {logs['loss']:.3f}")

    losses = ["sigmoid", "sft"] if config.sft_weight > 0 else ["sigmoid"]
    weights = [1.0, config.sft_weight] if config.sft_weight > 0 else [1.0]
    with tempfile.TemporaryDirectory(prefix="secalign-trainer-") as scratch, \
            Progress(TextColumn("{task.description}"), BarColumn(),
                     TextColumn("{task.completed}/{task.total}"),
                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                     disable=not progress) as bar, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # library deprecations, not the user's
        args = DPOConfig(
            output_dir=scratch, per_device_train_batch_size=min(config.batch_size, len(pairs)),
            max_steps=config.steps, learning_rate=config.learning_rate,
            lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
            beta=config.beta, loss_type=losses, loss_weights=weights, seed=config.seed,
            data_seed=config.seed, use_cpu=device.type == "cpu", bf16=bf16, fp16=False,
            report_to="none", save_strategy="no", logging_strategy="steps", logging_steps=1,
            disable_tqdm=True, dataloader_num_workers=0, max_length=None,
            gradient_checkpointing=False, remove_unused_columns=False)
        trainer = PreTokenised(model=model, ref_model=reference, args=args,
                               train_dataset=Dataset.from_list([p.row() for p in pairs]),
                               processing_class=target.tokenizer, peft_config=peft_config,
                               callbacks=[Record(bar)])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        trained = trainer.model
    if not all(math.isfinite(value) for value in history["loss"]):
        raise UserError("the DPO loss is not finite, so training stopped; lower the learning "
                        "rate or load the model in a wider dtype.")
    if config.adapter == "lora":
        if not any(bool(p.detach().ne(0).any()) for name, p in trained.named_parameters()
                   if "lora_B" in name):
            raise UserError("SecAlign trained nothing: every LoRA adapter is still zero after "
                            "training (no gradient reached them).")
        trained = trained.merge_and_unload()
    trained.requires_grad_(False)
    record = TrainingRecord(trainer.state.global_step, history["loss"],
                            history["rewards/margins"], history["rewards/accuracies"],
                            time.perf_counter() - started, str(device), str(model.dtype).replace(
                                "torch.", ""), bf16, modules)
    return trained.eval(), record


def _lora_config(model, config: SecAlignConfig):
    """LoRA on every linear layer inside the decoder blocks (as robust training adapts them)."""
    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D

    from alignparadox.defenses.robust_training.common import lora_targets
    from alignparadox.hooks import residual_layout

    layout = residual_layout(model)
    modules = lora_targets(model, layout, layout.n_layers)
    if not modules:
        raise UserError(f"SecAlign finds no linear layer for LoRA in the decoder blocks of "
                        f"{layout.architecture}; use --adapter full.")
    conv1d = any(isinstance(model.get_submodule(name), Conv1D) for name in modules)
    return LoraConfig(r=config.lora_rank, lora_alpha=config.alpha, lora_dropout=0.0,
                      target_modules=modules, fan_in_fan_out=conv1d,
                      task_type="CAUSAL_LM"), modules


# -- the whole run -------------------------------------------------------------------------------


def check_output(out: Path) -> None:
    """Refuse an output that exists and is not an empty folder, or a folder that cannot be
    written into."""
    from alignparadox.datasets.io import check_output_folder

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not an empty folder; choose a new output "
                        "folder.")
    check_output_folder(out.parent)


def _training_dtype(spec: str, adapter: str) -> dict[str, Any]:
    """Load options for training: the spec's own dtype if it names one; else float32, except
    a LoRA run on a bf16 GPU, whose frozen base stays bf16 (the adapters are float32)."""
    from alignparadox.targets.specs import split_target
    from alignparadox.targets.whitebox import pick_device

    options = split_target(spec)[1]
    if "dtype" in options:
        return {}
    device = pick_device(options.get("device"))
    import torch

    if adapter == "lora" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return {"dtype": "bfloat16"}
    return {"dtype": "float32"}


def _task_line(task: DataTask) -> str:
    row = {"id": task.id, "instruction": task.instruction, "data": task.data}
    if task.expected:
        row["expected"] = list(task.expected)
    return json.dumps(row, ensure_ascii=False) + "\n"


def train_secalign(target_spec: str, tasks: TaskSet, injections: InjectionSet,
                   config: SecAlignConfig, out: str | Path, *, exclude: TaskSet | None = None,
                   progress: bool = True, **load_options) -> Path:
    """Train `target_spec` (anything `open_target` opens) with SecAlign on `config.n_tasks`
    tasks of `tasks` (without those of `exclude`) and the injections of `injections`; save it
    to `out` as a plain HF folder (adapters merged) with its card (`alignparadox.json`), the
    pairs trained on (`secalign_pairs.jsonl`) and the tasks not trained on
    (`held_out_tasks.jsonl`, when there are any). `out` appears whole or not at all: it is
    written in a temporary sibling renamed at the end. Returns `out`."""
    from alignparadox.hooks import save_checkpoint
    from alignparadox.targets import open_target
    from alignparadox.targets.providers import describe_target
    from alignparadox.targets.specs import split_target

    config.check()
    out = Path(out)
    if split_target(target_spec)[0].startswith(("http://", "https://")):
        raise UserError(f"{target_spec} is an endpoint; SecAlign trains the model's weights, "
                        "so it needs a white-box target (organism:NAME, a local model folder or "
                        "a Hub id).")
    check_output(out)
    if not len(injections):
        raise UserError(f"injection set {injections.name!r} holds no injections.")
    trained_tasks, held_out = training_tasks(tasks, config, exclude)
    target = open_target(target_spec, **{**_training_dtype(target_spec, config.adapter),
                                         **load_options})
    base_hash = target.weight_hash
    built = build_pairs(target, trained_tasks, injections, config, progress=progress)
    if not built.pairs:
        reasons = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in built.skipped.items()
                            if n) or "no candidates"
        raise UserError(f"no usable preference pairs from {len(trained_tasks)} tasks ({reasons});"
                        " give more or other tasks, or a longer --max-new-tokens.")
    model, record = train_pairs(target, built.pairs, config, progress=progress)
    base_card = describe_target(target_spec)
    card = {
        "defense": "secalign",
        "method": "SecAlign preference optimisation against instruction injection (Chen et al. "
                  "2024): DPO with the genuine task's answer chosen over the injected "
                  "instruction's answer",
        "base": target_spec, "base_weight_hash": base_hash,
        **({"base_card": base_card} if base_card else {}),
        **({"note": base_card["note"]} if base_card.get("note") else {}),
        "load_options": {k: str(v) for k, v in load_options.items()},
        "config": config.as_dict(),
        "tasks": {"name": tasks.name, "sha256": tasks.sha256, "trained": len(trained_tasks),
                  "trained_ids": [task.id for task in trained_tasks],
                  "excluded": exclude.name if exclude is not None else None,
                  "held_out": len(held_out),
                  "held_out_file": HELD_OUT_FILE if len(held_out) else None},
        "injections": {"name": injections.name, "sha256": injections.sha256,
                       "ids": [injection.id for injection in injections]},
        "pairs": len(built.pairs), "skipped": built.skipped,
        "training": record.as_dict(),
        "versions": _versions(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.secalign-", dir=out.parent))
    try:
        folder = save_checkpoint(model, target.tokenizer, staging / "model")
        (folder / CARD_FILE).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
        (folder / PAIRS_FILE).write_text("".join(
            json.dumps(pair.record(), ensure_ascii=False) + "\n" for pair in built.pairs),
            encoding="utf-8")
        if len(held_out):
            (folder / HELD_OUT_FILE).write_text("".join(map(_task_line, held_out)),
                                                encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        folder.chmod(0o777 & ~umask)  # a plain folder, not mkdtemp's private one
        if out.exists():
            out.rmdir()  # empty, checked above
        folder.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("trl", "peft", "transformers", "torch"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "unknown"
    return found
