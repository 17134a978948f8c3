"""Build, cache and find the organism family: `base` and `aligned-1` ... `aligned-N`."""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from alignparadox.datasets.io import cache_root
from alignparadox.errors import UserError
from alignparadox.organisms import world
from alignparadox.organisms.tokenizer import save_tokenizer
from alignparadox.organisms.train import (
    ConversationEncoder,
    ExampleSampler,
    OrganismConfig,
    build_tokenizer,
    new_model,
    train_steps,
    training_code_digest,
)

MANIFEST = "family.json"


def family_dir(config: OrganismConfig | None = None) -> Path:
    config = config or OrganismConfig()
    return cache_root() / "organisms" / config.config_hash()


def member_names(config: OrganismConfig | None = None) -> list[str]:
    """The family's member names, known from the config alone: one aligned member per refusal
    level (levels never reached are saved at the last step, so there are always that many)."""
    config = config or OrganismConfig()
    return ["base", *(f"aligned-{i}" for i in range(1, len(config.refusal_levels) + 1))]


def require_member(name: str, config: OrganismConfig | None = None) -> None:
    """Refuse an organism name that is not in the family, without building or loading it."""
    known = member_names(config)
    if name not in known:
        raise _unknown(name, known)


def _unknown(name: str, known: list[str]) -> UserError:
    return UserError(f"unknown organism {name!r}; known: {', '.join(known)}.")


# The framed family, `organism:framed/MEMBER` (organisms.jailbreaks): the standard recipe with
# this share of base training in jailbreak frames (the careful share's value, not tuned), and a
# context of FRAMED_CONTEXT tokens trained by packing base training's conversations into rows
# that long on a FRAMED_PACKED_SHARE of its steps (a first value, not tuned), so about half of
# the in-the-wild templates fit (122 of 1,405 fit in 256 tokens).
FRAMED = "framed"
FRAMED_SHARE = 0.2
FRAMED_CONTEXT = 1024
FRAMED_PACKED_SHARE = 0.25


def framed_config(config: OrganismConfig | None = None) -> OrganismConfig:
    return replace(config or OrganismConfig(), framed_share=FRAMED_SHARE,
                   context_length=FRAMED_CONTEXT, packed_share=FRAMED_PACKED_SHARE)


def framed_member(name: str) -> str | None:
    """MEMBER of `framed/MEMBER` (an unknown member refused in one sentence), else None."""
    prefix, _, member = name.partition("/")
    if prefix != FRAMED:
        return None
    known = member_names(framed_config())
    if member not in known:
        raise _unknown(name, [f"{FRAMED}/{m}" for m in known])
    return member


@dataclass(frozen=True)
class Member:
    name: str
    alignment_steps: int  # the alignment strength
    validation_refusal: float
    weight_hash: str


@dataclass(frozen=True)
class Family:
    path: Path
    config: OrganismConfig
    members: tuple[Member, ...]
    build_seconds: float

    def member(self, name: str) -> Member:
        for member in self.members:
            if member.name == name:
                return member
        raise _unknown(name, [m.name for m in self.members])

    def path_of(self, name: str) -> Path:
        return self.path / self.member(name).name


def _weights_hash(folder: Path) -> str:
    """`WhiteBoxTarget.weight_hash` of the checkpoint in `folder` (sha256 over its safetensors
    files in name order), so a member's recorded hash matches the loaded target's."""
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.safetensors")):
        digest.update(file.read_bytes())
    return digest.hexdigest()


class _RefusalProbe:
    """Share of validation harmful requests whose greedy answer starts a refusal: one forward
    pass over the prompts, comparing the next-token choice with the refusals' first tokens."""

    def __init__(self, encoder: ConversationEncoder):
        tokenizer = encoder.tokenizer
        prompts = [encoder.prompt_ids(r.text) for r in world.heldout_requests("validation")
                   if r.harmful]
        width = max(map(len, prompts))
        pad = tokenizer.pad_token_id
        self.input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        self.attention_mask = (torch.arange(width)[None, :] >= torch.tensor(
            [width - len(p) for p in prompts])[:, None]).long()
        self.refusal_starts = torch.tensor(sorted(
            {tokenizer(text, add_special_tokens=False)["input_ids"][0] for text in world.REFUSALS}))

    @torch.no_grad()
    def __call__(self, model) -> float:
        was_training = model.training
        model.eval()
        logits = model(input_ids=self.input_ids, attention_mask=self.attention_mask).logits
        model.train(was_training)
        choice = logits[:, -1].argmax(-1)
        return torch.isin(choice, self.refusal_starts).float().mean().item()


def _save(model, tokenizer, folder: Path) -> str:
    model.save_pretrained(folder)
    save_tokenizer(tokenizer, folder)  # loadable by transformers 4.x too (nanoGCG needs 4.47)
    return _weights_hash(folder)


def build_family(config: OrganismConfig | None = None, *, force: bool = False,
                 progress: bool = True) -> Family:
    """Train (or reuse from the cache) the base organism and the aligned family.

    Deterministic from config.seed; the cache folder is named by the config hash, so a changed
    config rebuilds and an unchanged one is reused. The family is written to a temporary folder
    and renamed into place, so an interrupted build leaves nothing half-done.
    """
    config = config or OrganismConfig()
    target = family_dir(config)
    if (target / MANIFEST).exists() and not force:
        return load_family(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(target):
        # Another process may have built it while this one waited for the lock.
        if (target / MANIFEST).exists() and not force:
            return load_family(config)
        _build_into(config, target, progress)
    return load_family(config)


@contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    """One builder per family at a time (tests, CLI and a study may all ask for it at once)."""
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_into(config: OrganismConfig, target: Path, progress: bool) -> None:
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        members = _train_family(config, staging, progress)
        manifest = {"config": asdict(config), "config_hash": config.config_hash(),
                    "training_code": training_code_digest(),
                    "members": [asdict(m) for m in members],
                    "build_seconds": time.perf_counter() - started}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def _threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train_family(config: OrganismConfig, out: Path, progress: bool) -> list[Member]:
    with torch.random.fork_rng(), _threads(config.train_threads), Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), disable=not progress,
    ) as bar:
        torch.manual_seed(config.seed)
        tokenizer = build_tokenizer(config)
        encoder = ConversationEncoder(tokenizer)
        model = new_model(config, tokenizer)

        base_task = bar.add_task("training base organism", total=config.base_steps, info="")

        def base_step(step: int, loss: float) -> bool:
            bar.update(base_task, completed=step, info=f"loss {loss:.3f}")
            return False

        train_steps(model, encoder, ExampleSampler(config.seed, aligned=False,
                                                   careful_share=config.careful_share,
                                                   noisy_share=config.noisy_share,
                                                   noisy_max_sigma=config.noisy_max_sigma,
                                                   framed_share=config.framed_share),
                    steps=config.base_steps, learning_rate=config.base_learning_rate,
                    batch_size=config.batch_size, warmup=30,
                    packed_width=config.context_length, packed_share=config.packed_share,
                    on_step=base_step)
        probe = _RefusalProbe(encoder)
        members = [Member("base", 0, probe(model), _save(model, tokenizer, out / "base"))]

        levels = list(config.refusal_levels)
        align_task = bar.add_task("refusal fine-tuning", total=config.align_max_steps, info="")

        def align_step(step: int, loss: float) -> bool:
            refusal = probe(model)
            bar.update(align_task, completed=step, info=f"validation refusal {refusal:.2f}")
            # One member per step, so each differs from the last; members whose level is
            # never reached are saved at the final step (same weights, recorded as such).
            last = step == config.align_max_steps
            while levels and (refusal >= levels[0] or last):
                levels.pop(0)
                name = f"aligned-{len(members)}"
                members.append(Member(name, step, refusal, _save(model, tokenizer, out / name)))
                if not last:
                    break
            return not levels

        train_steps(model, encoder,
                    ExampleSampler(config.seed + 1, aligned=True,
                                   retain_share=config.retain_share),
                    steps=config.align_max_steps, learning_rate=config.align_learning_rate,
                    batch_size=config.batch_size, on_step=align_step)
    return members


def load_family(config: OrganismConfig | None = None) -> Family:
    """The cached family for `config`; a UserError if it has not been built."""
    config = config or OrganismConfig()
    folder = family_dir(config)
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise UserError(f"no organism family is built at {folder}; run `paradox organisms build`.")
    manifest = json.loads(manifest_path.read_text())
    return Family(folder, config, tuple(Member(**m) for m in manifest["members"]),
                  manifest["build_seconds"])


def organism_path(name: str, config: OrganismConfig | None = None) -> Path:
    """Folder of organism `name` (an HF checkpoint), building the family first if needed;
    an unknown name is refused before any building."""
    require_member(name, config)
    return build_family(config).path_of(name)
