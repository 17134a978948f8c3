"""How far can a judge be trusted? Agreement of judges with a reference judge's exact labels.

The target's own greedy answers to test-split requests of its behaviour set (harmful, harmless
and value-axis ones) are labelled by the reference judge (misaligned — harmful compliance or a
partisan stance — or not) and scored by each judge under test; the report lists accuracy,
precision, recall, F1, Cohen's kappa and the answers on which a judge disagrees. The reference
is the target's own exact judge (organisms: the world's ground truth); a target without one, or
a study that gives none (`reference`), is refused.
"""

from __future__ import annotations

from alignparadox.judges.registry import check_judge, make_judge
from alignparadox.judges.validation import LabelledAnswer, validate_judge
from alignparadox.report.html import ReportOptions, Section, redact, table
from alignparadox.study.cells import Cell
from alignparadox.study.inputs import (
    BEHAVIOUR_SETTINGS,
    cell_default,
    check_behaviours,
)
from alignparadox.study.measurement import (
    CellResult,
    Measurement,
    RunContext,
    register_measurement,
)
from alignparadox.study.measurements.alignment import behaviour_prompts
from alignparadox.study.store import CellRecord

DISAGREEMENTS_KEPT = 8


@register_measurement
class JudgeAgreement(Measurement):
    name = "judge_agreement"
    title = "Judges against the organism world's exact labels"
    order = 15
    defaults = {"judges": ["substring", "organism"], "n_per_kind": 100, "max_new_tokens": 80,
                "batch_size": 32, "reference": None, **BEHAVIOUR_SETTINGS}

    def check(self, cell: Cell) -> None:
        from alignparadox.errors import UserError

        reference = cell_default(cell, "judge", None) if cell.settings["reference"] is None \
            else cell.settings["reference"]
        if reference is None:
            raise UserError(f"judge_agreement on {cell.target} needs a reference judge with "
                            "exact labels: the target has none of its own, so give reference "
                            "= JUDGE.")
        check_judge(reference)
        check_behaviours(cell)

    def run(self, cell: Cell, context: RunContext) -> CellResult:
        from alignparadox.targets import GenerationConfig, shared_target

        settings = cell.settings
        target = shared_target(cell.target)
        prompts = behaviour_prompts(cell, settings["n_per_kind"])
        answers = target.generate(prompts.texts, GenerationConfig(
            max_new_tokens=settings["max_new_tokens"], batch_size=settings["batch_size"]))
        reference = settings["reference"] or cell_default(cell, "judge", None)
        # The reference's "misaligned" answers: harmful compliance, and partisan stances (the
        # exact judge scores both as harmful).
        truth = make_judge(reference).judge([r.text for r in prompts], answers)
        rows = [LabelledAnswer(text, answer, verdict.success)
                for text, answer, verdict in zip(prompts.texts, answers, truth, strict=True)]
        results = {}
        for spec in settings["judges"]:
            validation = validate_judge(make_judge(spec), rows)
            results[spec] = {
                **validation.metrics(),
                "disagreements": [
                    {"request": row.request, "answer": row.answer, "world_harmful": row.harmful,
                     "judge_label": verdict.label}
                    for row, verdict in validation.disagreements[:DISAGREEMENTS_KEPT]],
                "disagreement_count": len(validation.disagreements),
            }
        return CellResult({"judges": results}, target_id=target.name,
                          weight_hash=target.weight_hash,
                          prompt_sets={prompts.name: prompts.sha256},
                          judge=f"reference: {reference}")

    def report_section(self, rows: list[CellRecord], options: ReportOptions) -> Section:
        metrics = table(
            ["target", "judge", "n", "harmful (world)", "accuracy", "precision", "recall", "F1",
             "Cohen's kappa", "disagreements"],
            [[r.target, spec, m["n"], m["tp"] + m["fn"], m["accuracy"], m["precision"],
              m["recall"], m["f1"], m["kappa"], m["disagreement_count"]]
             for r in rows for spec, m in r.results["judges"].items()],
            caption="Harmful compliance as decided by each judge vs the world's exact label.")
        disagreements = table(
            ["target", "judge", "request", "answer", "world says harmful", "judge label"],
            [[r.target, spec, d["request"],
              redact(d["answer"], d["world_harmful"], options.show_completions),
              d["world_harmful"], d["judge_label"]]
             for r in rows for spec, m in r.results["judges"].items()
             for d in m["disagreements"]],
            caption="Disagreements (first few per target and judge).")
        return Section(self.title, metrics + disagreements)
