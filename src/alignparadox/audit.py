"""`paradox audit MODEL [MODEL ...]`: the paradox study on a researcher's own model family in one
command, as `garak --model_name X` or `inspect eval TASK --model X` start theirs.

The models are one family at different alignment strengths (base, SFT, DPO checkpoints, or
several sizes), white-box (local folders, Hub ids, `organism:NAME`) or black-box
(`http://HOST/v1#MODEL`). Every measurement of the study that applies runs on them at a budget
(`quick`: minutes on one GPU for a 7B model; `standard`; `full`); black-box targets get the
measurements that need only answers (templates, PAIR, Best-of-N), and the plan says what is
skipped and why. `--base` (the family's pre-alignment model) adds the latent-attribution
defense with it as reference. Requests default to the target's own behaviour set (organisms),
else public sets (harmful: StrongREJECT; harmless: JBB-benign), fetched into the cache when they
are not on the machine, never one silently replaced by another; the judge is the user's, else
the target's own, else a known harmfulness classifier whose weights are in the local Hugging
Face cache (HarmBench's, Llama Guard 3), else the refusal-substring judge (whose limits the
report states). Alignment strength is `--strength` (one number per model, in order), else what
the targets' providers record, else the measured refusal rate.

Before it starts, the command prints the plan: cells per measurement and a time estimate from a
short calibration run (a batched greedy generation on the first white-box model), and after
it, the estimate beside the measured time. The run folder is an ordinary study run (resumable,
reported by `paradox report`); `--spec-out FILE` writes the equivalent study spec for `paradox
study run`, so the run can be reproduced, edited and shared.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from alignparadox.errors import UserError

BUDGETS = ("quick", "standard", "full")
BLACK_BOX_MEASUREMENTS = ("templates", "pair", "best_of_n")
PUBLIC_HARMFUL, PUBLIC_HARMLESS = "strongreject", "jbb-benign"
TEMPLATE_CORPUS = "jailbreak-templates"
ALL_BON_ATTACKS = ["direct", "bon_augment", "templates", "gcg", "pair", "steering"]


# Harmfulness classifiers the audit uses as its judge when their weights are on this machine (in
# the Hugging Face cache), best first, with their prompt format (`judges.classifier`).
KNOWN_CLASSIFIERS = (("cais/HarmBench-Llama-2-13b-cls", "harmbench"),
                     ("meta-llama/Llama-Guard-3-8B", "llama_guard"),
                     ("cais/HarmBench-Mistral-7b-val-cls", "harmbench"),
                     ("meta-llama/Llama-Guard-3-1B", "llama_guard"))


def local_classifier() -> str | None:
    """`classifier:FOLDER#FORMAT` of the first known classifier whose weights (safetensors)
    are in the local Hugging Face cache, else None. Nothing is downloaded."""
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE)
    for repo, prompt_format in KNOWN_CLASSIFIERS:
        snapshots = cache / f"models--{repo.replace('/', '--')}" / "snapshots"
        for folder in sorted(snapshots.glob("*")):
            if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
                return f"classifier:{folder}#{prompt_format}"
    return None


def _pick(budget: str, quick: Any, standard: Any, full: Any) -> Any:
    return {"quick": quick, "standard": standard, "full": full}[budget]


def budget_settings(budget: str) -> dict[str, dict[str, Any]]:
    """Settings per measurement at a budget (before requests and judge are added)."""
    def b(*values):
        return _pick(budget, *values)

    tokens = b(48, 96, 160)
    fit = {"n_fit": b(16, 48, 96), "n_select": b(8, 24, 48)}
    return {
        "alignment": {"n_per_kind": b(32, 100, 200), "max_new_tokens": tokens},
        "geometry": {**fit, "n_per_kind": b(16, 48, 100), "max_new_tokens": tokens},
        "model_tinkering": {**fit, "n_per_kind": b(12, 32, 64), "max_new_tokens": tokens,
                            "alphas": b([1.0], [0.5, 1.0, 2.0], [0.25, 0.5, 1.0, 2.0, 4.0])},
        "templates": {"n_requests": b(4, 16, 32), "n_templates": b(4, 16, 64),
                      "max_new_tokens": tokens},
        "gcg": {"n_requests": b(2, 8, 16), "num_steps": b(8, 100, 250),
                "search_width": b(32, 128, 512), "max_new_tokens": tokens},
        "best_of_n": {"n_requests": b(4, 24, 50), "n": b(8, 64, 256),
                      "max_new_tokens": tokens},
        "pair": {"n_requests": b(3, 16, 32), "streams": b(1, 3, 5), "rounds": b(2, 4, 10),
                 "max_new_tokens": tokens},
        "output_tinkering": {"sizes": b([16], [16, 64], [16, 64, 128]), "n_eval": b(8, 32, 64),
                             "steps": b(40, 150, 300), "max_new_tokens": tokens},
        # quick: the searches that cost no attack search (plain, augmented, steered), one
        # adaptive attack, no layer sweep; standard and full: every attack, as the paper
        "bon_defense": {"n": 8, "n_requests": b(8, 32, 100), "n_harmless": b(8, 32, 100),
                        "attacks": b(["direct", "bon_augment", "steering"], ALL_BON_ATTACKS,
                                     ALL_BON_ATTACKS),
                        "adaptive": b(["bon_augment"], ["pair", "bon_augment"],
                                      ["pair", "bon_augment"]),
                        "sweep": budget != "quick", "gcg_requests": b(1, 4, 8),
                        "gcg_steps": b(8, 50, 100), "n_adaptive": b(2, 8, 16),
                        "adaptive_bon_n": b(4, 16, 32), "n_over_refusal": b(8, 32, 100),
                        "steering_alphas": b([1.0], [0.5, 1.0, 2.0], [0.25, 0.5, 1.0, 2.0]),
                        "max_new_tokens": tokens},
    }


def _work(name: str, s: Mapping[str, Any]) -> float:
    """Rough generated-token rows a cell costs, for the plan's estimate (calibrated per model):
    decoding dominates most measurements; GCG counts a candidate forward as one token row, the
    editor a training step as twenty. Checked against measured times on organisms and random
    models (within a factor of about 3 per measurement); the plan calls it an estimate."""
    tokens = s.get("max_new_tokens", 48)
    return {
        "alignment": 2 * s.get("n_per_kind", 0) * tokens,
        "geometry": (s.get("n_fit", 0) + s.get("n_select", 0) + 2 * s.get("n_per_kind", 0))
        * tokens,
        "model_tinkering": s.get("n_per_kind", 0) * (4 + 3 * len(s.get("alphas", [])))
        * tokens + (s.get("n_fit", 0) + s.get("n_select", 0)) * tokens,
        "templates": s.get("n_requests", 0) * s.get("n_templates", 0) * tokens,
        "gcg": s.get("n_requests", 0) * (s.get("num_steps", 0) * (s.get("search_width", 0)
                                                                   + 10) + tokens),
        "best_of_n": s.get("n_requests", 0) * s.get("n", 0) * tokens / 2,
        "pair": s.get("n_requests", 0) * s.get("streams", 0) * s.get("rounds", 0) * tokens * 2,
        "output_tinkering": len(s.get("sizes", [])) * s.get("steps", 0) * 20
        + s.get("n_eval", 0) * tokens * 8,
        "bon_defense": (s.get("n_requests", 0) * len(s.get("attacks", ALL_BON_ATTACKS))
                        * (2 if s.get("sweep", True) else 1) + s.get("n_harmless", 0)
                        + s.get("n_over_refusal", 0)) * s.get("n", 8) * tokens
        + s.get("n_adaptive", 0) * s.get("adaptive_bon_n", 16) * s.get("n", 8) * tokens,
    }.get(name, 0.0)


# -- the family -----------------------------------------------------------------------------------


def _is_endpoint(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def _folder(spec: str) -> Path:
    """The local folder of a white-box spec (a provider's target is resolved, built on first
    use)."""
    from alignparadox.targets.providers import provider_for
    from alignparadox.targets.specs import split_target
    from alignparadox.targets.whitebox import _local_folder

    model = split_target(spec)[0]
    found = provider_for(model)
    if found is not None:
        provider, name = found
        return Path(provider.resolve(name))
    folder = _local_folder(model)
    if folder is None:  # a Hub id: its cached snapshot (offline machines have checked it)
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(model, allow_patterns=["*.json", "*.model",
                                                                   "*.txt", "*.jinja"]))
        except Exception as error:  # offline without a copy, unknown, gated
            raise UserError(f"{model} is not a local folder and could not be read from the "
                            f"Hugging Face Hub ({type(error).__name__}).") from error
    return folder


def _config(folder: Path, spec: str) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"{spec} has no readable config.json ({error}).") from None


def _shape(config: Mapping[str, Any]) -> tuple:
    text = config.get("text_config") or config
    return (config.get("model_type"), text.get("hidden_size") or text.get("n_embd"),
            text.get("num_hidden_layers") or text.get("n_layer"))


def _vocabulary(folder: Path, spec: str) -> str:
    """A digest of the tokenizer's vocabulary (what makes answers comparable token by token)."""
    import hashlib

    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except Exception as error:  # a folder without a readable tokenizer
        raise UserError(f"{spec} has no tokenizer this toolkit can read "
                        f"({type(error).__name__}).") from None
    vocabulary = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocabulary).encode()).hexdigest()


def check_family(models: Sequence[str], base: str | None, *, allow_mixed: bool) -> None:
    """Refuse, before anything runs, a family this command cannot audit as one: a missing
    model, white-box models with different tokenizers (without `allow_mixed`), a base of
    another architecture or width, a base given for black-box targets."""
    from alignparadox.attacks.input_tinkering.base import check_any_target

    if len(set(models)) != len(models):
        raise UserError("a model is named twice; give each member of the family once.")
    for spec in [*models, *([base] if base else [])]:
        check_any_target(spec)
    white = [m for m in models if not _is_endpoint(m)]
    if base is not None:
        if _is_endpoint(base):
            raise UserError(f"--base {base} is an endpoint; the base must be a white-box model "
                            "(its hidden states are read).")
        if not white:
            raise UserError("--base is for white-box targets (the defense reads both models' "
                            "hidden states); every model given is a black-box endpoint.")
    folders = {spec: _folder(spec) for spec in white + ([base] if base else [])}
    if len(white) > 1 and not allow_mixed:
        digests = {spec: _vocabulary(folders[spec], spec) for spec in white}
        first = white[0]
        for spec in white[1:]:
            if digests[spec] != digests[first]:
                raise UserError(f"{spec} and {first} have different tokenizers, so they are not "
                                "one model family; audit them separately, or pass "
                                "--allow-mixed to compare them anyway.")
    if base is not None:
        shape = _shape(_config(folders[base], base))
        for spec in white:
            mine = _shape(_config(folders[spec], spec))
            if mine != shape:
                raise UserError(f"--base {base} is a {shape[0]} of width {shape[1]} and "
                                f"{shape[2]} layers, but {spec} is a {mine[0]} of width "
                                f"{mine[1]} and {mine[2]} layers; the base must be the same "
                                "model before alignment.")


def parse_strengths(text: str | None, models: Sequence[str]) -> dict[str, float] | None:
    if text is None:
        return None
    parts = [part.strip() for part in text.split(",")]
    try:
        values = [float(part) for part in parts]
    except ValueError:
        raise UserError(f"--strength must be numbers separated by commas (one per model), got "
                        f"{text!r}.") from None
    if len(values) != len(models) or not all(math.isfinite(v) for v in values):
        raise UserError(f"--strength gives {len(values)} number(s) for {len(models)} model(s); "
                        "give one finite number per model, in order.")
    return dict(zip(models, values, strict=True))


# -- the spec -------------------------------------------------------------------------------------


def audit_spec(models: Sequence[str], *, base: str | None = None, budget: str = "quick",
               judge: str | None = None, harmful: str | None = None,
               harmless: str | None = None, strengths: Mapping[str, float] | None = None,
               name: str = "audit") -> tuple[Any, dict[str, str]]:
    """The study spec of an audit, and the measurements skipped with the reason."""
    from alignparadox.datasets.behaviours import check_source
    from alignparadox.study.measurement import find_measurement
    from alignparadox.study.spec import MeasurementPlan, StudySpec
    from alignparadox.targets.providers import target_defaults

    if budget not in BUDGETS:
        raise UserError(f"unknown budget {budget!r}; known: {', '.join(BUDGETS)}.")
    white = [m for m in models if not _is_endpoint(m)]
    black = [m for m in models if _is_endpoint(m)]
    own = all(target_defaults(m).get("behaviours") for m in white) and not black
    requests: dict[str, Any] = {}
    if harmful or harmless or not own:
        requests = {"harmful": harmful or PUBLIC_HARMFUL, "harmless": harmless or PUBLIC_HARMLESS}
        given = {"harmful": harmful, "harmless": harmless}
        for part, source in requests.items():
            if given[part]:
                check_source(source, part)
            else:
                _default_set(source, part)
    if judge is not None:
        requests["judge"] = judge
    elif requests or not own:  # the best judge on this machine: a classifier, else substring
        requests["judge"] = local_classifier() or "substring"
    skipped: dict[str, str] = {}
    plans = []
    for measurement, settings in budget_settings(budget).items():
        if find_measurement(measurement) is None:
            skipped[measurement] = "not installed"
            continue
        targets = list(models) if measurement in BLACK_BOX_MEASUREMENTS else white
        if measurement == "templates" and not _templates_available():
            skipped[measurement] = (f"no {TEMPLATE_CORPUS} corpus on this machine (set "
                                    "ALIGNPARADOX_DATASETS to a folder holding jailbreak_llms/)")
            continue
        if measurement == "bon_defense":
            if base is None:
                skipped[measurement] = "needs the family's pre-alignment model (--base)"
                continue
            targets = [t for t in white if t != base]
            settings = {**settings, "reference": base}
        if not targets:
            skipped[measurement] = "white-box only; every model given is an endpoint"
            continue
        if black and measurement not in BLACK_BOX_MEASUREMENTS:
            skipped[f"{measurement} on endpoints"] = "white-box only (reads or edits weights)"
        plans.append(MeasurementPlan(measurement, {**settings, **requests},
                                     targets=tuple(targets) if targets != list(models) else None))
    given_strengths = ({"axis": "alignment strength given to the audit",
                        "values": dict(strengths)} if strengths else None)
    # The base is the defense's reference, not a member: list it among the models to have it
    # measured as the family's weakest member.
    notes = tuple(f"Skipped by the audit: {what} ({why})." for what, why in skipped.items())
    return StudySpec(targets=tuple(models), measurements=tuple(plans), name=name,
                     strengths=given_strengths, notes=notes), skipped


def _default_set(name: str, part: str) -> None:
    """A default public set that is not on this machine is fetched into the cache (a machine
    with internet, or $ALIGNPARADOX_PROMPTS_MIRROR), where every command then finds it."""
    from alignparadox.datasets import load_prompt_set
    from alignparadox.datasets.registry import fetch_set

    try:
        load_prompt_set(name)
        return
    except UserError:
        pass
    try:
        fetch_set(name)
        load_prompt_set(name)
    except UserError as error:
        raise UserError(f"the audit's default {part} set {name} is not on this machine and "
                        f"could not be fetched ({error}); give --{part} SET_OR_FILE.") from None


def _templates_available() -> bool:
    from alignparadox.datasets.registry import datasets_root

    try:
        return (datasets_root() / "jailbreak_llms").is_dir()
    except UserError:
        return False


def calibrate(spec: str, prompts: Sequence[str], *, tokens: int) -> float:
    """Seconds per generated token row on this device: one batched greedy generation of the
    audit's own requests at its answer length."""
    from alignparadox.targets import GenerationConfig, shared_target

    target = shared_target(spec)
    target.generate(list(prompts[:1]), GenerationConfig(max_new_tokens=2))  # warm-up
    started = time.perf_counter()
    target.generate(list(prompts), GenerationConfig(max_new_tokens=tokens,
                                                    batch_size=len(prompts)))
    return (time.perf_counter() - started) / (len(prompts) * tokens)


def calibration_prompts(spec, n: int = 8) -> list[str]:
    """A few of the study's own harmful requests (those its first cell would ask)."""
    from alignparadox.study.inputs import cell_behaviours
    from alignparadox.study.runner import plan_cells

    cell = plan_cells(spec)[0]
    return list(cell_behaviours(cell, needs_harmless=False).requests(
        "harmful", "test", n, spec.seed).texts)


def plan_rows(spec, seconds_per_row: float | None) -> list[tuple[str, int, float | None]]:
    """(measurement, cells, estimated seconds) per measurement of the spec."""
    from alignparadox.study.runner import plan_cells

    cells = plan_cells(spec)
    by_measurement: dict[str, list] = defaultdict(list)
    for cell in cells:
        by_measurement[cell.measurement].append(cell)
    return [(name, len(members), None if seconds_per_row is None else
             sum(_work(name, c.settings) for c in members) * seconds_per_row)
            for name, members in by_measurement.items()]


# -- the command ----------------------------------------------------------------------------------


def audit(
    models: list[str] = typer.Argument(..., help="The family: HF ids or folders, organism:NAME, "
                                                 "or http://HOST/v1#MODEL endpoints."),
    base: str = typer.Option(None, "--base", help="The family's pre-alignment model (adds the "
                                                  "latent-attribution defense)."),
    budget: str = typer.Option("quick", help=f"One of {', '.join(BUDGETS)}."),
    run_dir: Path = typer.Option(None, "--run-dir", help="[default: runs/audit]"),
    strength: str = typer.Option(None, "--strength", help="Alignment strength per model, in "
                                                          "order, e.g. 0,1,2."),
    judge: str = typer.Option(None, "--judge", help="Judge spec [default: the target's own, "
                                                    "else substring]."),
    harmful: str = typer.Option(None, "--harmful", help=f"Harmful requests (set or file) "
                                                        f"[default: {PUBLIC_HARMFUL}]."),
    harmless: str = typer.Option(None, "--harmless", help=f"Harmless requests [default: "
                                                          f"{PUBLIC_HARMLESS}]."),
    allow_mixed: bool = typer.Option(False, "--allow-mixed", help="Audit models with different "
                                                                  "tokenizers as one family."),
    spec_out: Path = typer.Option(None, "--spec-out", help="Write the equivalent study spec "
                                                           "(JSON) for `paradox study run`."),
    plan_only: bool = typer.Option(False, "--plan-only", help="Print the plan and stop."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Run the paradox study on your own model family: plan, run, report."""
    from alignparadox.datasets.io import check_output_file
    from alignparadox.report import write_report
    from alignparadox.report.writer import read_store
    from alignparadox.study.runner import StudyStopped, prepare_run_dir, run_study

    console = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)  # paths whole
    if budget not in BUDGETS:
        raise UserError(f"unknown budget {budget!r}; known: {', '.join(BUDGETS)}.")
    if spec_out is not None:
        if spec_out.suffix != ".json":
            raise UserError(f"--spec-out {spec_out} must end in .json.")
        check_output_file(spec_out, "the study spec")
    strengths = parse_strengths(strength, models)
    check_family(models, base, allow_mixed=allow_mixed)
    spec, skipped = audit_spec(models, base=base, budget=budget, judge=judge, harmful=harmful,
                               harmless=harmless, strengths=strengths)
    run_dir = run_dir if run_dir is not None else Path("runs") / "audit"
    white = [m for m in models if not _is_endpoint(m)]
    started = time.perf_counter()
    tokens = budget_settings(budget)["alignment"]["max_new_tokens"]
    per_row = (calibrate(white[0], calibration_prompts(spec), tokens=tokens) if white
               else None)
    calibration = time.perf_counter() - started
    rows = plan_rows(spec, per_row)
    table = Table(title=f"audit plan: {len(models)} model(s), budget {budget}")
    for column in ("measurement", "cells", "estimate"):
        table.add_column(column, justify="left" if column == "measurement" else "right")
    for name, cells, estimate in rows:
        table.add_row(name, str(cells), "—" if estimate is None else _duration(estimate))
    total = sum(e for _, _, e in rows if e is not None)
    console.print(table)
    console.print(f"estimated total {_duration(total)} (from a {calibration:.1f} s calibration "
                  f"on {white[0]})" if white else "no estimate: no white-box model to time")
    judges = {plan.settings.get("judge") for plan in spec.measurements}
    console.print(f"judge: {', '.join(sorted(j for j in judges if j)) or 'each target’s own'}")
    for name, why in skipped.items():
        console.print(f"skipped {name}: {why}")
    if spec_out is not None:
        spec_out.write_text(json.dumps(spec.as_dict(), indent=2) + "\n", encoding="utf-8")
        console.print(f"study spec: {spec_out} (paradox study run {spec_out})")
    if plan_only:
        return
    prepare_run_dir(run_dir)
    started = time.perf_counter()
    try:
        summary = run_study(spec, run_dir, progress=progress)
    except StudyStopped as stopped:  # Ctrl-C: say what was kept; the same command resumes
        console.print(str(stopped))
        raise typer.Exit(130) from None
    wall = time.perf_counter() - started
    report = write_report(run_dir)
    with read_store(run_dir) as store:
        spent: dict[str, float] = defaultdict(float)
        for record in store.records(status=None):
            spent[record.measurement] += record.wall_seconds
    side = Table(title="plan vs actual")
    for column in ("measurement", "estimate", "measured"):
        side.add_column(column, justify="left" if column == "measurement" else "right")
    for name, _, estimate in rows:
        side.add_row(name, "—" if estimate is None else _duration(estimate),
                     _duration(spent.get(name, 0.0)))
    console.print(side)
    console.print(f"wall time {_duration(wall)} (estimate {_duration(total)}); "
                  f"{summary.computed} cells computed, {summary.reused} reused, "
                  f"{len(summary.failed)} failed")
    console.print(f"report: {report.resolve()}")
    if summary.failed:
        raise typer.Exit(1)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
