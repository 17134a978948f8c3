"""What the three recipes share: the config and result shapes, the training loop (seeded,
progress bar, periodic state checkpoints, resumed after a kill), LoRA (peft) or full
fine-tuning, and a per-row, per-layer edit of the residual stream.

LoRA adapts every linear layer (`nn.Linear`, GPT-2's `Conv1D`) inside the decoder blocks the
recipe's loss depends on: all of them for ReFAT and LAT, those up to its last layer for RR. A
model on which the hooks cannot find one residual stream, or LoRA no such layer, is refused in
one sentence before anything is trained; so is, when it happens, a non-finite loss. Nothing
trains silently on nothing.

The loop is one thread by default (`threads`), so a run is bit-identical from its seed on one
machine, and a resumed run is bit-identical to an uninterrupted one: the state holds the
trainable weights, the optimizer, every random generator and the recipe's own state.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from alignparadox.errors import UserError

if TYPE_CHECKING:
    import torch

    from alignparadox.defenses.robust_training.data import BehaviourData, ChatEncoder
    from alignparadox.targets import WhiteBoxTarget

ADAPTERS = ("lora", "full")
STATE_FILE = "state.pt"


@dataclass(frozen=True)
class RecipeConfig:
    """Settings every recipe has. `layers` are residual-stream layers as in `alignparadox.hooks`
    (l = the output of block l, 1..L); None lets the recipe choose. `batch_size` harmful and as
    many harmless examples are drawn per step. `threads` fixes torch's thread count while
    training (None leaves it), which determinism on one machine needs."""

    method: ClassVar[str] = ""
    seed: int = 0
    steps: int = 100
    learning_rate: float = 1e-4
    batch_size: int = 8
    adapter: str = "lora"
    lora_rank: int = 8
    lora_alpha: int = 16
    refusal_weight: float = 1.0
    retain_weight: float = 1.0
    layers: tuple[int, ...] | None = None
    checkpoint_every: int = 25
    threads: int | None = 1

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, **asdict(self)}

    def check(self) -> None:
        """One sentence per mistake, before anything is loaded or trained."""
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) \
                or not 0 <= self.seed < 2**32:
            raise UserError(f"seed must be a whole number from 0 to 2**32 - 1, got {self.seed!r}.")
        if self.adapter not in ADAPTERS:
            raise UserError(f"adapter {self.adapter!r} is unknown; use lora or full.")
        for name in ("steps", "batch_size", "checkpoint_every", "lora_rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive whole number, got {value!r}.")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise UserError(f"threads must be a positive whole number, got {self.threads!r}.")
        _positive(self.learning_rate, "learning rate")
        for name in ("refusal_weight", "retain_weight"):
            value = getattr(self, name)
            if not _finite(value) or value < 0:
                raise UserError(f"{name} must be a finite number ≥ 0, got {value!r}.")
        if self.layers is not None:
            if not self.layers:
                raise UserError("the list of layers is empty.")
            for layer in self.layers:
                if isinstance(layer, bool) or not isinstance(layer, int) or layer < 1:
                    raise UserError(f"layer {layer!r} is out of range: stream layers are whole "
                                    "numbers from 1 (the output of block 1).")

    def chosen_layers(self, n_layers: int) -> list[int]:
        """`layers`, checked against a model of `n_layers` blocks, or the recipe's default."""
        if self.layers is None:
            return self.default_layers(n_layers)
        layers = list(self.layers)
        if not layers:
            raise UserError("the list of layers is empty.")
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= n_layers:
                raise UserError(f"layer {layer!r} is out of range: this model's blocks give "
                                f"stream layers 1..{n_layers}.")
        return sorted(set(layers))

    def default_layers(self, n_layers: int) -> list[int]:
        return [max(1, n_layers // 2)]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value, what: str) -> None:
    if not _finite(value) or value <= 0:
        raise UserError(f"{what} must be a finite number > 0, got {value!r}.")


@dataclass(frozen=True)
class TrainResult:
    """What a recipe run did: its config, the layers it worked on, the steps done (of which
    `resumed_from` came from a saved state), the last step's losses and the wall time."""

    method: str
    config: dict[str, Any]
    layers: list[int]
    steps: int
    resumed_from: int
    seconds: float
    last_metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def source_digest() -> str:
    """sha256 over the source of this package: part of every cache key of a robust model."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Residual-stream edits with gradients: per row, per layer.


@contextmanager
def edit_stream(model, edits: Mapping[int, Callable[[torch.Tensor], torch.Tensor]]
                ) -> Iterator[None]:
    """Replace the stream at each layer l (block l's output) by `edits[l](hidden)` on every
    forward inside, differentiably. `hooks.add_vectors` adds one vector to every row and
    `hooks.ablate` one direction at every layer; LAT needs a perturbation per row and token,
    ReFAT a direction per layer on some rows only, so this is their common, smaller tool."""
    from alignparadox.hooks import check_layer, residual_layout

    layout = residual_layout(model)
    layout.require("stream")
    handles = []
    try:
        for layer, edit in edits.items():
            if check_layer(layout, layer) == 0:
                raise UserError("layer 0 (the embeddings) cannot be edited by robust training; "
                                f"use layers 1..{layout.n_layers}.")

            def hook(module, args, output, edit=edit):
                if hasattr(output, "shape"):
                    return edit(output)
                return (edit(output[0]), *output[1:])

            handles.append(layout.layers[layer - 1].register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


# ---------------------------------------------------------------------------------------------
# The run: model, data, generators.


def lora_targets(model, layout, blocks: int) -> list[str]:
    """Names of the linear layers (`nn.Linear`, GPT-2's `Conv1D`) inside the first `blocks`
    decoder blocks: what LoRA adapts. Linear layers outside the blocks (the unembedding, an
    input projection) are left as they are."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    inside = {id(module) for block in list(layout.layers)[:blocks] for module in block.modules()}
    return [name for name, module in model.named_modules()
            if id(module) in inside and isinstance(module, (nn.Linear, Conv1D))]


def _wrap_lora(base, config: RecipeConfig, modules: list[str]):
    import warnings

    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    conv1d = any(isinstance(base.get_submodule(name), Conv1D) for name in modules)
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                      target_modules=modules, fan_in_fan_out=conv1d)
    with warnings.catch_warnings():  # peft's notes on transformers' deprecations, not the user's
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(base, lora)


class Run:
    """One recipe run: the trainable model (`model`, peft-wrapped for LoRA), the HF model that
    hooks go on (`inner`, with any LoRA layers inside it), the data and the generators."""

    def __init__(self, target: WhiteBoxTarget, data: BehaviourData, recipe: Recipe,
                 encoder: ChatEncoder):
        import torch

        from alignparadox.hooks import residual_layout

        config = recipe.config
        self.target, self.data, self.config, self.encoder = target, data, config, encoder
        self.rng = random.Random(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        base = target.model
        layout = residual_layout(base)
        self.n_layers = layout.n_layers
        self.layers = config.chosen_layers(self.n_layers)
        # Every recipe reads or edits the stream at its layers: refused here, before anything
        # is wrapped or trained, where the probe cannot find it.
        if (reason := layout.refusals.get("stream")) is not None:
            raise UserError(f"{config.method} cannot run on {layout.architecture}: {reason}")
        self.reference = None
        self.lora_modules: list[str] = []
        if config.adapter == "full":
            if recipe.needs_reference:
                self.reference = copy.deepcopy(base).eval().requires_grad_(False)
            self.model = base
            base.requires_grad_(True)
        else:
            blocks = recipe.trained_blocks(self.layers, self.n_layers)
            self.lora_modules = lora_targets(base, layout, blocks)
            if not self.lora_modules:
                raise UserError(
                    f"{config.method} finds no linear layer for LoRA in blocks 1..{blocks} of "
                    f"{layout.architecture}, the blocks its loss depends on, so LoRA would train "
                    "nothing; use --adapter full.")
            self.model = _wrap_lora(base, config, self.lora_modules)
        self.inner = self.model.get_base_model() if config.adapter == "lora" else self.model
        self.model.train()
        self.step = 0

    def draw(self) -> tuple[list, list]:
        """`batch_size` harmful and harmless examples, drawn with replacement from the data."""
        size = self.config.batch_size
        return ([self.rng.choice(self.data.harmful) for _ in range(size)],
                [self.rng.choice(self.data.harmless) for _ in range(size)])

    def trainable(self) -> dict[str, torch.Tensor]:
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    @contextmanager
    def original(self) -> Iterator[Any]:
        """The model as it was before training (LoRA switched off, or the frozen copy)."""
        import torch

        with torch.no_grad():
            if self.reference is not None:
                yield self.reference
            else:
                with self.model.disable_adapter():
                    yield self.inner

    def finished_model(self):
        """The trained HF model, adapters merged into its weights, in eval mode."""
        if self.config.adapter == "lora":
            if self.step > 0 and not any(bool(p.detach().ne(0).any())
                                         for name, p in self.trainable().items()
                                         if "lora_B" in name):
                raise UserError(f"{self.config.method} trained nothing: every LoRA adapter is "
                                "still zero after training (no gradient reached them).")
            model = self.model.merge_and_unload()
        else:
            model = self.model
        model.requires_grad_(False)
        return model.eval()


class Recipe:
    """A recipe: `setup` on the untrained model, `loss` per step, `state`/`load_state` for
    what it keeps between steps (saved with the run's state)."""

    needs_reference = False
    needs_completions = False

    def __init__(self, config: RecipeConfig):
        self.config = config

    def trained_blocks(self, layers: list[int], n_layers: int) -> int:
        """How many blocks, from the first, the loss depends on (LoRA adapts those)."""
        return n_layers

    def setup(self, run: Run) -> dict[str, Any]:
        return {}

    def loss(self, run: Run, harmful: list, harmless: list) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass


def retain_loss(run: Run, harmless: list) -> torch.Tensor:
    """Next-token loss on the harmless answers (the utility a defense must keep)."""
    from alignparadox.defenses.robust_training.data import model_inputs

    batch = run.encoder.batch([(e.request, e.answer) for e in harmless])
    return run.model(**model_inputs(batch), labels=batch["labels"]).loss


@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_recipe(
    target: WhiteBoxTarget, data: BehaviourData, recipe: Recipe, *,
    state_dir: str | Path | None = None, progress: bool = True,
    on_step: Callable[[int, Any, dict], bool] | None = None,
    extra_state: Callable[[], Any] | None = None,
    load_extra_state: Callable[[Any], None] | None = None,
    description: str | None = None,
) -> tuple[Any, TrainResult]:
    """Train `target.model` with `recipe` on `data`; return the trained HF model (adapters
    merged) and the result. `state_dir` keeps the run's state every `checkpoint_every` steps;
    a run started with a state there continues from it (if the settings, data and weights
    match). `on_step(step, model, metrics)` runs after every update (the model is the trained
    one, in eval mode while it runs) and ends training by returning True; `extra_state` /
    `load_extra_state` save and restore the caller's own state with the run's."""
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from alignparadox.defenses.robust_training.data import ChatEncoder

    config = recipe.config
    config.check()
    if recipe.needs_completions and not data.has_completions:
        raise UserError(f"{config.method} needs a harmful completion for every harmful "
                        "example (the `completion` column).")
    started = time.perf_counter()
    state_path = Path(state_dir) / STATE_FILE if state_dir is not None else None
    with _threads(config.threads), torch.random.fork_rng():
        torch.manual_seed(config.seed)
        encoder = ChatEncoder(target)
        fingerprint = hashlib.sha256(json.dumps(
            {"config": config.as_dict(), "data": data.fingerprint(),
             "weights": target.weight_hash, "code": source_digest()}, sort_keys=True,
            default=list).encode()).hexdigest()
        encoder.check_lengths(data)
        run = Run(target, data, recipe, encoder)
        details = recipe.setup(run)
        params = run.trainable()
        optimizer = torch.optim.AdamW(params.values(), lr=config.learning_rate,
                                      weight_decay=0.0)
        start = 0
        if state_path is not None and state_path.exists():
            state = torch.load(state_path, weights_only=False)
            if state["fingerprint"] != fingerprint:
                raise UserError(f"{state_path.parent} holds the state of a run with other "
                                "settings, data or weights; remove it or choose another "
                                "output folder.")
            with torch.no_grad():
                for name, value in state["params"].items():
                    params[name].copy_(value)
            optimizer.load_state_dict(state["optimizer"])
            run.rng.setstate(state["rng"])
            run.generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            recipe.load_state(state["recipe"])
            if load_extra_state is not None:
                load_extra_state(state["extra"])
            start = state["step"]

        def save_state(step: int) -> None:
            if state_path is None:
                return
            state_path.parent.mkdir(parents=True, exist_ok=True)
            temporary = state_path.with_suffix(".tmp")
            torch.save({"fingerprint": fingerprint, "step": step,
                        "params": {n: p.detach().clone() for n, p in params.items()},
                        "optimizer": optimizer.state_dict(), "rng": run.rng.getstate(),
                        "generator": run.generator.get_state(),
                        "torch_rng": torch.get_rng_state(), "recipe": recipe.state(),
                        "extra": extra_state() if extra_state is not None else None},
                       temporary)
            os.replace(temporary, state_path)

        metrics: dict[str, float] = {}
        done = start
        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total}"),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                      disable=not progress) as bar:
            task = bar.add_task(description or f"robust training ({config.method})",
                                total=config.steps, completed=start, info="")
            for step in range(start + 1, config.steps + 1):
                run.step = step
                harmful, harmless = run.draw()
                loss, metrics = recipe.loss(run, harmful, harmless)
                if not math.isfinite(value := float(loss.detach())):
                    raise UserError(f"the {config.method} loss is {value:g} at step {step}, so "
                                    "training stopped; lower the learning rate or load the "
                                    "model in a wider dtype.")
                loss.backward()
                torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                metrics = {"loss": float(loss.detach()), **metrics}
                done = step
                stop = False
                if on_step is not None:
                    run.model.eval()
                    stop = bool(on_step(step, run.inner, metrics))
                    run.model.train()
                bar.update(task, completed=step, info=f"loss {metrics['loss']:.3f}")
                if step % config.checkpoint_every == 0 or stop:
                    save_state(step)
                if stop:
                    break
        model = run.finished_model()
    if run.lora_modules:
        details = {**details, "lora_modules": run.lora_modules}
    result = TrainResult(config.method, config.as_dict(), run.layers, done, start,
                         time.perf_counter() - started, metrics, details)
    return model, result
