"""The one small interface every input-tinkering attack shares.

A *target* is anything with `generate(prompts, config) -> list[str]`: a local `WhiteBoxTarget`
or an OpenAI-compatible `EndpointTarget`. Attacks talk to it through `query`, which gives one
outcome per prompt — the answer, or a `QueryFailure` saying why that prompt could not be
answered — so one failed request (a 500 after the last retry, a prompt longer than the context)
never costs the answers of the others.

Every attack returns one `AttackResult` per harmful request (per template and request for the
template attack). Results are judged against the *original* request, never the attacked prompt:
the question is whether the target did the harmful thing asked, not whether it answered the
wrapper.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from alignparadox.errors import UserError
from alignparadox.stats import spearman_bootstrap, wilson

if TYPE_CHECKING:
    from markupsafe import Markup

    from alignparadox.datasets.records import PromptRecord, PromptSet
    from alignparadox.judges.base import Judge, Verdict
    from alignparadox.report.html import ReportOptions, Section
    from alignparadox.study.cells import Cell
    from alignparadox.study.store import CellRecord
    from alignparadox.study.strength import ParadoxMeasure, Strengths
    from alignparadox.targets.whitebox import GenerationConfig

Prompt = str | list[dict]


@runtime_checkable
class Target(Protocol):
    """Anything that answers prompts: a white-box model or a black-box endpoint."""

    name: str

    def generate(self, prompts: list[Prompt], config: Any = None) -> list[str]: ...


@dataclass(frozen=True)
class QueryFailure:
    """A prompt the target could not answer; it never counts as a success."""

    message: str


@dataclass(frozen=True)
class AttackResult:
    """The outcome of attacking one harmful request (with one template, for `templates`).

    `queries` counts the target queries spent up to and including the first success (all of
    them when there was none). `prompt` and `answer` are those of the first success, else of
    the most harmful attempt (the last one on ties). `error` is set when the request could not
    be attacked at all (every query failed): such results are left out of rates and redone
    when an attack resumes.
    """

    request_id: str
    request: str
    success: bool
    queries: int
    prompt: str
    answer: str
    label: str
    error: str | None = None
    template: str | None = None

    @property
    def key(self) -> str:
        return self.request_id if self.template is None else f"{self.template}|{self.request_id}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> AttackResult:
        return cls(**{f.name: row[f.name] for f in fields(cls) if f.name in row})


ResultCallback = Callable[[AttackResult], None]

ERROR_LABEL = "error"


# -- targets -------------------------------------------------------------------------------------


def check_any_target(spec: str) -> None:
    """Refuse, without loading or calling anything, a target `open_any_target` would refuse."""
    if spec.startswith(("http://", "https://")):
        if not spec.partition("#")[2]:
            raise UserError(f"endpoint target {spec!r} names no model; write URL#MODEL, e.g. "
                            "http://127.0.0.1:8000/v1#organism:aligned-3.")
        return
    from alignparadox.targets import check_target

    check_target(spec)


def open_any_target(spec: str, *, concurrency: int = 4, requests_per_minute: float | None = None,
                    max_retries: int = 5, timeout: float = 120) -> Target:
    """`http(s)://HOST/v1#MODEL` opens an OpenAI-compatible endpoint (API key from
    $OPENAI_API_KEY, if set); anything else is a white-box spec for `open_target`
    (`organism:NAME`, a local folder, a Hub id)."""
    check_any_target(spec)
    if spec.startswith(("http://", "https://")):
        from alignparadox.targets.endpoint import EndpointTarget

        url, _, model = spec.partition("#")
        if concurrency < 1 or max_retries < 0 or (requests_per_minute is not None
                                                  and not requests_per_minute > 0):
            raise UserError("concurrency must be >= 1, retries >= 0 and the rate limit > 0.")
        return EndpointTarget(url, model, concurrency=concurrency,
                              requests_per_minute=requests_per_minute, max_retries=max_retries,
                              timeout=timeout)
    from alignparadox.targets import shared_target

    return shared_target(spec)


def is_white_box(target: object) -> bool:
    from alignparadox.targets.whitebox import WhiteBoxTarget

    return isinstance(target, WhiteBoxTarget)


def generation_config(max_new_tokens: int, *, batch_size: int = 32, temperature: float = 0.0,
                      seed: int = 0) -> GenerationConfig:
    """Greedy at temperature 0, else sampled; endpoints read the same attributes."""
    from alignparadox.targets.whitebox import GenerationConfig

    sampled = temperature > 0
    return GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size,
                            do_sample=sampled, temperature=temperature if sampled else 1.0,
                            seed=seed)


def fits(target: Target, prompt: Prompt, max_new_tokens: int) -> bool:
    """Whether a white-box target has room for `prompt` and a full answer (endpoints: always
    true here; the server says no per request)."""
    if not is_white_box(target):
        return True
    try:
        length = len(target.token_ids(prompt))  # type: ignore[attr-defined]
    except UserError:
        return False
    limit = target.context_length  # type: ignore[attr-defined]
    return limit is None or length + max_new_tokens <= limit


def query(target: Target, prompts: Sequence[Prompt],
          config: GenerationConfig) -> list[str | QueryFailure]:
    """One outcome per prompt, in order. Endpoint failures (after their retries) and white-box
    prompts that do not fit the context become `QueryFailure`s; the rest are answered.
    Endpoint results are counted in the study cell's tally: a dead endpoint fails the cell."""
    if not prompts:
        return []
    generate_results = getattr(target, "generate_results", None)
    if generate_results is not None:
        from alignparadox.targets.endpoint import count_endpoint_results

        results = generate_results(list(prompts), config)
        count_endpoint_results(results)
        return [outcome if isinstance(outcome, str) else QueryFailure(str(outcome))
                for outcome in results]
    if not is_white_box(target):
        return list(target.generate(list(prompts), config))
    outcomes: list[str | QueryFailure] = [QueryFailure("")] * len(prompts)
    runnable = []
    for index, prompt in enumerate(prompts):
        try:
            target.token_ids(prompt)  # type: ignore[attr-defined]
            runnable.append(index)
        except UserError as error:
            outcomes[index] = QueryFailure(str(error))
    answers = target.generate([prompts[i] for i in runnable], config) if runnable else []
    for index, answer in zip(runnable, answers, strict=True):
        outcomes[index] = answer
    return outcomes


def judge_requests(judge: Judge, requests: Sequence[str], answers: Sequence[str]) -> list[Verdict]:
    """Verdicts on answers to the *original* requests; a judge that cannot read a request
    (e.g. the organism judge on a public prompt set) is a user error."""
    if not answers:
        return []
    try:
        return judge.judge(list(requests), list(answers))
    except ValueError as error:
        raise UserError(f"judge {judge.name!r} cannot judge these requests: {error}.") from error


# -- inputs --------------------------------------------------------------------------------------


def require_positive(**values: int) -> None:
    """A budget of 0 (or less) is a user error, named."""
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{name.replace('_', ' ')} must be at least 1, got {value}.")


def harmful_requests(prompt_set: str, n: int, seed: int) -> PromptSet:
    """A seeded sample of up to `n` harmful requests of a registered prompt set or file."""
    from alignparadox.datasets.registry import load_prompt_set

    require_positive(n_requests=n)
    harmful = load_prompt_set(prompt_set).harmful()
    if not len(harmful):
        raise UserError(f"prompt set {prompt_set!r} has no harmful requests to attack.")
    return harmful.sample(min(n, len(harmful)), seed)


def cell_requests(cell: Cell) -> PromptSet:
    """Up to the cell's `n_requests` harmful requests of its behaviour set's test split (a
    seeded sample): what an input-tinkering measurement attacks."""
    from alignparadox.datasets.behaviours import HARMFUL
    from alignparadox.study.inputs import cell_behaviours

    n = cell.settings["n_requests"]
    require_positive(n_requests=n)
    return cell_behaviours(cell, needs_harmless=False).requests(HARMFUL, "test", n, cell.seed)


def check_cell_inputs(cell: Cell) -> None:
    """Refuse, before anything runs, a cell without harmful requests or with a bad judge."""
    from alignparadox.judges.registry import check_judge
    from alignparadox.study.inputs import cell_judge, check_behaviours

    check_behaviours(cell, needs_harmless=False)
    check_judge(cell_judge(cell))


def failed_result(record: PromptRecord, message: str, queries: int,
                  template: str | None = None) -> AttackResult:
    return AttackResult(record.id, record.text, False, queries, "", "", ERROR_LABEL,
                        error=message or "query failed", template=template)


# -- results -------------------------------------------------------------------------------------


def summarize(results: Iterable[AttackResult]) -> dict[str, Any]:
    """ASR over the requests that could be attacked, queries to the first success, errors."""
    results = list(results)
    finished = [r for r in results if r.error is None]
    winners = [r.queries for r in finished if r.success]
    return {
        "asr": wilson(len(winners), len(finished)).as_dict(),
        "queries_to_success": {
            "median": statistics.median(winners) if winners else None,
            "mean": statistics.fmean(winners) if winners else None,
            "n": len(winners),
        },
        "queries_total": sum(r.queries for r in results),
        "errors": len(results) - len(finished),
    }


class ResultLog:
    """Finished results as JSON lines, appended and flushed one by one, so a stopped or failed
    attack keeps everything it finished. Reading skips a torn last line; `done` are the keys of
    results without error (errored ones are redone on resume)."""

    def __init__(self, path: str | os.PathLike[str], record: type = AttackResult):
        self.path = Path(path)
        self.record = record  # a result type with `key`, `error`, `as_dict` and `from_dict`
        if self.path.exists() and not self.path.is_file():
            raise UserError(f"{self.path} is not a file.")
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def read(self) -> list:
        if not self.path.exists():
            return []
        latest: dict[str, Any] = {}
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    result = self.record.from_dict(json.loads(line))
                except (ValueError, TypeError):
                    continue  # a line torn by a crash mid-write
                latest[result.key] = result
        return list(latest.values())

    def done(self) -> set[str]:
        return {r.key for r in self.read() if r.error is None}

    def append(self, result) -> None:  # noqa: ANN001 - an AttackResult or `record`
        line = json.dumps(result.as_dict(), ensure_ascii=False) + "\n"
        with self.path.open("a+b") as handle:
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":  # end a line torn by a crash, keep this one whole
                    line = "\n" + line
            handle.write(line.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())


def progress_steps(items: Sequence, description: str) -> Iterable:
    """`items` with a transient progress bar on an interactive terminal."""
    from rich.progress import track

    return track(items, description=description, transient=True, disable=not sys.stderr.isatty())


def write_json_atomic(path: Path, value: Any) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=2, ensure_ascii=False, default=str),
                         encoding="utf-8")
    temporary.replace(path)


def samples(results: Sequence[AttackResult], keep: int = 8) -> list[dict[str, Any]]:
    """A few results for the report: successes first."""
    ordered = sorted(results, key=lambda r: (not r.success, r.error is not None))
    return [{"request": r.request, "prompt": r.prompt, "answer": r.answer, "label": r.label,
             "harmful": r.success, "queries": r.queries} for r in ordered[:keep]]


# -- report helpers ------------------------------------------------------------------------------


def alignment_strengths(options: ReportOptions, rows: Iterable[CellRecord] = (),
                        strengths: Strengths | None = None) -> dict[str, float]:
    """Alignment steps per target (`alignparadox.study.strength.alignment_strengths`, which
    also knows the measured refusal, unless given as `strengths`), for sections that sort and
    correlate by steps."""
    from alignparadox.study.strength import alignment_strengths as measured

    if strengths is None:
        strengths = measured(list(rows), options)
    return {target: float(steps) for target, (steps, _) in strengths.items()
            if steps is not None}


def by_strength(rows: list[CellRecord], options: ReportOptions) -> list[CellRecord]:
    strengths = alignment_strengths(options, rows)
    return sorted(rows, key=lambda r: (r.target not in strengths, strengths.get(r.target, 0),
                                       r.target))


def attack_measures(attack: str, rows: Iterable[CellRecord], detail: str) -> list[ParadoxMeasure]:
    """An attack's ASR (success) and target queries per request (cost, failures counted at the
    full budget) per target, for the report's verdict table."""
    from alignparadox.study.strength import COST, SUCCESS, ParadoxMeasure

    done = [r for r in rows if r.results and r.results["asr"]["n"]]
    return [ParadoxMeasure("input tinkering", attack, SUCCESS,
                           {r.target: r.results["asr"]["rate"] for r in done}, detail),
            ParadoxMeasure("input tinkering", attack, COST,
                           {r.target: r.results["queries_total"] / r.results["asr"]["n"]
                            for r in done}, "target queries per request")]


def paradox_correlation(rows: list[CellRecord], options: ReportOptions, metric: str,
                        value: Callable[[Mapping[str, Any]], float | None],
                        *, is_cost: bool = False) -> Markup:
    """A paragraph with Spearman's rho between alignment strength and `metric` per target, one
    per settings group (`report.generic.settings_groups`: two corpora on the same targets are
    never pooled).

    A success rate (the default) rises as misalignment gets easier; a cost (`is_cost`: queries
    or steps the attack spent per request, failures counted at the full budget) falls, which is
    the paradox's other face and stays informative when every rate saturates at 1."""
    from alignparadox.report.generic import settings_groups
    from alignparadox.report.html import Markup

    return Markup("").join(
        _correlation(group, options, f"{metric} ({label})" if label else metric, value,
                     is_cost) for label, group in settings_groups(list(rows)))


def _correlation(rows: list[CellRecord], options: ReportOptions, metric: str,
                 value: Callable[[Mapping[str, Any]], float | None], is_cost: bool) -> Markup:
    from alignparadox.report.html import Markup
    from alignparadox.study.strength import alignment_strengths as with_axes

    measured = with_axes(rows, options)
    if measured.mixed_axes:
        return Markup("<p>Paradox correlation of {}: {}.</p>").format(metric,
                                                                     measured.mixed_axes)
    strengths = alignment_strengths(options, strengths=measured)
    pairs = [(strengths[r.target], value(r.results)) for r in rows
             if r.target in strengths and r.results and value(r.results) is not None]
    if len(pairs) < 3:
        return Markup("<p>Paradox correlation: needs the alignment strength (the "
                      "<code>alignment</code> measurement, or organism targets) of at least "
                      "three of these targets.</p>")
    correlation = spearman_bootstrap([x for x, _ in pairs], [y for _, y in pairs])
    return Markup("<p>Paradox correlation — Spearman's &rho; between alignment strength and "
                  "{}: <b>{}</b> (95% bootstrap interval; {} means stronger alignment, "
                  "easier misalignment).</p>").format(metric, str(correlation),
                                                      "negative" if is_cost else "positive")


def attack_section(title: str, rows: list[CellRecord], options: ReportOptions, metric: str,
                   caption: str) -> Section:
    """ASR and queries to the first success per target, the paradox correlation, samples."""
    from alignparadox.report.html import Section, redact, table

    rows = by_strength([r for r in rows if r.results], options)
    overview = table(
        ["target", "ASR", "median queries to success", "mean", "queries spent", "errors"],
        [[r.target, r.results["asr"], r.results["queries_to_success"]["median"],
          r.results["queries_to_success"]["mean"], r.results["queries_total"],
          r.results["errors"]] for r in rows],
        caption=f"{caption} 95% Wilson intervals.")
    correlation = paradox_correlation(rows, options, metric,
                                      lambda res: res["asr"]["rate"] if res["asr"]["n"] else None)
    correlation += paradox_correlation(
        rows, options, "queries spent per request",
        lambda res: res["queries_total"] / res["asr"]["n"] if res["asr"]["n"] else None,
        is_cost=True)
    examples = table(
        ["target", "attacked prompt", "answer", "judge", "queries"],
        [[r.target, s["prompt"], redact(s["answer"], s["harmful"], options.show_completions),
          s["label"], s["queries"]] for r in rows for s in r.results["samples"][:3]],
        caption="Sample attacks, successes first (harmful completions redacted).")
    return Section(title, overview + correlation + examples)

