"""`paradox attack templates | pair | bon | gcg | injection`: one input-tinkering attack on
one target.

TARGET is `organism:NAME`, a local model folder or Hub id, or `http(s)://HOST/v1#MODEL` for an
OpenAI-compatible endpoint (GCG needs weights, so white-box only). With `--out DIR`, every
finished result is appended to DIR/results.jsonl as it finishes and DIR/summary.json is written
at the end; running the same command again resumes, skipping finished results and redoing
failed ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from alignparadox.attacks.input_tinkering.base import (
    AttackResult,
    ResultLog,
    Target,
    check_any_target,
    harmful_requests,
    open_any_target,
    require_positive,
    summarize,
    write_json_atomic,
)
from alignparadox.datasets.io import check_output_folder
from alignparadox.errors import UserError

if TYPE_CHECKING:
    from alignparadox.datasets.records import PromptSet


class _AttackGroup(TyperGroup):
    """Names an unknown attack in one sentence (exit 2) instead of a usage dump."""

    def resolve_command(self, ctx, args):  # noqa: ANN001, ANN201 - click's signature
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            raise UserError(f"unknown attack {name!r}; known attacks: "
                            f"{', '.join(sorted(self.list_commands(ctx)))}.")
        return super().resolve_command(ctx, args)


app = typer.Typer(help="Input tinkering: jailbreak templates, PAIR, Best-of-N, GCG and instruction "
                  "injection.",
                  no_args_is_help=True, cls=_AttackGroup)

TargetArgument = Annotated[str, typer.Argument(
    help="organism:NAME, a model folder or Hub id, or http(s)://HOST/v1#MODEL.")]
PromptSetOption = Annotated[str | None, typer.Option(
    "--prompt-set", help="Registered prompt set, or a file of your own (.csv/.tsv with a text "
    "column, or .jsonl as `paradox prompts sample --out` writes); its harmful requests are "
    "attacked (rows without a harmful column count as harmful). Default: the target's own "
    "requests (organisms: their world's); other targets must name one.")]
RequestsOption = Annotated[int, typer.Option("--n-requests", help="Harmful requests sampled.")]
JudgeOption = Annotated[str | None, typer.Option(
    "--judge", help="Judge spec (see `paradox judges`). Default: the target's own (organisms: "
    "the world's exact judge), else the refusal-substring judge.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed for sampling and augmentations.")]
TokensOption = Annotated[int, typer.Option("--max-new-tokens", help="Answer length budget.")]
BatchOption = Annotated[int, typer.Option("--batch-size", help="Prompts per forward batch.")]
OutOption = Annotated[Path | None, typer.Option(
    "--out", help="Folder for results.jsonl (incremental, resumable) and summary.json.")]
ConcurrencyOption = Annotated[int, typer.Option(
    "--concurrency", help="Endpoint targets: parallel requests.")]
RateOption = Annotated[float | None, typer.Option(
    "--rpm", help="Endpoint targets: at most this many requests per minute.")]
RetriesOption = Annotated[int, typer.Option(
    "--retries", help="Endpoint targets: retries per request on 429/5xx/dropped connections.")]
# Instruction injection (also `paradox defend secalign`)
InjectionsOption = Annotated[str | None, typer.Option(
    "--injections", help="Instructions to inject: a .jsonl file (id, instruction, canary) or a "
    "registered set. Default: the target's own, else the built-in benign canaries.")]
PositionsOption = Annotated[str, typer.Option(
    "--positions", help="Where injections go, comma-separated: start, middle, end.")]
DisguisesOption = Annotated[str, typer.Option(
    "--disguises", help="How they are dressed, comma-separated: plain, ignore, completion, "
    "fake_system.")]


def _inputs(target: str, prompt_set: str | None, judge: str | None) -> tuple[str, str]:
    """The prompt set and judge spec to use: as given, else the target's provider's defaults;
    a target without default requests must be given --prompt-set."""
    from alignparadox.study.inputs import FALLBACK_JUDGE
    from alignparadox.targets.providers import target_defaults

    check_any_target(target)  # a mistyped target is named as such, before anything else
    defaults = target_defaults(target) if prompt_set is None or judge is None else {}
    prompt_set = prompt_set or defaults.get("harmful") or defaults.get("behaviours")
    if prompt_set is None:
        raise UserError(f"give --prompt-set for {target}: it has no default requests (e.g. "
                        "--prompt-set strongreject, or a .csv/.jsonl file of your own).")
    return prompt_set, judge or defaults.get("judge") or FALLBACK_JUDGE


def _requests(prompt_set: str, n: int, seed: int) -> PromptSet:
    """A seeded sample of harmful requests from a registered set or from a file of one's own
    (anything with a file suffix or a folder in it: registered names have neither)."""
    from alignparadox.datasets.loaders import PROMPT_FILE_SUFFIXES, load_prompt_file

    path = Path(prompt_set)
    if path.suffix.lower() not in PROMPT_FILE_SUFFIXES and len(path.parts) < 2:
        return harmful_requests(prompt_set, n, seed)
    require_positive(n_requests=n)
    harmful = load_prompt_file(path).harmful()
    if not len(harmful):
        raise UserError(f"prompt file {prompt_set} has no harmful requests to attack.")
    return harmful.sample(min(n, len(harmful)), seed)


def _open(spec: str, concurrency: int, rpm: float | None, retries: int) -> Target:
    return open_any_target(spec, concurrency=concurrency, requests_per_minute=rpm,
                           max_retries=retries)


_DAMAGED = object()  # a run.json that is not JSON


class _Output:
    """The --out folder: a result log that resumes only a run with the same settings."""

    def __init__(self, folder: Path | None, settings: dict[str, Any],
                 record: type = AttackResult):
        self.folder = folder
        self.settings = settings
        self.log: ResultLog | None = None
        if folder is None:
            return
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--out {folder} is a file, not a folder.")
        check_output_folder(folder, "--out")
        folder.mkdir(parents=True, exist_ok=True)
        run_file = folder / "run.json"
        self.log = ResultLog(folder / "results.jsonl", record)
        try:
            previous = json.loads(run_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            previous = None
        except (UnicodeDecodeError, json.JSONDecodeError):
            previous = _DAMAGED
        if previous == settings:
            return  # resume
        if self.log.done():  # finished results of another (or an unknown) run: keep them
            if previous is _DAMAGED:
                raise UserError(f"{run_file} is damaged, so the results beside it cannot be "
                                "resumed; give another --out or delete the folder.")
            raise UserError(f"{folder} holds a run with other settings; give another --out "
                            "or the same settings to resume it.")
        # Nothing finished to resume (a run that failed, e.g. on a wrong target, or one whose
        # every query failed): the corrected command starts afresh instead of being blocked.
        self.log.path.unlink(missing_ok=True)
        write_json_atomic(run_file, settings)

    def done(self) -> frozenset[str]:
        return frozenset(self.log.done()) if self.log else frozenset()

    def append(self, result) -> None:  # noqa: ANN001 - an AttackResult or the log's record
        if self.log is not None:
            self.log.append(result)

    def all_results(self, fresh: list) -> list:
        return self.log.read() if self.log else fresh

    def finish(self, summary: dict[str, Any]) -> None:
        if self.folder is not None:
            write_json_atomic(self.folder / "summary.json", {"settings": self.settings,
                                                             **summary})


def _print(title: str, target: str, summary: dict[str, Any]) -> None:
    asr, queries = summary["asr"], summary["queries_to_success"]
    table = Table(title=title)
    for column in ("target", "ASR", "95% CI", "k/n", "median queries to success", "errors"):
        table.add_column(column)
    rate = f"{asr['rate']:.3f}" if asr["n"] else "-"
    table.add_row(target, rate, f"[{asr['low']:.3f}, {asr['high']:.3f}]",
                  f"{asr['k']}/{asr['n']}", str(queries["median"]), str(summary["errors"]))
    Console(markup=False).print(table)  # target names may hold brackets


@app.command()
def templates(
    target: TargetArgument,
    prompt_set: PromptSetOption = None,
    n_requests: RequestsOption = 32,
    template_file: Annotated[Path | None, typer.Option(
        "--template-file", help="Your own template(s): a text file with a {prompt} slot (or "
        "the request is appended), or .jsonl with a \"text\" per line.")] = None,
    template_set: Annotated[str, typer.Option(
        "--template-set", help="Registered template corpus when no --template-file.")]
    = "jailbreak-templates",
    n_templates: Annotated[int, typer.Option("--n-templates", help="Templates sampled.")] = 16,
    top_k: Annotated[int, typer.Option("--top-k", help="Best templates listed.")] = 5,
    no_append: Annotated[bool, typer.Option(
        "--no-append", help="Refuse templates without a slot instead of appending.")] = False,
    judge: JudgeOption = None,
    seed: SeedOption = 0,
    max_new_tokens: TokensOption = 80,
    batch_size: BatchOption = 32,
    out: OutOption = None,
    concurrency: ConcurrencyOption = 4,
    rpm: RateOption = None,
    retries: RetriesOption = 5,
) -> None:
    """Wrap each request in jailbreak templates; ASR per template and the top-k templates."""
    from alignparadox.attacks.input_tinkering import templates as attack
    from alignparadox.judges.registry import make_judge

    require_positive(n_templates=n_templates, top_k=top_k, max_new_tokens=max_new_tokens)
    pool = (attack.load_template_file(template_file, append=not no_append) if template_file
            else attack.corpus_templates(template_set))
    prompt_set, judge = _inputs(target, prompt_set, judge)
    judge_ = make_judge(judge)
    requests = _requests(prompt_set, n_requests, seed)
    output = _Output(out, {"attack": "templates", "target": target, "prompt_set": prompt_set,
                           "n_requests": n_requests, "templates": str(template_file or
                                                                     template_set),
                           "n_templates": n_templates, "judge": judge, "seed": seed,
                           "max_new_tokens": max_new_tokens})
    model = _open(target, concurrency, rpm, retries)
    chosen, too_long = attack.select_templates(model, pool, requests, n_templates, seed,
                                               max_new_tokens)
    fresh = attack.run(model, judge_, requests, chosen, max_new_tokens=max_new_tokens,
                       batch_size=batch_size, done=output.done(), on_result=output.append)
    results = output.all_results(fresh)
    summary = attack.summary(results, chosen, top_k)
    summary.update(templates_used=len(chosen), templates_too_long=too_long,
                   asr_no_template=attack.no_template_asr(model, judge_, requests,
                                                          max_new_tokens=max_new_tokens,
                                                          batch_size=batch_size))
    output.finish(summary)
    _print("jailbreak templates (ASR pooled over template × request)", model.name, summary)
    plain = summary["asr_no_template"]
    rate = f"{plain['rate']:.3f}" if plain["n"] else "-"
    Console(markup=False).print(f"the same requests without a template: ASR {rate} "
                                f"({plain['k']}/{plain['n']})")
    best = Table(title=f"top {top_k} templates")
    for column in ("template", "ASR", "k/n", "opening"):
        best.add_column(column)
    for row in summary["top_templates"]:
        best.add_row(row["template"], f"{row['asr']['rate']:.3f}",
                     f"{row['asr']['k']}/{row['asr']['n']}", row["preview"])
    Console(markup=False).print(best)  # template openings hold "[...]" literally
    if too_long:
        Console(stderr=True).print(f"{too_long} templates did not fit the target's context "
                                   "with a full answer and were left out.")


@app.command()
def pair(
    target: TargetArgument,
    attacker: Annotated[str, typer.Option(
        "--attacker", help="`scripted` (local policy) or any target spec as attacker LLM.")]
    = "scripted",
    streams: Annotated[int, typer.Option("--streams", help="Parallel streams (N).")] = 3,
    rounds: Annotated[int, typer.Option("--rounds", help="Rounds per stream (K).")] = 5,
    prompt_set: PromptSetOption = None,
    n_requests: RequestsOption = 32,
    judge: JudgeOption = None,
    seed: SeedOption = 0,
    max_new_tokens: TokensOption = 80,
    attacker_max_new_tokens: Annotated[int, typer.Option(
        "--attacker-max-new-tokens", help="Attacker reply budget.")] = 300,
    batch_size: BatchOption = 32,
    out: OutOption = None,
    concurrency: ConcurrencyOption = 4,
    rpm: RateOption = None,
    retries: RetriesOption = 5,
) -> None:
    """PAIR: an attacker model rewrites the request from the judge's feedback."""
    from alignparadox.attacks.input_tinkering import pair as attack
    from alignparadox.judges.registry import make_judge

    config = attack.PAIRConfig(streams=streams, rounds=rounds, max_new_tokens=max_new_tokens,
                               attacker_max_new_tokens=attacker_max_new_tokens,
                               batch_size=batch_size, seed=seed)
    prompt_set, judge = _inputs(target, prompt_set, judge)
    judge_ = make_judge(judge)
    requests = _requests(prompt_set, n_requests, seed)
    output = _Output(out, {"attack": "pair", "target": target, "attacker": attacker,
                           "streams": streams, "rounds": rounds, "prompt_set": prompt_set,
                           "n_requests": n_requests, "judge": judge, "seed": seed,
                           "max_new_tokens": max_new_tokens})
    model = _open(target, concurrency, rpm, retries)
    attacker_model = attack.open_attacker(attacker, seed, concurrency=concurrency,
                                          requests_per_minute=rpm, max_retries=retries)
    fresh = attack.run(model, attacker_model, judge_, requests, config, done=output.done(),
                       on_result=output.append)
    summary = summarize(output.all_results(fresh))
    output.finish(summary)
    _print(f"PAIR ({streams} streams × {rounds} rounds, attacker {attacker})", model.name,
           summary)


@app.command()
def bon(
    target: TargetArgument,
    n: Annotated[int, typer.Option("--n", help="Budget: augmented samples per request.")] = 256,
    temperature: Annotated[float, typer.Option(
        "--temperature", help="Target sampling temperature (0: greedy).")] = 1.0,
    sigma: Annotated[float | None, typer.Option(
        "--sigma", help="Augmentation strength as in the authors' code (default: the paper's "
        "0.6/0.6/0.06 probabilities).")] = None,
    prompt_set: PromptSetOption = None,
    n_requests: RequestsOption = 32,
    judge: JudgeOption = None,
    seed: SeedOption = 0,
    max_new_tokens: TokensOption = 80,
    batch_size: BatchOption = 64,
    out: OutOption = None,
    concurrency: ConcurrencyOption = 4,
    rpm: RateOption = None,
    retries: RetriesOption = 5,
) -> None:
    """Best-of-N: random character augmentations until the judge says success or N run out."""
    from alignparadox.attacks.input_tinkering import best_of_n as attack
    from alignparadox.judges.registry import make_judge

    if not temperature >= 0:
        raise UserError(f"temperature must be >= 0, got {temperature}.")
    augmentation = attack.Augmentation() if sigma is None else attack.Augmentation.from_sigma(sigma)
    config = attack.BestOfNConfig(n=n, temperature=temperature, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size, seed=seed, augmentation=augmentation)
    prompt_set, judge = _inputs(target, prompt_set, judge)
    judge_ = make_judge(judge)
    requests = _requests(prompt_set, n_requests, seed)
    output = _Output(out, {"attack": "bon", "target": target, "n": n, "sigma": sigma,
                           "temperature": temperature, "prompt_set": prompt_set,
                           "n_requests": n_requests, "judge": judge, "seed": seed,
                           "max_new_tokens": max_new_tokens})
    model = _open(target, concurrency, rpm, retries)
    fresh = attack.run(model, judge_, requests, config, done=output.done(),
                       on_result=output.append)
    results = output.all_results(fresh)
    summary = summarize(results)
    curve = attack.asr_curve(results, n)
    summary.update(curve=curve, power_law=attack.fit_power_law(curve))
    output.finish(summary)
    _print(f"Best-of-{n} augmentation", model.name, summary)
    Console().print("ASR at N: " + ", ".join(f"{p['n']}: {p['asr']['rate']:.3f}"
                                            for p in curve if p["asr"]["n"]))
    fit = summary["power_law"]
    Console().print("power law -log ASR = a·N^-b: " + (
        f"b = {fit['exponent']:.3f}, a = {fit['a']:.3f}, R² = {fit['r2']:.3f} "
        f"over {fit['points']} points" if fit else "no fit (fewer than two N with 0 < ASR < 1)"))


@app.command()
def gcg(
    target: TargetArgument,
    steps: Annotated[int, typer.Option("--steps", help="Step budget per request.")] = 100,
    suffix_length: Annotated[int, typer.Option("--suffix-length", help="Suffix tokens.")] = 20,
    search_width: Annotated[int, typer.Option("--search-width", help="Candidates per step.")]
    = 256,
    topk: Annotated[int, typer.Option("--topk", help="Top-k substitutions per position.")] = 64,
    n_replace: Annotated[int, typer.Option(
        "--n-replace", help="Suffix positions changed per candidate.")] = 1,
    buffer_size: Annotated[int, typer.Option(
        "--buffer-size", help="Best suffixes kept to continue from (0: always move).")] = 0,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", help="Candidates per forward pass (default: automatic).")] = None,
    early_stop: Annotated[bool, typer.Option(
        "--early-stop/--no-early-stop", help="Stop a request at its first success.")] = True,
    draft: Annotated[str | None, typer.Option(
        "--draft", help="Smaller white-box model with the same tokenizer for probe "
        "sampling.")] = None,
    screen_dtype: Annotated[str, typer.Option(
        "--screen-dtype", help="Dtype candidates are screened in before the exact re-score: "
        "auto (bf16 on fast-bf16 hardware), model (none), bfloat16, float16.")] = "auto",
    rescore_k: Annotated[int, typer.Option(
        "--rescore-k", help="Best screened candidates re-scored in the model's dtype.")] = 2,
    prompt_set: PromptSetOption = None,
    n_requests: RequestsOption = 8,
    judge: JudgeOption = None,
    seed: SeedOption = 0,
    max_new_tokens: TokensOption = 80,
    out: OutOption = None,
) -> None:
    """GCG adversarial suffix per request (white-box targets only)."""
    from alignparadox.attacks.input_tinkering.gcg_measurement import (
        default_behaviours,
        require_white_box,
        target_texts,
    )
    from alignparadox.datasets.records import PromptSet as RequestSet  # run time, not typing

    for spec in (target, draft):
        if spec is not None:
            require_white_box(spec)
    require_positive(steps=steps, suffix_length=suffix_length, n_requests=n_requests)
    from alignparadox.attacks.input_tinkering import gcg as attack
    from alignparadox.attacks.input_tinkering.base import generation_config, judge_requests
    from alignparadox.judges.registry import make_judge

    config = attack.GCGConfig(num_steps=steps, suffix_length=suffix_length,
                              search_width=search_width, topk=topk, n_replace=n_replace,
                              buffer_size=buffer_size, batch_size=batch_size,
                              early_stop=early_stop, screen_dtype=screen_dtype,
                              rescore_k=rescore_k, seed=seed, check_tokens=max_new_tokens,
                              progress=True)
    prompt_set, judge = _inputs(target, prompt_set, judge)
    judge_ = make_judge(judge)
    requests = _requests(prompt_set, n_requests, seed)
    output = _Output(out, {"attack": "gcg", "target": target, "steps": steps,
                           "suffix_length": suffix_length, "search_width": search_width,
                           "topk": topk, "n_replace": n_replace, "buffer_size": buffer_size,
                           "batch_size": batch_size, "early_stop": early_stop, "draft": draft,
                           "screen_dtype": screen_dtype, "rescore_k": rescore_k,
                           "prompt_set": prompt_set, "n_requests": n_requests,
                           "judge": judge, "seed": seed, "max_new_tokens": max_new_tokens})
    model = _open(target, 1, None, 0)
    draft_model = _open(draft, 1, None, 0) if draft is not None else None
    done = output.done()
    todo = [record for record in requests if record.id not in done]
    goals = target_texts(model, RequestSet("todo", tuple(todo)), judge_,
                         default_behaviours(target, seed), seed=seed,
                         max_new_tokens=max_new_tokens)
    fresh = []
    for record, (goal, _) in zip(todo, goals, strict=True):
        found = attack.run(model, record.text, goal, config, judge=judge_, draft=draft_model)
        prompt = f"{record.text}{config.separator}{found.best_suffix}"
        answer = model.generate([prompt], generation_config(max_new_tokens))[0]
        verdict = judge_requests(judge_, [record.text], [answer])[0]
        result = AttackResult(record.id, record.text, verdict.success,
                              found.success_step or len(found.losses), prompt, answer,
                              verdict.label)
        output.append(result)
        fresh.append(result)
    summary = summarize(output.all_results(fresh))
    output.finish(summary)
    _print(f"GCG ({steps} steps, suffix {suffix_length}; queries = steps)", model.name, summary)


@app.command()
def injection(
    target: TargetArgument,
    tasks: Annotated[str | None, typer.Option(
        "--tasks", help="Tasks over data: a .jsonl file (id, instruction, data with an optional "
        "{injection} slot, expected) or a registered set (self-instruct; organisms: "
        "organisms-tasks). Default: the target's own, else self-instruct.")] = None,
    injections: InjectionsOption = None,
    n_tasks: Annotated[int, typer.Option("--n-tasks", help="Tasks sampled.")] = 16,
    positions: PositionsOption = "start,middle,end",
    disguises: DisguisesOption = "plain,ignore,completion,fake_system",
    defenses: Annotated[str, typer.Option(
        "--defenses", help="Prompt-level defenses, comma-separated: none, delimiters, "
        "spotlighting, sandwich, roles.")] = "none,delimiters,spotlighting,sandwich,roles",
    judge: JudgeOption = None,
    seed: SeedOption = 0,
    max_new_tokens: TokensOption = 64,
    batch_size: BatchOption = 32,
    out: OutOption = None,
    concurrency: ConcurrencyOption = 4,
    rpm: RateOption = None,
    retries: RetriesOption = 5,
) -> None:
    """Hide an instruction in a task's data; ASR (instruction carried out) and utility (task
    still done), per position, disguise and defense."""
    from alignparadox.attacks.input_tinkering import injection as attack
    from alignparadox.datasets.tasks import load_injections, load_tasks
    from alignparadox.judges.registry import make_judge
    from alignparadox.study.inputs import FALLBACK_JUDGE
    from alignparadox.targets.providers import target_defaults

    require_positive(n_tasks=n_tasks, max_new_tokens=max_new_tokens, batch_size=batch_size)
    chosen = [attack.split_choices(text) for text in (positions, disguises, defenses)]
    attack.check_choices(*chosen)
    check_any_target(target)
    tasks, injections = attack.input_sets(target, tasks, injections)
    judge = judge or target_defaults(target).get("judge") or FALLBACK_JUDGE
    task_set = load_tasks(tasks).sample(n_tasks, seed)
    injection_set = load_injections(injections)
    judge_ = make_judge(judge)
    attack.check_inputs(task_set, injection_set, judge_, chosen[0])
    output = _Output(out, {"attack": "injection", "target": target, "tasks": tasks,
                           "injections": injections, "n_tasks": n_tasks,
                           "positions": chosen[0], "disguises": chosen[1],
                           "defenses": chosen[2], "judge": judge, "seed": seed,
                           "max_new_tokens": max_new_tokens}, attack.InjectionResult)
    model = _open(target, concurrency, rpm, retries)
    attack.check_roles(model, chosen[2])
    cases = attack.plan(task_set, injection_set, *chosen, seed)
    fresh = attack.run(model, judge_, cases, max_new_tokens=max_new_tokens,
                       batch_size=batch_size, done=output.done(), on_result=output.append)
    results = output.all_results(fresh)
    summary = attack.summary(results)
    output.finish(summary)
    table = Table(title=f"instruction injection on {model.name} ({len(task_set)} tasks)")
    for column in ("defense", "ASR", "95% CI", "k/n", "utility clean", "utility injected",
                   "change vs none", "errors"):
        table.add_column(column)
    for name, entry in summary["by_defense"].items():
        asr, change = entry["asr"], entry.get("asr_change")
        table.add_row(name, f"{asr['rate']:.3f}" if asr["n"] else "-",
                      f"[{asr['low']:.3f}, {asr['high']:.3f}]", f"{asr['k']}/{asr['n']}",
                      _fraction(entry["utility_clean"]), _fraction(entry["utility_attacked"]),
                      f"{change['value']:+.3f} [{change['low']:+.3f}, {change['high']:+.3f}]"
                      if change else "-", str(entry["errors"]))
    Console(markup=False).print(table)


def _fraction(rate: dict[str, Any] | None) -> str:
    return f"{rate['rate']:.3f} ({rate['k']}/{rate['n']})" if rate else "not measured"
