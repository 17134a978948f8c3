"""The first measurement of every study: how aligned is each target, before any attack?

Refusal rate on held-out harmful requests, answer rate on held-out harmless requests, the
partisan rate on stance requests and the share of coherent answers, each with counts and a
Wilson 95% interval. For organisms the alignment strength (refusal fine-tuning steps) is
recorded too, so the paradox sections can put every attack against it.

The requests are a registered prompt set or file (`prompt_set`), else the test split of the
cell's behaviour set (its harmful, harmless and value-axis requests; see `study.inputs`).
"""

from __future__ import annotations

from alignparadox.datasets import registry as prompt_sets
from alignparadox.datasets.records import PromptSet
from alignparadox.datasets.registry import load_prompt_set
from alignparadox.errors import UserError
from alignparadox.judges import scoring
from alignparadox.judges.registry import check_judge, make_judge
from alignparadox.report.html import Markup, ReportOptions, Section, figure, redact, table
from alignparadox.study.cells import Cell
from alignparadox.study.inputs import (
    BEHAVIOUR_SETTINGS,
    cell_behaviours,
    cell_judge,
    check_behaviours,
)
from alignparadox.study.measurement import (
    CellResult,
    Measurement,
    RunContext,
    register_measurement,
)
from alignparadox.study.store import CellRecord
from alignparadox.targets.providers import alignment_strength

SAMPLES_KEPT = 12


def strength_of(row: CellRecord) -> float | None:
    return row.results.get("alignment_steps") if row.results else None


def check_prompt_set(name: str) -> None:
    """Refuse an unknown prompt set, or one whose file is missing, without reading it."""
    dataset = prompt_sets.spec(name)
    if dataset.default_file is not None:
        path = prompt_sets.resolve_path(dataset, None)
        if path is None or not path.is_file():
            raise UserError(f"prompt set {name} has no file at {path}.")


def evaluation_prompts(prompt_set: str, n_per_kind: int, seed: int) -> PromptSet:
    """A seeded sample of up to n harmful and n harmless (incl. stance) requests."""
    full = load_prompt_set(prompt_set)
    harmful, harmless = full.harmful(), full.harmless()
    records = (harmful.sample(min(n_per_kind, len(harmful)), seed).records
               + harmless.sample(min(n_per_kind, len(harmless)), seed).records)
    return PromptSet(f"{full.name}[{n_per_kind}/kind,seed={seed}]", records)


def behaviour_prompts(cell: Cell, n_per_kind: int) -> PromptSet:
    """Up to n harmful test-split requests of the cell's behaviour set, and up to n of its
    harmless and value-axis ones together (as `evaluation_prompts` samples a prompt set)."""
    behaviours = cell_behaviours(cell, needs_harmless=False)
    stance = behaviours.contrast("test")
    harmless = [*(behaviours.requests("harmless", "test") if behaviours.has_harmless else ()),
                *(stance.records() if stance is not None else ())]
    harmful = behaviours.requests("harmful", "test", n_per_kind, cell.seed)
    others = PromptSet("harmless", tuple(harmless)).sample(min(n_per_kind, len(harmless)),
                                                          cell.seed)
    return PromptSet(f"{behaviours.name}[test,{n_per_kind}/kind,seed={cell.seed}]",
                     harmful.records + others.records)


@register_measurement
class Alignment(Measurement):
    name = "alignment"
    title = "Alignment of each target"
    order = 10
    defaults = {"prompt_set": None, **BEHAVIOUR_SETTINGS, "n_per_kind": 200, "judge": None,
                "max_new_tokens": 80, "batch_size": 32}

    def check(self, cell: Cell) -> None:
        settings = cell.settings
        for name in ("n_per_kind", "max_new_tokens", "batch_size"):
            value = settings[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"alignment {name} must be a whole number of at least 1, "
                                f"got {value!r}.")
        from alignparadox.targets import check_target

        check_target(cell.target)
        check_judge(cell_judge(cell))
        if settings["prompt_set"] is not None:
            check_prompt_set(settings["prompt_set"])
        else:
            check_behaviours(cell, needs_harmless=False)

    def run(self, cell: Cell, context: RunContext) -> CellResult:
        from alignparadox.targets import GenerationConfig, shared_target

        settings = cell.settings
        target = shared_target(cell.target)
        prompts = (evaluation_prompts(settings["prompt_set"], settings["n_per_kind"], cell.seed)
                   if settings["prompt_set"] is not None
                   else behaviour_prompts(cell, settings["n_per_kind"]))
        judge = cell_judge(cell)
        answers = target.generate(
            prompts.texts,
            GenerationConfig(max_new_tokens=settings["max_new_tokens"],
                             batch_size=settings["batch_size"]),
            progress=True)
        judged = scoring.judge_answers(make_judge(judge), prompts.records, answers)
        results = {
            "alignment_steps": alignment_strength(cell.target),
            "refusal": scoring.refusal_rate(judged).as_dict(),
            "harmless_answered": scoring.answer_rate(judged).as_dict(),
            "partisan": scoring.partisan_rate(judged).as_dict(),
            "coherent": scoring.coherence_rate(judged).as_dict(),
            "samples": [j.sample() for j in judged[:: max(1, len(judged) // SAMPLES_KEPT)]],
        }
        return CellResult(results, target_id=target.name, weight_hash=target.weight_hash,
                          prompt_sets={prompts.name: prompts.sha256}, judge=judge)

    def report_section(self, rows: list[CellRecord], options: ReportOptions) -> Section:
        rows = sorted(rows, key=lambda r: (strength_of(r) is None, strength_of(r) or 0, r.target))
        summary = table(
            ["target", "alignment steps", "refusal (harmful)", "answered (harmless)",
             "partisan (stance)", "coherent"],
            [[r.target, strength_of(r), r.results["refusal"], r.results["harmless_answered"],
              r.results["partisan"], r.results["coherent"]] for r in rows],
            caption="Greedy answers on held-out requests; 95% Wilson intervals and counts.")
        samples = table(
            ["target", "request", "answer", "judge"],
            [[r.target, s["request"], redact(s["answer"], s["harmful"], options.show_completions),
              s["label"]] for r in rows for s in r.results["samples"][:4]],
            caption="Sample answers (harmful completions redacted unless --show-completions).")
        return Section(self.title, summary + _refusal_plot(rows) + samples)


def _refusal_plot(rows: list[CellRecord]) -> Markup:
    points = [(strength_of(r), r.results) for r in rows if strength_of(r) is not None]
    if len(points) < 2:
        return Markup("")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6))
    axes = fig.add_subplot()
    for key, label in [("refusal", "refusal of harmful requests"),
                       ("harmless_answered", "harmless requests answered"),
                       ("partisan", "partisan stance answers")]:
        xs = [x for x, _ in points]
        values = [res[key]["rate"] for _, res in points]
        # max(0, .): a Wilson bound equals the rate at 0 or 1 up to rounding.
        lows = [max(0.0, res[key]["rate"] - res[key]["low"]) for _, res in points]
        highs = [max(0.0, res[key]["high"] - res[key]["rate"]) for _, res in points]
        errors = [lows, highs]
        axes.errorbar(xs, values, yerr=errors, marker="o", capsize=3, label=label)
    axes.set_xlabel("alignment strength (refusal fine-tuning steps)")
    axes.set_ylabel("rate")
    axes.set_ylim(-0.05, 1.05)
    axes.legend(fontsize=8)
    return figure(fig, "refusal versus alignment strength",
                  caption="Rates against alignment strength, with 95% Wilson intervals.")
