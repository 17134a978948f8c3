"""Robust organism families: the standard family's base organism aligned by a robust-training
recipe (`alignparadox.defenses.robust_training`), one family per recipe, addressed as
`organism:refat/aligned-3`, `organism:lat/...`, `organism:rr/...`; `METHOD/base` is the shared
base organism. Every family keeps the standard family's checkpoint rule, one member per level
of `OrganismConfig.refusal_levels` measured by the same validation probe, in one of two ways:

- `refat`, `lat`: the recipe *replaces* plain refusal fine-tuning from the base organism, and
  `aligned-k` is saved at the first step whose validation refusal reaches the k-th level
  (levels never reached are saved at the last step).
- `rr` (circuit breakers): representation rerouting is put on each standard aligned member,
  as Zou et al. (2024) put it on already refusal-trained chat models: `rr/aligned-k` is the
  standard `aligned-k` (saved by the rule above) after `RR_STEPS` steps of the RR objective
  alone — α(1 − t/2T)·ReLU(cos(h, h_orig)) on harmful text plus α·t/2T·‖h − h_orig‖₂ on the
  retain set, at the stream after blocks 1 and 2 of 4, h_orig being that member's own states.
  Why not RR added to refusal fine-tuning from the base (the first build): the checkpoint rule
  is driven by refusal, which the organism learns in 9 to 42 steps, long before rerouting moves
  anything (cosine to the original stayed ≥ 0.98), so every member was plain refusal
  fine-tuning. Settings, chosen on the validation split (never the test split) for the
  strongest rerouting of harmful completions that keeps harmless states (mean cosine ≥ 0.95)
  and validation refusal (within 0.05 of the starting member), from learning rates 3e-4 and
  1e-3 over 60 steps on `aligned-5`: 1e-3. The retain set holds the harmless conversations
  and the harmful requests with their refusal (the paper's "refusal retain" for Llama-3), and
  the rerouting covers the harmful *completion's* tokens only: rerouting the request's tokens
  too (the paper's code) fights the refusal retain on the very same states and took validation
  refusal from 0.97 to 0.15. A member's `alignment_steps` is its standard member's
  (the alignment-strength axis is shared); `rr_steps`, `start_validation_refusal` (the
  standard member's) and `validation_refusal` (after RR) are recorded beside it.
  `rerouting_cosines` measures what the rerouting did.

The recipes get the organism world's training requests as plain data: harmful requests with
the world's refusal and their compliant (harmful) answer, and harmless and stance requests with
their aligned answers (the standard family's alignment data, without the masked-opening
compliant examples that make its alignment shallow). Full fine-tuning, as the standard family.

A family is cached in `$ALIGNPARADOX_CACHE/organisms/robust/METHOD-KEY`; KEY hashes the standard
family's key, the recipe config and the source of this module and of the recipes, so a change
to any of them trains a new family. A build killed half-way resumes from its last state.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignparadox.datasets.io import cache_root
from alignparadox.errors import UserError
from alignparadox.organisms.train import OrganismConfig

METHODS = ("refat", "lat", "rr")
MANIFEST = "family.json"
MAX_STEPS = 300  # the standard family reaches its last level in well under a hundred steps
RR_STEPS = 60  # circuit breakers on each standard aligned member (see the module's docstring)
RR_LEARNING_RATE = 1e-3


def recipe_config(method: str, config: OrganismConfig | None = None):
    """The recipe config a robust family of `method` is trained with."""
    from alignparadox.defenses.robust_training import make_config

    config = config or OrganismConfig()
    _check_method(method)
    common = dict(seed=config.seed + 1, steps=MAX_STEPS, learning_rate=config.align_learning_rate,
                  batch_size=config.batch_size // 2, adapter="full", checkpoint_every=10,
                  threads=config.train_threads)
    if method == "rr":  # circuit breakers on each aligned member: the RR objective alone
        common.update(steps=RR_STEPS, learning_rate=RR_LEARNING_RATE, batch_size=16,
                      refusal_weight=0.0, retain_refusals=True, reroute="completion")
    return make_config(method, **common)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise UserError(f"unknown robust organism family {method!r}; known: "
                        f"{', '.join(METHODS)}.")


def member_names(config: OrganismConfig | None = None) -> list[str]:
    config = config or OrganismConfig()
    return ["base", *(f"aligned-{i}" for i in range(1, len(config.refusal_levels) + 1))]


def split_name(name: str) -> tuple[str, str]:
    """`METHOD/MEMBER` -> (method, member), refused in one sentence when unknown."""
    method, _, member = name.partition("/")
    _check_method(method)
    known = member_names()
    if member not in known:
        raise UserError(f"unknown organism {name!r}; known: "
                        f"{', '.join(f'{method}/{m}' for m in known)}.")
    return method, member


def family_key(method: str, config: OrganismConfig | None = None) -> str:
    from alignparadox.defenses.robust_training import source_digest

    config = config or OrganismConfig()
    payload = json.dumps({"family": config.config_hash(),
                          "recipe": recipe_config(method, config).as_dict(),
                          "recipes_code": source_digest(),
                          "robust_code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()},
                         sort_keys=True, default=list)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def family_dir(method: str, config: OrganismConfig | None = None) -> Path:
    return cache_root() / "organisms" / "robust" / f"{method}-{family_key(method, config)}"


def world_data():
    """The organism world's training data for the recipes."""
    from alignparadox.defenses.robust_training import (
        BehaviourData,
        HarmfulExample,
        HarmlessExample,
    )
    from alignparadox.organisms import world

    requests = world.train_requests()
    return BehaviourData(
        tuple(HarmfulExample(r.text, r.aligned_answer(), r.misaligned_answer())
              for r in requests if r.harmful),
        tuple(HarmlessExample(r.text, r.aligned_answer()) for r in requests if not r.harmful))


@dataclass(frozen=True)
class RobustFamily:
    method: str
    path: Path
    manifest: dict[str, Any]

    def member(self, name: str) -> dict[str, Any]:
        for member in self.manifest["members"]:
            if member["name"] == name:
                return member
        raise UserError(f"unknown organism {self.method}/{name}.")

    def path_of(self, name: str) -> Path:
        if name == "base":
            return Path(self.manifest["base_path"])
        self.member(name)
        return self.path / name


def load_robust_family(method: str, config: OrganismConfig | None = None) -> RobustFamily:
    folder = family_dir(method, config)
    if not (folder / MANIFEST).exists():
        raise UserError(f"the {method} organism family is not built at {folder}; open "
                        f"organism:{method}/aligned-1 (or call build_robust_family) to build it.")
    return RobustFamily(method, folder, json.loads((folder / MANIFEST).read_text()))


def build_robust_family(method: str, config: OrganismConfig | None = None, *,
                        progress: bool = True) -> RobustFamily:
    """Train (or reuse from the cache) the robust family of `method`; the standard family is
    built first if needed (its base organism is the starting point)."""
    from alignparadox.organisms.family import build_family

    config = config or OrganismConfig()
    _check_method(method)
    target = family_dir(method, config)
    if (target / MANIFEST).exists():
        return load_robust_family(method, config)
    standard = build_family(config, progress=progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (target / MANIFEST).exists():
                build = _build_rr_into if method == "rr" else _build_into
                build(method, config, standard, target, progress)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return load_robust_family(method, config)


def _build_into(method: str, config: OrganismConfig, standard, target: Path,
                progress: bool) -> None:
    import torch

    from alignparadox.defenses.robust_training import train
    from alignparadox.organisms.family import Member, _RefusalProbe, _save
    from alignparadox.organisms.train import ConversationEncoder
    from alignparadox.targets import load_target

    started = time.perf_counter()
    # A fixed staging folder (not a fresh temporary one), so a killed build resumes from the
    # state the recipe keeps in it.
    staging = target.parent / f".building-{target.name}"
    staging.mkdir(parents=True, exist_ok=True)
    recipe = recipe_config(method, config)
    base = load_target(standard.path_of("base"), device="cpu", dtype=torch.float32,
                       name=f"organism:{method}/base")
    probe = _RefusalProbe(ConversationEncoder(base.tokenizer))
    schedule: dict[str, Any] = {"levels": list(config.refusal_levels), "members": []}

    def on_step(step: int, model, metrics: dict) -> bool:
        refusal = probe(model)
        last = step == recipe.steps
        levels, members = schedule["levels"], schedule["members"]
        while levels and (refusal >= levels[0] or last):
            levels.pop(0)
            name = f"aligned-{len(members) + 1}"
            weights = _save(model, base.tokenizer, staging / name)
            members.append({"name": name, "alignment_steps": step,
                            "validation_refusal": refusal, "weight_hash": weights})
            if not last:
                break
        return not levels

    def restore(state: dict) -> None:
        schedule.update(json.loads(json.dumps(state)))

    _, result = train(base, world_data(), recipe, state_dir=staging / ".state",
                      progress=progress, on_step=on_step, extra_state=lambda: dict(schedule),
                      load_extra_state=restore, description=f"{method} robust alignment")
    base_member = standard.member("base")
    manifest = {
        "method": method, "recipe": recipe.as_dict(), "key": target.name,
        "standard_family": standard.path.name, "base_path": str(standard.path_of("base")),
        "members": [vars(Member("base", 0, base_member.validation_refusal,
                                base_member.weight_hash)), *schedule["members"]],
        "steps_trained": result.steps, "resumed_from": result.resumed_from,
        "details": result.details, "build_seconds": time.perf_counter() - started,
        "standard_build_seconds": standard.build_seconds,
    }
    shutil.rmtree(staging / ".state", ignore_errors=True)
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def _build_rr_into(method: str, config: OrganismConfig, standard, target: Path,
                   progress: bool) -> None:
    """Circuit breakers on each standard aligned member; a killed build keeps the members it
    finished and resumes the one it was training."""
    import torch

    from alignparadox.defenses.robust_training import train
    from alignparadox.organisms.family import Member, _RefusalProbe, _save
    from alignparadox.organisms.train import ConversationEncoder
    from alignparadox.targets import load_target

    started = time.perf_counter()
    staging = target.parent / f".building-{target.name}"
    staging.mkdir(parents=True, exist_ok=True)
    progress_file = staging / "members.json"
    members = json.loads(progress_file.read_text()) if progress_file.exists() else []
    recipe = recipe_config(method, config)
    data = world_data()
    probe = None
    for start in standard.members[1:]:
        if any(m["name"] == start.name for m in members):
            continue
        initial = load_target(standard.path_of(start.name), device="cpu", dtype=torch.float32,
                              name=f"organism:{start.name}")
        probe = probe or _RefusalProbe(ConversationEncoder(initial.tokenizer))
        model, result = train(initial, data, recipe, state_dir=staging / ".state" / start.name,
                              progress=progress,
                              description=f"rr circuit breakers on {start.name}")
        members.append({"name": start.name, "alignment_steps": start.alignment_steps,
                        "validation_refusal": probe(model),
                        "start_validation_refusal": start.validation_refusal,
                        "rr_steps": result.steps, "last_losses": result.last_metrics,
                        "weight_hash": _save(model, initial.tokenizer, staging / start.name)})
        progress_file.write_text(json.dumps(members, indent=2))
        shutil.rmtree(staging / ".state" / start.name, ignore_errors=True)
    base_member = standard.member("base")
    manifest = {
        "method": method, "recipe": recipe.as_dict(), "key": target.name,
        "standard_family": standard.path.name, "base_path": str(standard.path_of("base")),
        "members": [vars(Member("base", 0, base_member.validation_refusal,
                                base_member.weight_hash)), *members],
        "steps_trained": recipe.steps * len(members), "details": {"rerouted_layers": list(
            recipe.chosen_layers(config.layers))},
        "build_seconds": time.perf_counter() - started,
        "standard_build_seconds": standard.build_seconds,
    }
    shutil.rmtree(staging / ".state", ignore_errors=True)
    progress_file.unlink()
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def rerouting_cosines(method: str, split: str = "test", *, limit: int = 64,
                      config: OrganismConfig | None = None) -> dict[str, Any]:
    """Per member of the robust family `method`, per layer of its recipe (the rerouted layers
    for rr, one third and two thirds of the depth otherwise), the mean cosine between the
    member's stream and a reference's on held-out `split` text: harmful requests with their
    harmful answer (over the answer's tokens, what rr reroutes) and harmless requests with
    their answer (over all tokens). References: the base organism (`base`) and the standard
    member of the same name (`standard`; for rr the model the rerouting started from)."""
    import torch

    from alignparadox.hooks import capture
    from alignparadox.organisms import world
    from alignparadox.organisms.family import build_family
    from alignparadox.organisms.train import ConversationEncoder
    from alignparadox.targets import load_target

    config = config or OrganismConfig()
    family = build_robust_family(method, config, progress=False)
    standard = build_family(config, progress=False)
    layers = family.manifest.get("details", {}).get("rerouted_layers") or sorted(
        {max(1, config.layers // 3), max(1, (2 * config.layers) // 3)})
    requests = world.heldout_requests(split)
    harmful = [r for r in requests if r.harmful][:limit]
    harmless = [r for r in requests if r.kind == "harmless"][:limit]

    def load(path):
        return load_target(path, device="cpu", dtype=torch.float32)

    reference = load(family.path_of("base"))
    encoder = ConversationEncoder(reference.tokenizer)

    def texts(rows, answer):
        out = []
        for r in rows:
            prompt = encoder.prompt_ids(r.text)
            ids = prompt + reference.tokenizer(answer(r), add_special_tokens=False)["input_ids"]
            out.append((ids, len(prompt)))
        return out

    sets = {"harmful": (texts(harmful, lambda r: r.misaligned_answer()), True),
            "harmless": (texts(harmless, lambda r: r.aligned_answer()), False)}

    @torch.no_grad()
    def states(model):
        found = {}
        for kind, (rows, answer_only) in sets.items():
            found[kind] = []
            for ids, prompt_length in rows:
                with capture(model, layers) as acts:
                    model(input_ids=torch.tensor([ids]))
                first = prompt_length if answer_only else 0
                found[kind].append({layer: acts[layer][0, first:].clone() for layer in layers})
        return found

    def cosine(new, old):
        return {kind: {layer: round(torch.stack([
            torch.cosine_similarity(a[layer], b[layer], dim=-1).mean()
            for a, b in zip(new[kind], old[kind], strict=True)]).mean().item(), 4)
            for layer in layers} for kind in new}

    base_states = states(reference.model)
    result: dict[str, Any] = {"split": split, "layers": layers, "members": {}}
    for member in family.manifest["members"][1:]:
        name = member["name"]
        mine = states(load(family.path_of(name)).model)
        result["members"][name] = {
            "base": cosine(mine, base_states),
            "standard": cosine(mine, states(load(standard.path_of(name)).model)),
            "validation_refusal": member["validation_refusal"]}
    return result


def robust_organism_path(name: str, config: OrganismConfig | None = None) -> Path:
    """Folder of `METHOD/MEMBER`, building the robust family first if needed."""
    method, member = split_name(name)
    return build_robust_family(method, config).path_of(member)


def describe(name: str) -> dict[str, Any]:
    method, member = split_name(name)
    family = load_robust_family(method)
    entry = family.member(member)
    return {
        "provider": "organism",
        "family": f"robust/{family.path.name}",
        "defense": method,
        "alignment_strength": entry["alignment_steps"],
        "alignment_axis": ("refusal fine-tuning steps of the standard member, then "
                           f"{entry.get('rr_steps')} circuit-breaker steps" if method == "rr"
                           else f"{method} robust-training steps"),
        "validation_refusal": entry["validation_refusal"],
        "family_members": {m["name"]: {"steps": m["alignment_steps"],
                                       "validation_refusal": round(m["validation_refusal"], 4)}
                           for m in family.manifest["members"]},
    }
