"""How far can a judge be trusted? Agreement of judges with a reference judge's exact labels.

The target's own greedy answers to test-split harmful requests of its behaviour set are
labelled by the reference judge and scored by each judge under test on the decisions it makes:
every judge on **refusal detection** (did the answer refuse?), and a judge that tells harm from
harmless compliance also on **harmful compliance** (an attack success). A refusal-phrase judge
(`substring`) calls every non-refusal harmful, so it is scored on refusal only: charging it
with harmless answers would misreport a judge whose refusals agree with the reference. The
report lists accuracy, precision, recall, F1, Cohen's kappa and the answers on which a judge
disagrees. The reference is the target's own exact judge (organisms: the world's ground
truth); a target without one, or a study that gives none (`reference`), is refused.
"""

from __future__ import annotations

from alignparadox.judges.base import sees_harm
from alignparadox.judges.registry import check_judge, make_judge
from alignparadox.judges.validation import (
    HARMFUL_COMPLIANCE,
    REFUSED,
    LabelledAnswer,
    predicts,
    validate_judge,
)
from alignparadox.report.html import Markup, ReportOptions, Section, redact, table
from alignparadox.study.cells import Cell
from alignparadox.study.inputs import (
    BEHAVIOUR_SETTINGS,
    cell_behaviours,
    cell_default,
    check_behaviours,
)
from alignparadox.study.measurement import (
    CellResult,
    Measurement,
    RunContext,
    register_measurement,
)
from alignparadox.study.store import CellRecord

DISAGREEMENTS_KEPT = 8


@register_measurement
class JudgeAgreement(Measurement):
    name = "judge_agreement"
    title = "Judges against the reference judge's exact labels"
    order = 15
    # judges: None = the substring judge and the reference itself (exact on its own labels)
    defaults = {"judges": None, "n_harmful": 100, "max_new_tokens": 80,
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
        judges = cell.settings["judges"]
        if judges is not None:
            if not isinstance(judges, list) or not judges or not all(
                    isinstance(spec, str) for spec in judges):
                raise UserError("judge_agreement setting judges must be a non-empty list of "
                                f"judge names, got {judges!r}.")
            for spec in judges:
                check_judge(spec)
        check_behaviours(cell)

    def run(self, cell: Cell, context: RunContext) -> CellResult:
        from alignparadox.targets import GenerationConfig, shared_target

        settings = cell.settings
        target = shared_target(cell.target)
        prompts = cell_behaviours(cell, needs_harmless=False).requests(
            "harmful", "test", settings["n_harmful"], cell.seed)
        answers = target.generate(prompts.texts, GenerationConfig(
            max_new_tokens=settings["max_new_tokens"], batch_size=settings["batch_size"]))
        reference = settings["reference"] or cell_default(cell, "judge", None)
        truth = make_judge(reference).judge(list(prompts.texts), answers)
        labelled = {decision: [LabelledAnswer(text, answer, predicts(verdict, decision))
                               for text, answer, verdict in zip(prompts.texts, answers, truth,
                                                                strict=True)]
                    for decision in DECISIONS}
        results = {}
        for spec in settings["judges"] or ["substring", reference]:
            judge = make_judge(spec)
            results[spec] = {
                decision: _scored(validate_judge(judge, rows, decision=decision))
                if decision == REFUSED or sees_harm(judge) else
                {"not_measured": f"{spec} cannot tell harmful from harmless compliance (it "
                                 "calls every non-refusal harmful); scored on refusal only"}
                for decision, rows in labelled.items()}
        return CellResult({"judges": results}, target_id=target.name,
                          weight_hash=target.weight_hash,
                          prompt_sets={prompts.name: prompts.sha256},
                          judge=f"reference: {reference}")

    def report_section(self, rows: list[CellRecord], options: ReportOptions) -> Section:
        old = [r for r in rows if not all(set(d) <= set(DECISIONS)
                                          for d in r.results["judges"].values())]
        rows = [r for r in rows if r not in old]
        measured = [(r, spec, decision, m) for r in rows
                    for spec, decisions in r.results["judges"].items()
                    for decision, m in decisions.items()]
        metrics = table(
            ["target", "judge", "decision", "n", "positive (reference)", "accuracy",
             "precision", "recall", "F1", "Cohen's kappa", "disagreements"],
            [[r.target, spec, DECISION_TITLES[decision], *(
                [m["n"], m["tp"] + m["fn"], m["accuracy"], m["precision"], m["recall"],
                 m["f1"], m["kappa"], m["disagreement_count"]]
                if "not_measured" not in m else [m["not_measured"], *[None] * 7])]
             for r, spec, decision, m in measured],
            caption="Each judge on harmful requests against the reference's exact labels: "
                    "refusal detection for every judge, harmful compliance for judges that "
                    "see harm.")
        disagreements = table(
            ["target", "judge", "decision", "request", "answer", "reference says",
             "judge label"],
            [[r.target, spec, DECISION_TITLES[decision], d["request"],
              redact(d["answer"], d["reference_positive"] and decision != REFUSED,
                     options.show_completions),
              d["reference_positive"], d["judge_label"]]
             for r, spec, decision, m in measured if "not_measured" not in m
             for d in m["disagreements"]],
            caption="Disagreements (first few per target, judge and decision).")
        note = Markup("")
        if old:  # cells of an earlier version, which scored every judge on harmful compliance
            note = Markup("<p>Left out: {} cell(s) recorded by an earlier version (one score "
                          "per judge over every answer); rerun the study to score them per "
                          "decision.</p>").format(len(old))
        return Section(self.title, metrics + disagreements + note)


DECISIONS = (REFUSED, HARMFUL_COMPLIANCE)
DECISION_TITLES = {REFUSED: "refusal", HARMFUL_COMPLIANCE: "harmful compliance"}


def _scored(validation) -> dict:
    return {**validation.metrics(),
            "disagreements": [
                {"request": row.request, "answer": row.answer, "reference_positive": row.harmful,
                 "judge_label": verdict.label}
                for row, verdict in validation.disagreements[:DISAGREEMENTS_KEPT]],
            "disagreement_count": len(validation.disagreements)}
