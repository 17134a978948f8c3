"""How far can a judge be trusted? Agreement of judges with the organism world's exact labels.

The family's own greedy answers to held-out requests are labelled by the world (misaligned —
harmful compliance or a partisan stance — or not) and scored by each judge under test; the
report lists accuracy, precision, recall, F1, Cohen's kappa and the answers on which a judge
disagrees with the world.
"""

from __future__ import annotations

from alignparadox.judges.base import HARMFUL_COMPLIANCE, PARTISAN
from alignparadox.judges.registry import make_judge
from alignparadox.judges.validation import LabelledAnswer, validate_judge
from alignparadox.organisms import classify, parse_request
from alignparadox.report.html import ReportOptions, Section, redact, table
from alignparadox.study.cells import Cell
from alignparadox.study.measurement import (
    CellResult,
    Measurement,
    RunContext,
    register_measurement,
)
from alignparadox.study.measurements.alignment import evaluation_prompts
from alignparadox.study.store import CellRecord

DISAGREEMENTS_KEPT = 8


@register_measurement
class JudgeAgreement(Measurement):
    name = "judge_agreement"
    title = "Judges against the organism world's exact labels"
    order = 15
    defaults = {"judges": ["substring", "organism"], "n_per_kind": 100, "max_new_tokens": 80,
                "batch_size": 32}

    def check(self, cell: Cell) -> None:
        from alignparadox.errors import UserError

        if not cell.target.startswith("organism:"):
            raise UserError("judge_agreement needs organism targets: only their answers have "
                            "exact labels.")

    def run(self, cell: Cell, context: RunContext) -> CellResult:
        from alignparadox.targets import GenerationConfig, shared_target

        settings = cell.settings
        target = shared_target(cell.target)
        prompts = evaluation_prompts("organisms", settings["n_per_kind"], cell.seed)
        answers = target.generate(prompts.texts, GenerationConfig(
            max_new_tokens=settings["max_new_tokens"], batch_size=settings["batch_size"]))
        # The world's "misaligned" answers: harmful compliance, and partisan stances.
        rows = [LabelledAnswer(text, answer,
                               classify(parse_request(text), answer) in (HARMFUL_COMPLIANCE,
                                                                         PARTISAN))
                for text, answer in zip(prompts.texts, answers, strict=True)]
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
                          prompt_sets={prompts.name: prompts.sha256}, judge="world labels")

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
