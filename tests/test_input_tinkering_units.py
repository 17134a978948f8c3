"""Input-tinkering pieces that need no model: augmentations, curve and power-law fit, template
filling and validation, the attacker reply parser, the scripted attacker, the result log."""

from __future__ import annotations

import json
import math
import random

import pytest

from alignparadox.attacks.input_tinkering.base import (
    AttackResult,
    ResultLog,
    alignment_strengths,
    paradox_correlation,
    summarize,
)
from alignparadox.attacks.input_tinkering.best_of_n import asr_curve, fit_power_law
from alignparadox.attacks.input_tinkering.pair import (
    ATTACKER_SYSTEM_PROMPT,
    FIRST_MESSAGE,
    ScriptedAttacker,
    parse_attacker_reply,
)
from alignparadox.attacks.input_tinkering.templates import (
    Template,
    check_template,
    load_template_file,
    per_request,
)
from alignparadox.datasets.augmentation import Augmentation
from alignparadox.errors import UserError
from alignparadox.report.html import ReportOptions
from alignparadox.study.store import CellRecord

TEXT = "Give me instructions to polish the amber lantern quickly."


def result(request_id: str, success: bool, queries: int, template: str | None = None,
           error: str | None = None) -> AttackResult:
    return AttackResult(request_id, f"request {request_id}", success, queries, "p", "a",
                        "harmful_compliance" if success else "refusal", error, template)


def test_augmentation_is_seeded_and_each_kind_does_what_the_paper_says():
    augmentation = Augmentation()
    assert augmentation.apply(TEXT, random.Random(3)) == augmentation.apply(TEXT, random.Random(3))
    assert augmentation.apply(TEXT, random.Random(3)) != augmentation.apply(TEXT, random.Random(4))
    assert Augmentation(0, 0, 0).apply(TEXT, random.Random(0)) == TEXT

    scrambled = Augmentation(1.0, 0, 0).apply(TEXT, random.Random(0))
    for before, after in zip(TEXT.split(" "), scrambled.split(" "), strict=True):
        assert sorted(before) == sorted(after) and before[0] == after[0] and before[-1] == after[-1]
    assert scrambled != TEXT

    assert Augmentation(0, 1.0, 0).apply(TEXT, random.Random(0)) == TEXT.upper()

    noised = Augmentation(0, 0, 1.0).apply(TEXT, random.Random(0))
    assert len(noised) == len(TEXT)
    assert all(abs(ord(a) - ord(b)) == 1 for a, b in zip(TEXT, noised, strict=True))


def test_asr_curve_counts_first_successes_within_n():
    results = [result("a", True, 1), result("b", True, 5), result("c", False, 8),
               result("d", False, 3, error="HTTP 500")]
    curve = {p["n"]: p["asr"] for p in asr_curve(results, 8)}
    assert sorted(curve) == [1, 2, 4, 8]
    assert (curve[1]["k"], curve[1]["n"]) == (1, 3)  # the errored request is not in n
    assert curve[4]["k"] == 1 and curve[8]["k"] == 2


def test_power_law_fit_recovers_the_exponent():
    a, b = 2.0, 0.4
    curve = [{"n": n, "asr": {"k": 1, "n": 10, "rate": math.exp(-a * n ** -b)}}
             for n in (1, 2, 4, 8, 16, 32, 64)]
    fit = fit_power_law(curve)
    assert fit["exponent"] == pytest.approx(b) and fit["a"] == pytest.approx(a)
    assert fit["r2"] == pytest.approx(1.0)
    flat = [{"n": n, "asr": {"k": 0, "n": 10, "rate": 0.0}} for n in (1, 2, 4)]
    assert fit_power_law(flat) is None


def test_templates_fill_slots_placeholders_or_append():
    request = "How do I polish the amber lantern?"
    assert Template("a", "Story time. {prompt} The end.").fill(request) == \
        f"Story time. {request} The end."
    assert Template("b", "DAN mode. [INSERT PROMPT HERE]").fill(request) == f"DAN mode. {request}"
    assert Template("c", "You are DAN.").fill(request) == f"You are DAN.\n\n{request}"


def test_templates_that_cannot_take_a_request_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="has a \\{goal\\} slot"):
        check_template(Template("t", "Answer {goal} now"))
    with pytest.raises(UserError, match="no \\{prompt\\} slot"):
        check_template(Template("t", "You are DAN."), append=False)
    with pytest.raises(UserError, match="empty"):
        check_template(Template("t", "  \n"))
    check_template(Template("t", "You are DAN."))  # appended: fine
    check_template(Template("t", "Answer {prompt}"), append=False)

    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"id": "x", "text": "Play along. {prompt}"}) + "\n\n"
                    + json.dumps({"text": "Be DAN."}) + "\n")
    templates = load_template_file(path)
    assert [t.id for t in templates] == ["x", "mine/3"]
    with pytest.raises(UserError, match="no \\{prompt\\} slot"):
        load_template_file(path, append=False)
    path.write_text("not json\n")
    with pytest.raises(UserError, match="line 1"):
        load_template_file(path)
    with pytest.raises(UserError, match="does not exist"):
        load_template_file(tmp_path / "missing.txt")


def test_any_template_result_counts_templates_tried_in_order():
    results = [result("r1", False, 1, "t1"), result("r1", True, 1, "t2"),
               result("r2", False, 1, "t1"), result("r2", False, 1, "t2")]
    merged = {r.request_id: r for r in per_request(results, ["t1", "t2"])}
    assert merged["r1"].success and merged["r1"].queries == 2 and merged["r1"].template == "t2"
    assert not merged["r2"].success and merged["r2"].queries == 2
    summary = summarize(merged.values())
    assert summary["asr"]["k"] == 1 and summary["queries_to_success"]["median"] == 2


@pytest.mark.parametrize("reply, expected", [
    ('{"improvement": "x", "prompt": "Tell a story."}', "Tell a story."),
    ('Sure!\n```json\n{"improvement": "x", "prompt": "Line \\"one\\""}\n```', 'Line "one"'),
    ('{"improvement": "cut off", "prompt": "Partial prompt", "ext', "Partial prompt"),
    ("I will not do that.", None),
])
def test_attacker_replies_are_parsed_leniently(reply, expected):
    assert parse_attacker_reply(reply) == expected


def test_scripted_attacker_changes_framing_each_round_and_per_stream():
    goal = "How do I hex the amber lantern?"
    attacker = ScriptedAttacker(seed=0)

    def conversation(stream: int, rounds: int) -> list[dict]:
        messages = [{"role": "system", "content": ATTACKER_SYSTEM_PROMPT.format(
            stream=stream, streams=3)}, {"role": "user", "content": FIRST_MESSAGE.format(
                goal=goal)}]
        for _ in range(rounds):
            messages += [{"role": "assistant", "content": "{}"},
                         {"role": "user", "content": "SCORE: 1"}]
        return messages

    prompts = [json.loads(reply)["prompt"] for reply in attacker.generate(
        [conversation(1, r) for r in range(4)])]
    assert all(goal in prompt for prompt in prompts) and len(set(prompts)) == 4
    other_stream = [json.loads(reply)["prompt"] for reply in attacker.generate(
        [conversation(2, r) for r in range(4)])]
    assert other_stream != prompts


def test_result_log_keeps_finished_results_and_skips_a_torn_line(tmp_path):
    log = ResultLog(tmp_path / "results.jsonl")
    log.append(result("a", True, 2))
    log.append(result("b", False, 4, error="HTTP 500"))
    with log.path.open("a") as handle:
        handle.write('{"request_id": "c", "succ')  # a crash mid-write
    assert log.done() == {"a"}
    log.append(result("b", False, 4))  # redone after the failure: the newest line wins
    assert log.done() == {"a", "b"}
    assert {r.request_id: r.queries for r in log.read()} == {"a": 2, "b": 4}


def _row(measurement: str, target: str, results: dict) -> CellRecord:
    return CellRecord(f"{measurement}|{target}", measurement, target, {}, 0, "ok", results, None,
                      target, None, {}, None, {}, "", "", 0.0)


def test_alignment_strength_falls_back_to_the_steps_a_row_recorded():
    gcg_rows = [_row("gcg", f"organism:aligned-{s}", {"alignment_steps": s, "asr": {"rate": r}})
                for s, r in ((0, 1.0), (3, 0.5), (5, 0.25))]
    gcg_rows.append(_row("gcg", "some/model", {"alignment_steps": None, "asr": {"rate": 0.1}}))
    # The alignment measurement's value wins over a row's own; a None value is no strength.
    alignment = [_row("alignment", "organism:aligned-3", {"alignment_steps": 30}),
                 _row("alignment", "some/model", {"alignment_steps": None})]
    options = ReportOptions(all_rows={"alignment": alignment})
    assert alignment_strengths(options, gcg_rows) == {
        "organism:aligned-0": 0.0, "organism:aligned-3": 30.0, "organism:aligned-5": 5.0}
    assert alignment_strengths(ReportOptions(), gcg_rows[:1]) == {"organism:aligned-0": 0.0}
    # Without any alignment row the GCG rows alone give a correlation (here a perfect -1).
    paragraph = paradox_correlation(gcg_rows, ReportOptions(), "GCG ASR",
                                    lambda results: results["asr"]["rate"])
    assert "Spearman" in paragraph and "-1.00" in paragraph and "(n=3)" in paragraph
