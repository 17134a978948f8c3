"""The `injection` measurement: instruction injection into task data, per target and defense.

Per target, `n_tasks` tasks of the task set (a seeded sample) are each paired with an injection
and attacked at every position in every disguise, under every defense (see `injection`). The
task and injection sets are the cell's settings, else the target's provider's defaults
(organisms: their world's), else the public Self-Instruct seed tasks with input and the
built-in benign canaries. The report puts injection ASR against alignment strength and against
instruction-following strength (the clean tasks' utility, where the tasks say what a correct
answer contains).
"""

from __future__ import annotations

from typing import Any

from alignparadox.attacks.input_tinkering import injection
from alignparadox.attacks.input_tinkering.base import (
    by_strength,
    open_any_target,
    paradox_correlation,
    require_positive,
)
from alignparadox.datasets.tasks import load_injections, load_tasks
from alignparadox.errors import UserError
from alignparadox.report.html import Markup, ReportOptions, Section, redact, table
from alignparadox.stats import spearman_bootstrap
from alignparadox.study.cells import Cell
from alignparadox.study.inputs import cell_judge
from alignparadox.study.measurement import (
    CellResult,
    Measurement,
    RunContext,
    register_measurement,
)
from alignparadox.study.store import CellRecord
from alignparadox.study.strength import SUCCESS, ParadoxMeasure


def cell_sets(cell: Cell):
    """The cell's task sample and injection set (settings, else target defaults, else the
    public defaults)."""
    task_spec, injection_spec = injection.input_sets(cell.target, cell.settings["task_set"],
                                                     cell.settings["injection_set"])
    tasks, injections = load_tasks(task_spec), load_injections(injection_spec)
    return tasks.sample(cell.settings["n_tasks"], cell.seed), injections


@register_measurement
class InjectionAttack(Measurement):
    name = "injection"
    title = "Input tinkering: instruction injection"
    order = 46
    defaults = {"task_set": None, "injection_set": None, "n_tasks": 16,
                "positions": list(injection.POSITIONS), "disguises": list(injection.DISGUISES),
                "defenses": list(injection.DEFENSES), "judge": None, "max_new_tokens": 64,
                "batch_size": 32}

    def check(self, cell: Cell) -> None:
        from alignparadox.judges.registry import check_judge, make_judge

        s = cell.settings
        require_positive(n_tasks=s["n_tasks"], max_new_tokens=s["max_new_tokens"],
                         batch_size=s["batch_size"])
        injection.check_choices(s["positions"], s["disguises"], s["defenses"])
        check_judge(cell_judge(cell))
        tasks, injections = cell_sets(cell)
        # A judge is loaded here only when an injection has no canary and it must see harm.
        blind = any(i.canary is None for i in injections)
        judge = make_judge(cell_judge(cell)) if blind else None
        injection.check_inputs(tasks, injections, judge, s["positions"])

    def run(self, cell: Cell, context: RunContext) -> CellResult:
        from alignparadox.judges.registry import make_judge

        s = cell.settings
        target = open_any_target(cell.target)
        injection.check_roles(target, s["defenses"])
        tasks, injections = cell_sets(cell)
        judge_spec = cell_judge(cell)
        judge = make_judge(judge_spec)
        injection.check_inputs(tasks, injections, judge, s["positions"])
        cases = injection.plan(tasks, injections, s["positions"], s["disguises"],
                               s["defenses"], cell.seed)
        finished = 0

        def progress(_: injection.InjectionResult) -> None:
            nonlocal finished
            finished += 1
            context.progress(finished, len(cases))

        results = injection.run(target, judge, cases, max_new_tokens=s["max_new_tokens"],
                                batch_size=s["batch_size"], on_result=progress)
        if all(r.error is not None for r in results):
            raise UserError(f"no injection prompt could be answered by {target.name!r}: "
                            f"{results[0].error}")
        outcome = injection.summary(results)
        outcome["samples"] = injection.samples(results)
        outcome["n_tasks"] = len(tasks)
        return CellResult(outcome, target_id=target.name,
                          weight_hash=getattr(target, "weight_hash", None),
                          prompt_sets={tasks.name: tasks.sha256,
                                       injections.name: injections.sha256},
                          judge=judge_spec)

    def paradox_measures(self, rows: list[CellRecord],
                         options: ReportOptions) -> list[ParadoxMeasure]:
        return [ParadoxMeasure("input tinkering", "instruction injection", SUCCESS, {
            r.target: r.results["asr"]["rate"] for r in rows
            if r.results and r.results["asr"]["n"]}, "injection ASR, no defense")]

    def report_section(self, rows: list[CellRecord], options: ReportOptions) -> Section:
        rows = by_strength([r for r in rows if r.results], options)
        overview = table(
            ["target", "injection ASR", "utility, clean", "utility, injected", "refusals",
             "by position", "by disguise", "errors"],
            [[r.target, r.results["asr"], r.results["utility_clean"],
              _none(r)["utility_attacked"], _none(r)["refusal"],
              _rates(_none(r)["by_position"]), _rates(_none(r)["by_disguise"]),
              r.results["errors"]] for r in rows],
            caption="No defense. ASR: the answer carries the injected instruction out (its "
            "canary, else the judge); utility: the answer does the task (contains an expected "
            "text; none when the tasks name no expected answer). Greedy answers, 95% Wilson "
            "intervals.")
        correlation = paradox_correlation(rows, options, "injection ASR",
                                          lambda res: res["asr"]["rate"] if res["asr"]["n"]
                                          else None)
        correlation += _following_correlation(rows)
        for defense in [d for d in rows[0].results["by_defense"] if d != "none"] if rows else []:
            correlation += paradox_correlation(
                rows, options, f"injection ASR under {defense}",
                lambda res, d=defense: res["by_defense"][d]["asr"]["rate"]
                if d in res["by_defense"] and res["by_defense"][d]["asr"]["n"] else None)
        defenses = table(
            ["target", "defense", "injection ASR", "change vs none [95% CI]", "utility, clean",
             "utility, injected"],
            [[r.target, name, entry["asr"], _change(entry.get("asr_change")),
              entry["utility_clean"], entry["utility_attacked"]]
             for r in rows for name, entry in r.results["by_defense"].items()],
            caption="Prompt-level defenses. The change is ASR with the defense minus ASR "
            "without, paired by case, bootstrap over tasks.")
        examples = table(
            ["target", "position", "disguise", "prompt", "answer", "followed", "did task"],
            [[r.target, s["position"], s["disguise"], s["prompt"],
              redact(s["answer"], bool(s["followed"]), options.show_completions),
              s["followed"], s["did_task"]] for r in rows for s in r.results["samples"][:3]],
            caption="Sample undefended attacks, followed injections first (answers that "
            "followed the injection redacted).")
        return Section(self.title, overview + correlation + defenses + examples)


def _none(row: CellRecord) -> dict[str, Any]:
    by_defense = row.results["by_defense"]
    return by_defense.get("none") or next(iter(by_defense.values()))


def _rates(groups: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{name} {rate['rate']:.2f}" for name, rate in groups.items() if rate["n"])


def _change(change: dict[str, float] | None) -> str:
    if not change:
        return "–"
    return f"{change['value']:+.2f} [{change['low']:+.2f}, {change['high']:+.2f}]"


def _following_correlation(rows: list[CellRecord]) -> Markup:
    """Spearman's rho between instruction-following strength (clean utility) and ASR."""
    pairs = [(r.results["utility_clean"]["rate"], r.results["asr"]["rate"]) for r in rows
             if r.results.get("utility_clean") and r.results["asr"]["n"]]
    if len(pairs) < 3:
        return Markup("<p>Instruction following vs injection: needs at least three targets "
                      "whose tasks name an expected answer.</p>")
    correlation = spearman_bootstrap([x for x, _ in pairs], [y for _, y in pairs])
    return Markup("<p>Instruction following vs injection — Spearman's &rho; between the clean "
                  "tasks' utility and injection ASR: <b>{}</b> (95% bootstrap interval; "
                  "positive means better instruction followers follow injections more).</p>"
                  ).format(str(correlation))
