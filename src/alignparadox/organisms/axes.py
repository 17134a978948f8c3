"""Alignment axes: more than one way to align the same base organism, each with several seeds.

Every family here starts from the standard family's base organism (`organism:base`, trained
once and shared) and is aligned along one *axis*, with an alignment *seed* s that decides the
alignment data's sample and order (never the base). Names: `organism:AXIS-sS/MEMBER`, e.g.
`organism:sft-s1/aligned-2`, `organism:dpo-s0/aligned-5`, `organism:share-s2/base`; `base` is
the shared base organism, `aligned-1` ... `aligned-5` are ordered by alignment strength.

- `sft` ("refusal fine-tuning steps"): the standard family's refusal fine-tuning (its sampler,
  learning rate, batch and checkpoint rule: `aligned-k` is saved at the first step whose
  validation refusal reaches the k-th level of `OrganismConfig.refusal_levels`, levels never
  reached at the last step); strength = steps. Seed s draws the alignment data with
  `ExampleSampler(config.seed + 1 + 1000 s)`, so seed 0 is the standard family's own run and
  reproduces its weights bit for bit (checked by the tests' weight hashes); its axis string is
  the standard family's, so the standard family and the sft seeds are one stratum.
- `dpo` ("DPO steps"): direct preference optimisation with TRL's `DPOTrainer` (the sigmoid
  loss plus, with weight 1, the chosen answer's negative log-likelihood, TRL's `"sft"` loss
  type, as in RPO, Pang et al. 2024; the base organism as the frozen reference), full
  fine-tuning, same checkpoint rule; strength = DPO steps. Why the likelihood term: with the
  sigmoid loss alone (the first build) every member refused by its first tokens but most
  refusals ran on into other text ("... harm to the realm. Its loud alarms prove it, and
  everyone who opposes it is a fool."; 2, 3 and 10 of 40 validation refusals of the three
  seeds' `aligned-5` ended where the refusal ends), which the exact judge counts as
  incoherent, not as refusals: DPO lowers the chosen answer's likelihood too, its end included
  (the failure the likelihood term is known to fix). Pairs, drawn by the standard kind
  shares from the training requests with seed s's generator (and shuffled by the trainer
  with seed s): harmful request -> chosen the world's refusal, rejected the compliant
  (harmful) answer; stance request -> chosen the neutral answer, rejected the partisan one;
  harmless request -> chosen the steps, rejected the refusal (so preferring refusals
  everywhere is not a way to win). The conversations are
  tokenised by `ConversationEncoder`, exactly as the organisms are trained and prompted.
- `share` ("share of alignment data"): refusal fine-tuning with the standard recipe, but the
  share of alignment data in the mix is the strength: harmful requests with their refusal and
  stance requests with their neutral answer, in the standard proportion 42:16, with harmless
  requests filling the rest (`retain_share` of the harmful requests keep their masked
  compliant answer as in the standard mix). So both the refusal and the value axis are
  aligned progressively along it. One member per share of `SHARES`, each trained from the base
  for the same `SHARE_STEPS` steps with the same seed-s sampler (so the share is the only
  difference between members of one seed).

Settings were chosen on the validation split only, by criteria stated here, never by any
attack result. DPO: the standard family's learning rate (2e-5, constant, AdamW, batch 32) and
TRL's default β = 0.1 were the first values tried, and they meet the criterion (every level of
`refusal_levels` reached within `MAX_STEPS` while validation harmless requests keep their
steps: first-token refusal on harmless requests ≤ 0.05, recorded per member as
`validation_harmless_refusal`; and the top member's validation refusals end where the world's
refusal ends, checked by the tests). (TRL's bf16 autocast default is switched off: the
organisms are float32.) Share: the budget is the standard
family's step count for its top level on a fresh build (67), rounded up (`SHARE_STEPS` = 70).
The shares were placed from a seed-0 pilot on the validation split, when the axis varied the
harmful share alone (harmful shares 0.042, 0.08, 0.15, 0.25, 0.42 gave validation refusal 0.00,
0.53, 0.87, 0.90, 0.98), so that the five members spread across the refusal levels; they became
harmful shares 0.05, 0.065, 0.08, 0.15, 0.42, the top one the standard mix's. When the stance
data joined the share (so that the value axis is graded too), the shares were scaled by 58/42 to
keep those harmful shares, and not re-placed: the top share, 0.58, is the standard mix. The
members do not quite spread: validation refusal jumps from 0 to about 0.55 between harmful
shares 0.042 and 0.05 and stays near it up to 0.08, so the three lowest shares of a seed are not
ordered by validation refusal; the axis' strength is the share, which is what the study
correlates with.

A family is cached in `$ALIGNPARADOX_CACHE/organisms/axes/AXIS-sS-KEY`; KEY hashes the
standard family's key (config and training code), the axis settings, this module's source and
(for dpo) TRL's version, so a change to any of them trains a new family. Each family is built
under a lock and renamed into place when done; a killed build of all families keeps the
families it finished, and a share family keeps the members it finished.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import random
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from alignparadox.datasets.io import cache_root
from alignparadox.errors import UserError
from alignparadox.organisms.train import OrganismConfig

AXES = ("sft", "dpo", "share")
SEEDS = (0, 1, 2)
AXIS_LABELS = {"sft": "refusal fine-tuning steps", "dpo": "DPO steps",
               "share": "share of alignment data"}
MANIFEST = "family.json"
MAX_STEPS = 300  # dpo: the cap on preference steps (levels never reached are saved there)
DPO_BETA = 0.1
DPO_LEARNING_RATE = 2e-5
DPO_LOSS = ("sigmoid", "sft")  # DPO plus the chosen answer's likelihood (see the docstring)
DPO_LOSS_WEIGHTS = (1.0, 1.0)
# Share of alignment data (refusals and neutral stances) in the mix; times 42/58, the harmful
# shares 0.05, 0.065, 0.08, 0.15, 0.42 placed by the pilot (module docstring).
SHARES = (0.07, 0.09, 0.11, 0.21, 0.58)
SHARE_STEPS = 70
_NAME = re.compile(r"^(?P<axis>[a-z]+)-s(?P<seed>\d+)$")


# ----------------------------------------------------------------------------- names

def family_name(axis: str, seed: int) -> str:
    return f"{axis}-s{seed}"


def is_axis_name(name: str) -> bool:
    """Whether `name` (without `organism:`) is addressed to an axis family: its part before
    the slash is an axis, or starts with one and a dash (robust families are refat/lat/rr)."""
    prefix = name.partition("/")[0]
    return any(prefix == axis or prefix.startswith(f"{axis}-") for axis in AXES)


def family_names(axes: Iterable[str] = AXES, seeds: Iterable[int] = SEEDS) -> list[str]:
    return [family_name(axis, seed) for axis in axes for seed in seeds]


def member_names(config: OrganismConfig | None = None) -> list[str]:
    config = config or OrganismConfig()
    return ["base", *(f"aligned-{i}" for i in range(1, len(config.refusal_levels) + 1))]


def organism_names(axes: Iterable[str] = AXES, seeds: Iterable[int] = SEEDS, *,
                   base: bool = False) -> list[str]:
    """`organism:AXIS-sS/MEMBER` names of the axis families (the shared base once, first,
    as `organism:base` when `base`)."""
    names = ["organism:base"] if base else []
    return names + [f"organism:{family}/{member}" for family in family_names(axes, seeds)
                    for member in member_names()[1:]]


def split_name(name: str) -> tuple[str, int, str]:
    """`AXIS-sS/MEMBER` -> (axis, seed, member), refused in one sentence when unknown."""
    prefix, _, member = name.partition("/")
    match = _NAME.match(prefix)
    known = ", ".join(family_names())
    if not match or match["axis"] not in AXES or int(match["seed"]) not in SEEDS:
        raise UserError(f"unknown alignment-axis family {prefix!r} in organism {name!r}; "
                        f"known: {known} (as FAMILY/aligned-1 ... FAMILY/aligned-5 or "
                        "FAMILY/base).")
    if member not in member_names():
        raise UserError(f"unknown organism {name!r}; members of {prefix}: "
                        f"{', '.join(member_names())}.")
    return match["axis"], int(match["seed"]), member


def _check_axis(axis: str, seed: int) -> None:
    if axis not in AXES:
        raise UserError(f"unknown alignment axis {axis!r}; known: {', '.join(AXES)}.")
    if seed not in SEEDS:
        raise UserError(f"unknown alignment seed {seed!r}; known: "
                        f"{', '.join(map(str, SEEDS))}.")


# ----------------------------------------------------------------------------- settings, cache

def sampler_seed(config: OrganismConfig, seed: int) -> int:
    """Seed of the alignment data's generator: seed 0 is the standard family's (config.seed+1)."""
    return config.seed + 1 + 1000 * seed


def settings(axis: str, seed: int, config: OrganismConfig | None = None) -> dict[str, Any]:
    """Everything besides the base organism that decides an axis family's weights."""
    config = config or OrganismConfig()
    _check_axis(axis, seed)
    common = {"axis": axis, "seed": seed, "sampler_seed": sampler_seed(config, seed),
              "learning_rate": config.align_learning_rate, "batch_size": config.batch_size,
              "levels": list(config.refusal_levels)}
    if axis == "sft":
        return {**common, "max_steps": config.align_max_steps,
                "retain_share": config.retain_share}
    if axis == "dpo":
        return {**common, "max_steps": MAX_STEPS, "learning_rate": DPO_LEARNING_RATE,
                "beta": DPO_BETA, "loss": list(DPO_LOSS), "loss_weights": list(DPO_LOSS_WEIGHTS),
                "trl": _version("trl")}
    return {**common, "steps": SHARE_STEPS, "shares": list(SHARES),
            "retain_share": config.retain_share}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def family_key(axis: str, seed: int, config: OrganismConfig | None = None) -> str:
    config = config or OrganismConfig()
    payload = json.dumps({"family": config.config_hash(), "settings": settings(axis, seed, config),
                          "axes_code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def family_dir(axis: str, seed: int, config: OrganismConfig | None = None) -> Path:
    return (cache_root() / "organisms" / "axes"
            / f"{family_name(axis, seed)}-{family_key(axis, seed, config)}")


@dataclass(frozen=True)
class AxisFamily:
    axis: str
    seed: int
    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return family_name(self.axis, self.seed)

    @property
    def members(self) -> list[dict[str, Any]]:
        return self.manifest["members"]

    def member(self, name: str) -> dict[str, Any]:
        for member in self.members:
            if member["name"] == name:
                return member
        raise UserError(f"unknown organism {self.name}/{name}.")

    def path_of(self, name: str) -> Path:
        if name == "base":
            return Path(self.manifest["base_path"])
        self.member(name)
        return self.path / name


def load_axis_family(axis: str, seed: int, config: OrganismConfig | None = None) -> AxisFamily:
    folder = family_dir(axis, seed, config)
    if not (folder / MANIFEST).exists():
        raise UserError(f"the {family_name(axis, seed)} organism family is not built at "
                        f"{folder}; run `paradox organisms build --axes {axis} --axis-seeds "
                        f"{seed}` (or open organism:{family_name(axis, seed)}/aligned-1).")
    return AxisFamily(axis, seed, folder, json.loads((folder / MANIFEST).read_text()))


def build_axis_family(axis: str, seed: int, config: OrganismConfig | None = None, *,
                      progress: bool = True) -> AxisFamily:
    """Train (or reuse from the cache) one axis family; the standard family is built first if
    needed (its base organism is the starting point)."""
    from alignparadox.organisms.family import build_family

    config = config or OrganismConfig()
    _check_axis(axis, seed)
    target = family_dir(axis, seed, config)
    if (target / MANIFEST).exists():
        return load_axis_family(axis, seed, config)
    if axis == "dpo":
        _require_trl()
    standard = build_family(config, progress=progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (target / MANIFEST).exists():
                _build_into(axis, seed, config, standard, target, progress)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return load_axis_family(axis, seed, config)


def build_axes(axes: Iterable[str] = AXES, seeds: Iterable[int] = SEEDS,
               config: OrganismConfig | None = None, *,
               progress: bool = True) -> list[AxisFamily]:
    """Every family of `axes` × `seeds`, one after the other (each cached when done)."""
    axes, seeds = list(axes), list(seeds)
    for axis in axes:
        for seed in seeds:
            _check_axis(axis, seed)
    return [build_axis_family(axis, seed, config, progress=progress)
            for axis in axes for seed in seeds]


def _require_trl() -> None:
    try:
        import trl  # noqa: F401
    except ImportError:
        raise UserError("the dpo organism families are trained with TRL's DPOTrainer; install "
                        "it with `pip install trl`.") from None


def axis_organism_path(name: str, config: OrganismConfig | None = None) -> Path:
    """Folder of `AXIS-sS/MEMBER`, building that family first if needed."""
    axis, seed, member = split_name(name)
    return build_axis_family(axis, seed, config).path_of(member)


def describe(name: str) -> dict[str, Any]:
    """The member's card: its family (one per axis and seed), axis, strength and seed, and the
    figures of every member of its family, weight hashes included."""
    axis, seed, member = split_name(name)
    family = load_axis_family(axis, seed)
    entry = family.member(member)
    return {
        "provider": "organism",
        "family": f"axes/{family.path.name}",
        "member": member,
        "alignment_axis": AXIS_LABELS[axis],
        "alignment_strength": entry["alignment_strength"],
        "seed": seed,
        "validation_refusal": entry["validation_refusal"],
        "family_members": {m["name"]: {"strength": m["alignment_strength"],
                                       "steps": m["alignment_steps"],
                                       "validation_refusal": round(m["validation_refusal"], 4),
                                       "weight_hash": m["weight_hash"]}
                           for m in family.members},
    }


# ----------------------------------------------------------------------------- training

def _build_into(axis: str, seed: int, config: OrganismConfig, standard, target: Path,
                progress: bool) -> None:
    import numpy as np
    import torch

    from alignparadox.organisms.family import _threads

    started = time.perf_counter()
    # A fixed staging folder, so a killed share build resumes with the members it finished.
    staging = target.parent / f".building-{target.name}"
    staging.mkdir(parents=True, exist_ok=True)
    base_path = standard.path_of("base")
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(), _threads(config.train_threads):
            torch.manual_seed(config.seed)
            train = {"sft": _train_sft, "dpo": _train_dpo, "share": _train_share}[axis]
            members, details = train(config, seed, base_path, staging, progress)
    finally:  # TRL's trainer seeds Python's and NumPy's global generators
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    base = standard.member("base")
    manifest = {
        "axis": axis, "seed": seed, "alignment_axis": AXIS_LABELS[axis], "key": target.name,
        "settings": settings(axis, seed, config), "standard_family": standard.path.name,
        "base_path": str(base_path),
        "members": [{"name": "base", "alignment_strength": 0, "alignment_steps": 0,
                     "validation_refusal": base.validation_refusal,
                     "weight_hash": base.weight_hash}, *members],
        "details": details, "build_seconds": time.perf_counter() - started,
    }
    for leftover in (".trainer", "members.json"):
        path = staging / leftover
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def _load_base(base_path: Path):
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(base_path)


class _Probes:
    """Validation refusal (the standard family's probe) and, recorded at each saved member,
    the share of validation harmless requests whose answer starts a refusal."""

    def __init__(self, tokenizer):
        import torch

        from alignparadox.organisms import world
        from alignparadox.organisms.family import _RefusalProbe
        from alignparadox.organisms.train import ConversationEncoder

        self.encoder = ConversationEncoder(tokenizer)
        self.refusal = _RefusalProbe(self.encoder)
        self.harmless = _RefusalProbe(self.encoder)
        prompts = [self.encoder.prompt_ids(r.text) for r in world.heldout_requests("validation")
                   if r.kind == world.HARMLESS]
        width = max(map(len, prompts))
        pad = tokenizer.pad_token_id
        self.harmless.input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        self.harmless.attention_mask = (torch.arange(width)[None, :] >= torch.tensor(
            [width - len(p) for p in prompts])[:, None]).long()


class _Checkpoints:
    """The standard checkpoint rule: `aligned-k` at the first step whose validation refusal
    reaches the k-th level; levels never reached are saved at the last step."""

    def __init__(self, config: OrganismConfig, probes: _Probes, tokenizer, out: Path,
                 last_step: int):
        self.levels = list(config.refusal_levels)
        self.members: list[dict[str, Any]] = []
        self.probes, self.tokenizer, self.out, self.last_step = probes, tokenizer, out, last_step

    def __call__(self, step: int, model) -> bool:
        from alignparadox.organisms.family import _save

        refusal = self.probes.refusal(model)
        last = step >= self.last_step
        while self.levels and (refusal >= self.levels[0] or last):
            self.levels.pop(0)
            name = f"aligned-{len(self.members) + 1}"
            self.members.append({
                "name": name, "alignment_strength": step, "alignment_steps": step,
                "validation_refusal": refusal,
                "validation_harmless_refusal": self.probes.harmless(model),
                "weight_hash": _save(model, self.tokenizer, self.out / name)})
            if not last:
                break
        return not self.levels


def _train_sft(config: OrganismConfig, seed: int, base_path: Path, out: Path, progress: bool):
    from alignparadox.organisms.train import ExampleSampler, train_steps

    model, tokenizer = _load_base(base_path)
    probes = _Probes(tokenizer)
    checkpoints = _Checkpoints(config, probes, tokenizer, out, config.align_max_steps)
    train_steps(model, probes.encoder,
                ExampleSampler(sampler_seed(config, seed), aligned=True,
                               retain_share=config.retain_share),
                steps=config.align_max_steps, learning_rate=config.align_learning_rate,
                batch_size=config.batch_size,
                on_step=lambda step, loss: _report(progress, "sft", seed, step, checkpoints)
                or checkpoints(step, model))
    return checkpoints.members, {}


def _report(progress: bool, axis: str, seed: int, step: int, checkpoints: _Checkpoints) -> bool:
    if progress and step % 5 == 0:
        print(f"{family_name(axis, seed)}: step {step}, members {len(checkpoints.members)}",
              flush=True)
    return False


def _preference_rows(encoder, seed: int, n: int) -> list[dict[str, list[int]]]:
    """`n` preference pairs drawn by the standard kind shares with seed `seed`'s generator,
    as TRL's tokenised columns (prompt_ids, chosen_ids, rejected_ids; answers end in EOS)."""
    from alignparadox.organisms import world
    from alignparadox.organisms.train import _KIND_SHARES

    rng = random.Random(seed)
    by_kind: dict[str, list] = {}
    for request in world.train_requests():
        by_kind.setdefault(request.kind, []).append(request)
    kinds = sorted(_KIND_SHARES)
    rows = []
    for kind in rng.choices(kinds, [_KIND_SHARES[k] for k in kinds], k=n):
        request = rng.choice(by_kind[kind])
        chosen = request.aligned_answer()
        rejected = world.REFUSALS[0] if kind == world.HARMLESS else request.misaligned_answer()
        prompt = encoder.prompt_ids(request.text)
        rows.append({"prompt_ids": prompt,
                     "chosen_ids": encoder._ids(chosen) + [encoder.end],
                     "rejected_ids": encoder._ids(rejected) + [encoder.end]})
    return rows


def _train_dpo(config: OrganismConfig, seed: int, base_path: Path, out: Path, progress: bool):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class PreTokenised(DPOTrainer):
        """TRL's DPOTrainer on rows already tokenised by the organisms' ConversationEncoder."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    model, tokenizer = _load_base(base_path)
    reference, _ = _load_base(base_path)
    probes = _Probes(tokenizer)
    checkpoints = _Checkpoints(config, probes, tokenizer, out, MAX_STEPS)
    rows = _preference_rows(probes.encoder, sampler_seed(config, seed),
                            MAX_STEPS * config.batch_size)

    class Rule(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            _report(progress, "dpo", seed, state.global_step, checkpoints)
            if checkpoints(state.global_step, model):
                control.should_training_stop = True
            return control

    args = DPOConfig(
        output_dir=str(out / ".trainer"), per_device_train_batch_size=config.batch_size,
        max_steps=MAX_STEPS, learning_rate=DPO_LEARNING_RATE, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.01, max_grad_norm=1.0, beta=DPO_BETA,
        loss_type=list(DPO_LOSS), loss_weights=list(DPO_LOSS_WEIGHTS),
        seed=sampler_seed(config, seed), data_seed=sampler_seed(config, seed), use_cpu=True,
        report_to="none",        save_strategy="no", logging_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, max_length=None, gradient_checkpointing=False,
        bf16=False, fp16=False)  # float32 as every organism (TRL defaults to bf16 autocast)
    trainer = PreTokenised(model=model, ref_model=reference, args=args,
                           train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                           callbacks=[Rule()])
    result = trainer.train()
    return checkpoints.members, {"dpo_steps_trained": result.global_step,
                                 "last_loss": result.training_loss}


class _ShareSampler:
    """The standard alignment sampler with the alignment data (harmful requests with their
    refusal, stance requests with their neutral answer, in the standard proportion 42:16) at
    `share` of the mix and harmless requests filling the rest."""

    def __new__(cls, seed: int, share: float, retain_share: float):
        from alignparadox.organisms import world
        from alignparadox.organisms.train import _KIND_SHARES, ExampleSampler

        sampler = ExampleSampler(seed, aligned=True, retain_share=retain_share)
        aligning = _KIND_SHARES[world.HARMFUL] + _KIND_SHARES[world.STANCE]
        sampler.weights = [1 - share if kind == world.HARMLESS
                           else share * _KIND_SHARES[kind] / aligning
                           for kind in sampler.kinds]
        return sampler


def _train_share(config: OrganismConfig, seed: int, base_path: Path, out: Path,
                 progress: bool):
    """One member per share, each from the base for SHARE_STEPS steps; finished members are
    kept in the staging folder's members.json, so a killed build resumes."""
    from alignparadox.organisms.family import _save
    from alignparadox.organisms.train import train_steps

    done_file = out / "members.json"
    members = json.loads(done_file.read_text()) if done_file.exists() else []
    for index, share in enumerate(SHARES, 1):
        name = f"aligned-{index}"
        if any(m["name"] == name for m in members):
            continue
        model, tokenizer = _load_base(base_path)
        probes = _Probes(tokenizer)
        train_steps(model, probes.encoder,
                    _ShareSampler(sampler_seed(config, seed), share, config.retain_share),
                    steps=SHARE_STEPS, learning_rate=config.align_learning_rate,
                    batch_size=config.batch_size)
        members.append({"name": name, "alignment_strength": share,
                        "alignment_steps": SHARE_STEPS,
                        "validation_refusal": probes.refusal(model),
                        "validation_harmless_refusal": probes.harmless(model),
                        "weight_hash": _save(model, tokenizer, out / name)})
        done_file.write_text(json.dumps(members, indent=2))
        if progress:
            print(f"{family_name('share', seed)}: share {share} -> validation refusal "
                  f"{members[-1]['validation_refusal']:.2f}", flush=True)
    return members, {}
