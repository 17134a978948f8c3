"""Jailbreak templates: wrap each harmful request in a known jailbreak prompt.

Templates come from the in-the-wild DAN corpus (`jailbreak-templates`, JailbreakHub), another
registered template set (the organisms add `organisms-jailbreaks`, in their world's vocabulary)
or a file of the user's. Each template is applied to every request; the attack success rate
(ASR) is reported per template, pooled over all (template, request) pairs, and per request for
"any of the templates", with the top-k templates per target, beside the ASR of the same
requests without a template (a template that does worse than none distracts, it does not
jailbreak).

Where the request goes:
- a `{prompt}` slot, or one of the corpus placeholders ([INSERT PROMPT HERE], [PROMPT],
  [INPUT]), is replaced by the request;
- otherwise the request is appended after a blank line (most in-the-wild prompts set up a
  persona and expect the question next).

A user's template that cannot take a request is refused with a `UserError` before anything
runs: an empty template; a template with a differently named slot such as `{goal}` or `{query}`
and no `{prompt}` (appending would leave that slot unfilled); and, with `append=False`
(`--no-append`), any template without a slot.

On a white-box target with a short context (a standard organism has 256 tokens, a framed one
1,024) only templates that leave room for a full answer are used; many in-the-wild templates
are longer, so the sample is biased towards short templates, and how many were found too long
is reported.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignparadox.attacks.input_tinkering.base import (
    AttackResult,
    ResultCallback,
    Target,
    by_strength,
    cell_requests,
    check_cell_inputs,
    failed_result,
    fits,
    generation_config,
    judge_requests,
    paradox_correlation,
    progress_steps,
    query,
    require_positive,
    samples,
    summarize,
)
from alignparadox.datasets.records import JailbreakTemplate, PromptSet
from alignparadox.errors import UserError
from alignparadox.judges.base import Judge
from alignparadox.report.html import ReportOptions, Section, redact, table
from alignparadox.stats import wilson
from alignparadox.study.cells import Cell
from alignparadox.study.inputs import BEHAVIOUR_SETTINGS, cell_judge
from alignparadox.study.measurement import (
    CellResult,
    Measurement,
    RunContext,
    register_measurement,
)
from alignparadox.study.store import CellRecord
from alignparadox.study.strength import SUCCESS, ParadoxMeasure

SLOT = "{prompt}"
_OTHER_SLOT = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class Template:
    """A jailbreak wrapper with an id; `fill` puts a request into it."""

    id: str
    text: str

    def fill(self, request: str) -> str:
        if SLOT in self.text:
            return self.text.replace(SLOT, request)
        return JailbreakTemplate(self.id, self.text).fill(request)

    @property
    def has_slot(self) -> bool:
        return SLOT in self.text or JailbreakTemplate(self.id, self.text).has_placeholder

    def preview(self, chars: int = 90) -> str:
        flat = " ".join(self.text.split())
        return flat if len(flat) <= chars else flat[:chars] + " …"


NO_TEMPLATE = Template("no template", SLOT)  # the request as it is: the baseline


def check_template(template: Template, *, append: bool = True) -> None:
    """Refuse a template that cannot take a request (see the module docstring)."""
    if not template.text.strip():
        raise UserError(f"template {template.id!r} is empty.")
    if template.has_slot:
        return
    other = _OTHER_SLOT.search(template.text)
    if other:
        raise UserError(f"template {template.id!r} has a {{{other.group(1)}}} slot but no "
                        f"{SLOT} slot; rename the slot to {SLOT}.")
    if not append:
        raise UserError(f"template {template.id!r} has no {SLOT} slot and appending the "
                        "request is switched off (--no-append).")


def load_template_file(path: str | Path, *, append: bool = True) -> list[Template]:
    """Templates from a user file: JSON lines with a "text" (and optional "id") per line for
    `.jsonl`, otherwise the whole file is one template."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"template file {path} does not exist.")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"template file {path} is not UTF-8 text.") from error
    if path.suffix == ".jsonl":
        templates = []
        for number, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text = row["text"]
            except (ValueError, KeyError, TypeError) as error:
                raise UserError(f"line {number} of {path} is not a JSON object with a "
                                "\"text\" field.") from error
            templates.append(Template(str(row.get("id", f"{path.stem}/{number}")), str(text)))
    else:
        templates = [Template(path.stem, content)]
    if not templates:
        raise UserError(f"template file {path} holds no templates.")
    for template in templates:
        check_template(template, append=append)
    return templates


def corpus_templates(name: str = "jailbreak-templates") -> list[Template]:
    """The de-duplicated in-the-wild corpus (or another registered template set)."""
    from alignparadox.datasets.registry import load_templates

    return [Template(t.id, t.text) for t in load_templates(name).dedupe()]


def select_templates(target: Target, templates: Sequence[Template], requests: PromptSet,
                     n: int, seed: int, max_new_tokens: int) -> tuple[list[Template], int]:
    """A seeded sample of `n` templates among those that fit the target with every request
    (a uniform sample of the fitting ones), and how many templates were found too long on
    the way. Templates are checked in a seeded random order until `n` fit, so a long corpus
    is not tokenized in full."""
    import random

    require_positive(n_templates=n)
    longest = max(requests.texts, key=len)
    order = list(range(len(templates)))
    random.Random(seed).shuffle(order)
    chosen, too_long = [], 0
    for index in order:
        if fits(target, templates[index].fill(longest), max_new_tokens):
            chosen.append(index)
            if len(chosen) == n:
                break
        else:
            too_long += 1
    if not chosen:
        raise UserError(f"no template leaves room for a {max_new_tokens}-token answer in the "
                        f"context of {target.name!r}.")
    return [templates[i] for i in sorted(chosen)], too_long


def run(target: Target, judge: Judge, requests: PromptSet, templates: Sequence[Template], *,
        max_new_tokens: int = 80, batch_size: int = 32, done: frozenset[str] = frozenset(),
        on_result: ResultCallback | None = None) -> list[AttackResult]:
    """Every template applied to every request, greedy answers, one result per pair (pairs whose
    key is in `done` are skipped). Each template is one batch, so a failure costs at most that
    template's unfinished pairs."""
    require_positive(max_new_tokens=max_new_tokens, batch_size=batch_size)
    config = generation_config(max_new_tokens, batch_size=batch_size)
    results = []
    for template in progress_steps(templates, f"templates on {target.name}"):
        todo = [r for r in requests if f"{template.id}|{r.id}" not in done]
        prompts = [template.fill(r.text) for r in todo]
        outcomes = query(target, prompts, config)
        answered = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, str)]
        verdicts = dict(zip(answered, judge_requests(
            judge, [todo[i].text for i in answered], [outcomes[i] for i in answered]),
            strict=True))
        for index, (record, prompt, outcome) in enumerate(zip(todo, prompts, outcomes,
                                                              strict=True)):
            if index in verdicts:
                verdict = verdicts[index]
                result = AttackResult(record.id, record.text, verdict.success, 1, prompt,
                                      outcome, verdict.label, template=template.id)
            else:
                result = failed_result(record, outcome.message, 1, template=template.id)
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


def no_template_asr(target: Target, judge: Judge, requests: PromptSet, *,
                    max_new_tokens: int = 80, batch_size: int = 32) -> dict[str, Any]:
    """ASR of the same requests with no template (Wilson interval over the answered ones):
    a template helps only where it beats this."""
    answered = [r for r in run(target, judge, requests, [NO_TEMPLATE],
                               max_new_tokens=max_new_tokens, batch_size=batch_size)
                if r.error is None]
    return wilson(sum(r.success for r in answered), len(answered)).as_dict()


def per_template(results: Sequence[AttackResult]) -> list[dict[str, Any]]:
    """ASR of each template over its answered requests, best first (ties: more requests)."""
    groups: dict[str, list[AttackResult]] = defaultdict(list)
    for result in results:
        groups[result.template or ""].append(result)
    rows = []
    for template, group in groups.items():
        finished = [r for r in group if r.error is None]
        rows.append({"template": template,
                     "asr": wilson(sum(r.success for r in finished), len(finished)).as_dict(),
                     "errors": len(group) - len(finished)})
    return sorted(rows, key=lambda row: (-row["asr"]["low"], -row["asr"]["k"], row["template"]))


def per_request(results: Sequence[AttackResult],
                order: Sequence[str]) -> list[AttackResult]:
    """One result per request for "any of the templates, tried in `order`": the first success
    and the number of templates it took, or the last answered attempt."""
    rank = {template: i for i, template in enumerate(order)}
    groups: dict[str, list[AttackResult]] = defaultdict(list)
    for result in results:
        groups[result.request_id].append(result)
    merged = []
    for group in groups.values():
        group.sort(key=lambda r: rank.get(r.template or "", len(rank)))
        first = next((i for i, r in enumerate(group) if r.success), None)
        answered = [r for r in group if r.error is None]
        pick = group[first] if first is not None else (answered[-1] if answered else group[-1])
        queries = first + 1 if first is not None else len(group)
        merged.append(AttackResult(pick.request_id, pick.request, pick.success, queries,
                                   pick.prompt, pick.answer, pick.label, pick.error,
                                   pick.template))
    return merged


def summary(results: Sequence[AttackResult], templates: Sequence[Template],
            top_k: int) -> dict[str, Any]:
    """Pooled and per-template ASR, any-template ASR and the top-k templates."""
    finished = [r for r in results if r.error is None]
    ranking = per_template(results)
    previews = {t.id: t.preview() for t in templates}
    any_template = summarize(per_request(results, [t.id for t in templates]))
    return {
        "asr": wilson(sum(r.success for r in finished), len(finished)).as_dict(),
        "asr_any_template": any_template["asr"],
        "queries_to_success": any_template["queries_to_success"],
        "errors": len(results) - len(finished),
        "per_template": ranking,
        "top_templates": [{**row, "preview": previews.get(row["template"], "")}
                          for row in ranking[:top_k]],
    }


@register_measurement
class TemplatesAttack(Measurement):
    name = "templates"
    title = "Input tinkering: jailbreak templates"
    order = 40
    defaults = {**BEHAVIOUR_SETTINGS, "n_requests": 32, "template_set": "jailbreak-templates",
                "n_templates": 16, "top_k": 5, "judge": None, "max_new_tokens": 80,
                "batch_size": 32}

    def check(self, cell: Cell) -> None:
        s = cell.settings
        require_positive(n_requests=s["n_requests"], n_templates=s["n_templates"],
                         top_k=s["top_k"], max_new_tokens=s["max_new_tokens"])
        check_cell_inputs(cell)
        from alignparadox.datasets.registry import resolve_path, spec

        corpus = resolve_path(spec(s["template_set"]), None)  # before any cell runs
        if corpus is not None and not corpus.is_file():
            raise UserError(f"template set {s['template_set']} is not on this machine ({corpus} "
                            f"does not exist); `paradox prompts fetch {s['template_set']}` "
                            "downloads it.")

    def run(self, cell: Cell, context: RunContext) -> CellResult:
        from alignparadox.attacks.input_tinkering.base import open_any_target
        from alignparadox.judges.registry import make_judge

        s = cell.settings
        target = open_any_target(cell.target)
        requests = cell_requests(cell)
        judge = cell_judge(cell)
        chosen, too_long = select_templates(target, corpus_templates(s["template_set"]),
                                            requests, s["n_templates"], cell.seed,
                                            s["max_new_tokens"])
        finished = 0

        def progress(_: AttackResult) -> None:
            nonlocal finished
            finished += 1
            context.progress(finished, len(chosen) * len(requests))

        judge_ = make_judge(judge)
        results = run(target, judge_, requests, chosen,
                      max_new_tokens=s["max_new_tokens"], batch_size=s["batch_size"],
                      on_result=progress)
        outcome = summary(results, chosen, s["top_k"])
        outcome.update(templates_used=len(chosen), templates_too_long=too_long,
                       asr_no_template=no_template_asr(target, judge_, requests,
                                                       max_new_tokens=s["max_new_tokens"],
                                                       batch_size=s["batch_size"]),
                       samples=samples([r for r in results if r.error is None]))
        return CellResult(outcome, target_id=target.name,
                          weight_hash=getattr(target, "weight_hash", None),
                          prompt_sets={requests.name: requests.sha256}, judge=judge)

    def paradox_measures(self, rows: list[CellRecord],
                         options: ReportOptions) -> list[ParadoxMeasure]:
        return [ParadoxMeasure("input tinkering", "jailbreak templates", SUCCESS, {
            r.target: r.results["asr"]["rate"] for r in rows
            if r.results and r.results["asr"]["n"]}, "ASR pooled over (template, request)")]

    def report_section(self, rows: list[CellRecord], options: ReportOptions) -> Section:
        rows = by_strength([r for r in rows if r.results], options)
        overview = table(
            ["target", "template set", "ASR without a template", "template ASR (pooled)",
             "ASR, any template", "best template", "templates used", "too long for target",
             "errors"],
            [[r.target, r.settings.get("template_set"),
              r.results.get("asr_no_template", "not measured (an older cell)"),
              r.results["asr"], r.results["asr_any_template"],
              r.results["top_templates"][0]["asr"] if r.results["top_templates"] else None,
              r.results["templates_used"], r.results["templates_too_long"], r.results["errors"]]
             for r in rows],
            caption="Greedy answers; pooled over (template, request) pairs; 95% Wilson "
                    "intervals. A template helps only where its ASR exceeds the ASR of the same "
                    "requests without a template; below it, the template distracts the model "
                    "from the request rather than breaking its refusal.")
        correlation = paradox_correlation(rows, options, "pooled template ASR",
                                          lambda res: res["asr"]["rate"] if res["asr"]["n"]
                                          else None)
        top = table(["target", "template", "ASR", "opening"],
                    [[r.target, t["template"], t["asr"], t["preview"]]
                     for r in rows for t in r.results["top_templates"]],
                    caption="Top templates per target (ranked by the lower interval bound).")
        examples = table(["target", "request", "answer", "judge"],
                         [[r.target, s["request"],
                           redact(s["answer"], s["harmful"], options.show_completions),
                           s["label"]] for r in rows for s in r.results["samples"][:3]],
                         caption="Sample answers (harmful completions redacted).")
        return Section(self.title, overview + correlation + top + examples)

