"""Study measurement `bon_defense`: Best-of-N with latent attribution vs its controls.

Per target: for each attack (plain requests, Best-of-N augmentation, jailbreak templates) the
ASR of one sample vs the pick of each scorer (latent similarity to the reference at a fixed
layer, random, perplexity, self-certainty, token KL, and the judge oracle), with relative
reductions and bootstrap intervals; the latent scorer at the layer chosen on the select split;
utility on harmless requests; wall-time cost. See `evaluation` for the definitions.

`reference` is the target before alignment, with the same tokenizer (`organism:base` for the
organisms); it has no default, because no default may substitute one model for another.
"""

from __future__ import annotations

import math
from typing import Any

from alignparadox.errors import UserError
from alignparadox.report.html import Markup, ReportOptions, Section, figure, redact, table
from alignparadox.study.cells import Cell
from alignparadox.study.inputs import BEHAVIOUR_SETTINGS, cell_judge, check_behaviours
from alignparadox.study.measurement import (
    CellResult,
    Measurement,
    RunContext,
    register_measurement,
)
from alignparadox.study.store import CellRecord

SCORER_LABELS = {
    "latent": "latent similarity (fixed layer)",
    "random": "random pick",
    "perplexity": "lowest perplexity",
    "self_certainty": "highest self-certainty",
    "token_kl": "highest token KL to reference",
    "oracle": "judge oracle (upper bound)",
}
ATTACK_LABELS = {"direct": "plain requests", "bon_augment": "Best-of-N augmented",
                 "templates": "jailbreak templates", "gcg": "GCG suffixes",
                 "pair": "PAIR rewrites", "steering": "steering (coherent alpha)",
                 "all": "all attacks pooled"}

# The paper's relative ASR reductions vs one sample (Pathmanathan & Huang 2026, Table 2-4):
# other models (Qwen / Llama 7-8B), other prompts and Llama-Guard-3-8B as the judge.
PAPER_REDUCTIONS = [
    ("SFT deliberative alignment, layer 12", "28.2%", "31.3%", "35.4%"),
    ("SFT deliberative alignment, best layer (upper bound)", "42.2%", "47.5%", "56.3%"),
    ("after GRPO, layer 12", "21.9%", "35.3%", "48.0%"),
    ("plain instruction-tuned model", "0.8%", "-0.5%", "2.3%"),
    ("perplexity / self-certainty ranking", "-26% to -87%", "", ""),
    ("adaptive PAIR on Qwen-7B", "18% -> 18% ASR", "", ""),
]


def check_settings(settings: dict[str, Any]) -> None:
    from alignparadox.defenses.best_of_n.adaptive import ADAPTIVE_ATTACKS
    from alignparadox.defenses.best_of_n.evaluation import ATTACKS

    for name in ("n", "n_requests", "n_harmless", "max_new_tokens", "batch_size",
                 "n_adaptive", "adaptive_bon_n", "n_over_refusal"):
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            what = "the number of candidates N" if name == "n" else f"bon_defense {name}"
            raise UserError(f"{what} must be a whole number of at least 1, got {value!r}.")
    layer = settings["layer"]
    if isinstance(layer, bool) or not isinstance(layer, int | float) or (
            isinstance(layer, float) and not 0.0 <= layer <= 1.0) or (
            isinstance(layer, int) and layer < 0):
        raise UserError(f"bon_defense layer must be a layer index (integer) or a relative "
                        f"depth in [0, 1], got {layer!r}.")
    temperature = settings["temperature"]
    if not isinstance(temperature, int | float) or not temperature > 0 \
            or not math.isfinite(temperature):
        raise UserError(f"bon_defense temperature must be positive, got {temperature!r}.")
    if not 0 < settings["top_p"] <= 1:
        raise UserError(f"bon_defense top_p must be in (0, 1], got {settings['top_p']!r}.")
    for key, known, empty_ok in (("attacks", ATTACKS, False),
                                 ("adaptive", ADAPTIVE_ATTACKS, True)):
        chosen = settings[key]
        if not isinstance(chosen, list | tuple) or (not chosen and not empty_ok) or any(
                a not in known for a in chosen):
            raise UserError(f"bon_defense {key} must be some of {', '.join(known)}, got "
                            f"{chosen!r}.")
    attack_settings(settings)  # the attacks' own settings
    if settings["sigma"] is not None:
        from alignparadox.datasets.augmentation import Augmentation

        Augmentation.from_sigma(settings["sigma"])
    over_refusal = settings["over_refusal"]
    if over_refusal not in ("none", "auto"):
        from alignparadox.datasets.behaviours import check_source

        check_source(over_refusal, "over_refusal")


def attack_settings(settings: dict[str, Any]):
    from alignparadox.defenses.best_of_n.attacked import AttackSettings

    alphas = settings["steering_alphas"]
    return AttackSettings(
        sigma=settings["sigma"], template_set=settings["template_set"],
        n_templates=settings["n_templates"], gcg_requests=settings["gcg_requests"],
        gcg_steps=settings["gcg_steps"], gcg_suffix_length=settings["gcg_suffix_length"],
        gcg_search_width=settings["gcg_search_width"], pair_attacker=settings["pair_attacker"],
        pair_streams=settings["pair_streams"], pair_rounds=settings["pair_rounds"],
        steering_alphas=tuple(alphas) if isinstance(alphas, list | tuple) else (alphas,),
        max_new_tokens=settings["max_new_tokens"])


def over_refusal_prompts(spec: str, n: int, seed: int) -> tuple[Any, str | None]:
    """(safe prompts that look unsafe, or None; why not, when `auto` found none here);
    `none` measures no over-refusal."""
    from alignparadox.datasets.behaviours import load_requests

    if spec == "none":
        return None, None
    try:
        return load_requests("xstest" if spec == "auto" else spec, "harmless").sample(n, seed), \
            None
    except UserError as error:
        if spec != "auto":
            raise
        return None, f"not measured: {error}"


def require_local(spec: str, what: str) -> None:
    if spec.startswith(("http://", "https://")):
        raise UserError(f"{what} {spec} is an endpoint; Best-of-N with latent attribution reads "
                        "internal states, so it needs a white-box target (organism:NAME or a "
                        "local model folder).")


@register_measurement
class BestOfNDefenseMeasurement(Measurement):
    name = "bon_defense"
    title = "Defense: Best-of-N with latent attribution to the pre-alignment model"
    order = 70
    defaults = {**BEHAVIOUR_SETTINGS, "judge": None, "reference": None, "n": 8,
                "temperature": 0.7, "top_p": 1.0, "layer": 0.5, "max_new_tokens": 64,
                "n_requests": 32, "n_harmless": 32,
                "attacks": ["direct", "bon_augment", "templates", "gcg", "pair", "steering"],
                "adaptive": ["pair", "bon_augment"], "n_adaptive": 16, "adaptive_bon_n": 16,
                "sigma": None, "template_set": "jailbreak-templates", "n_templates": 8,
                "gcg_requests": 8, "gcg_steps": 50, "gcg_suffix_length": 12,
                "gcg_search_width": 64, "pair_attacker": "scripted", "pair_streams": 2,
                "pair_rounds": 3, "steering_alphas": [0.25, 0.5, 1.0, 2.0],
                "over_refusal": "auto", "n_over_refusal": 32, "sweep": True,
                "batch_size": 32}

    def cells(self, targets, settings, grid, seed) -> list[Cell]:
        """Every cell but those whose target is its own reference (the pre-alignment model
        itself, as when a study runs on a whole family: every candidate's similarity is 1)."""
        return [cell for cell in super().cells(targets, settings, grid, seed)
                if cell.target != cell.settings["reference"]]

    def check(self, cell: Cell) -> None:
        from alignparadox.judges.registry import check_judge
        from alignparadox.targets import check_target

        settings = cell.settings
        check_settings(settings)
        reference = settings["reference"]
        if not isinstance(reference, str) or not reference.strip():
            raise UserError(f"bon_defense on {cell.target} needs reference = the target before "
                            "alignment, with the same tokenizer (e.g. reference = "
                            "\"organism:base\").")
        require_local(cell.target, "target")
        require_local(reference, "reference")
        check_target(cell.target)
        check_target(reference)
        check_judge(cell_judge(cell))
        check_behaviours(cell, needs_harmless=False)

    def run(self, cell: Cell, context: RunContext) -> CellResult:
        from alignparadox.defenses.best_of_n.core import BestOfNConfig
        from alignparadox.defenses.best_of_n.evaluation import EvaluationConfig, evaluate
        from alignparadox.judges.registry import make_judge
        from alignparadox.study.inputs import cell_behaviours
        from alignparadox.targets import alignment_strength, open_target, shared_target

        s = cell.settings
        target = shared_target(cell.target)
        reference = open_target(s["reference"], device=str(target.device))
        behaviours = cell_behaviours(cell, needs_harmless=False)
        judge = cell_judge(cell)
        harmful_test = behaviours.requests("harmful", "test", s["n_requests"], cell.seed)
        harmful_select = behaviours.requests("harmful", "select", s["n_requests"], cell.seed) \
            if s["sweep"] else None
        harmless = (behaviours.requests("harmless", "test", s["n_harmless"], cell.seed)
                    if behaviours.has_harmless else None)
        if harmless is not None:  # value-axis (stance) requests are not harmless tasks
            from alignparadox.datasets.behaviours import VALUE_CATEGORY
            from alignparadox.datasets.records import PromptSet

            harmless = PromptSet(harmless.name, tuple(
                r for r in harmless.records if r.category != VALUE_CATEGORY))
        over_refusal, over_refusal_reason = over_refusal_prompts(
            s["over_refusal"], s["n_over_refusal"], cell.seed)
        config = EvaluationConfig(
            bon=BestOfNConfig(n=s["n"], temperature=float(s["temperature"]),
                              top_p=float(s["top_p"]), max_new_tokens=s["max_new_tokens"],
                              seed=cell.seed, batch_size=s["batch_size"], layer=s["layer"]),
            attacks=tuple(s["attacks"]), adaptive=tuple(s["adaptive"]),
            attack_settings=attack_settings(s), n_adaptive=s["n_adaptive"],
            adaptive_bon_n=s["adaptive_bon_n"], sweep=s["sweep"],
            max_error_share=float(s.get("max_error_share", 0.0)))
        results = evaluate(target, reference, make_judge(judge), harmful_test=harmful_test,
                           harmful_select=harmful_select, harmless_test=harmless,
                           over_refusal=over_refusal,
                           behaviours=behaviours if behaviours.has_harmless else None,
                           config=config, seed=cell.seed, progress=context.progress)
        if over_refusal_reason is not None:
            results["over_refusal"] = {"set": "xstest", "not_measured": over_refusal_reason}
        results["alignment_steps"] = alignment_strength(cell.target)
        sets = {part.name: part.sha256 for part in (harmful_test, harmful_select, harmless,
                                                    over_refusal) if part is not None}
        return CellResult(results, target_id=target.name, weight_hash=target.weight_hash,
                          prompt_sets=sets, judge=judge)

    def report_section(self, rows: list[CellRecord], options: ReportOptions) -> Section:
        rows = sorted((r for r in rows if r.results),
                      key=lambda r: (r.results.get("alignment_steps") is None,
                                     r.results.get("alignment_steps") or 0, r.target))
        return Section(self.title, report_html(rows, options))


def _reduction(value: dict[str, float]) -> str:
    def pct(x: float) -> str:
        return "nan" if x is None or math.isnan(x) else f"{100 * x:+.0f}%"

    return f"{pct(value['value'])} [{pct(value['low'])}, {pct(value['high'])}]"


def report_html(rows: list[CellRecord], options: ReportOptions) -> Markup:
    parts = [Markup(
        "<p>N candidates per attacked request are sampled at the paper's temperature; "
        "<em>one sample</em> is the harmful share over all N (the expected ASR of plain "
        "sampling); each scorer returns the candidate it ranks lowest. Relative reduction = "
        "1 &minus; ASR<sub>scorer</sub> / ASR<sub>one sample</sub>, with a paired bootstrap "
        "95% interval over prompts. The headline uses a fixed layer; the layer chosen on the "
        "select split is reported apart. The first table's attacks are transfer attacks: "
        "prompts (for steering, the model condition) made against the undefended target; the "
        "adaptive table runs the black-box attacks against the defended system.</p>")]
    for row in rows:
        parts.append(_target_html(row, options))
    parts.append(table(
        ["paper (different models, prompts and judge)", "DAN", "WildJailbreak", "StrongREJECT"],
        PAPER_REDUCTIONS,
        caption="Relative ASR reductions reported by Pathmanathan & Huang 2026 "
                "(Qwen/Llama 7-8B models, Llama-Guard-3-8B judge): not comparable number by "
                "number with the rows above, which use other models, prompts and judges."))
    return Markup("").join(parts)


def _target_html(row: CellRecord, options: ReportOptions) -> Markup:
    res = row.results
    steps = res.get("alignment_steps")
    head = Markup("<h3>{}</h3><p>reference {} &middot; N = {} &middot; T = {} &middot; top-p "
                  "= {} &middot; fixed layer {} of {}{}</p>").format(
        row.target, res["reference"], res["n"], res["temperature"], res["top_p"],
        res["fixed_layer"], res["n_layers"],
        "" if steps is None else f" · alignment strength {steps}")
    attacks = res["attacks"]
    header = ["attack", "prompts", "one sample"] + [SCORER_LABELS[s] for s in SCORER_LABELS]
    body = []
    for attack, outcome in attacks.items():
        body.append([ATTACK_LABELS.get(attack, attack), outcome["prompts"],
                     outcome["undefended"]] + [outcome["scorers"][s]["asr"]
                                               for s in SCORER_LABELS])
        body.append(["", "", "relative reduction"] + [
            _reduction(outcome["scorers"][s]["reduction"]) for s in SCORER_LABELS])
    html = head + table(header, body, caption="ASR (judge: harmful compliance) with 95% "
                        "intervals and counts; below each row the relative reduction vs one "
                        "sample with its bootstrap 95% interval.")
    for attack, reason in res.get("skipped", {}).items():
        html += Markup("<p>{}: {}</p>").format(ATTACK_LABELS.get(attack, attack), reason)
    if "chosen_layer" in res:
        chosen = res["chosen_layer_attacks"]
        html += table(
            ["attack", f"latent at chosen layer {res['chosen_layer']}", "relative reduction"],
            [[ATTACK_LABELS.get(a, a), o["scorers"]["latent"]["asr"],
              _reduction(o["scorers"]["latent"]["reduction"])] for a, o in chosen.items()],
            caption="Latent similarity at the layer with the lowest pooled ASR on the select "
                    "split (disjoint requests), measured on the test split: apart from the "
                    "fixed-layer headline.")
        html += _sweep_plot(row)
    details = res.get("attack_details", {})
    if details:
        html += Markup("<p>{}</p>").format("; ".join(
            f"{ATTACK_LABELS.get(a, a)}: {_details(d)}" for a, d in details.items()))
    html += _adaptive_html(res.get("adaptive") or {})
    if "utility" in res:
        utility = res["utility"]
        html += table(
            ["harmless requests", "one sample"] + list(utility["scorers"]),
            [[utility["prompts"], utility["undefended"]] + list(utility["scorers"].values())],
            caption="Utility: share of held-out harmless requests answered.")
    over = res.get("over_refusal")
    if over and "not_measured" in over:
        html += Markup("<p>Over-refusal ({}): {}</p>").format(over["set"], over["not_measured"])
    elif over:
        html += table(
            [f"safe prompts ({over['set']})", "one sample"] + list(over["scorers"]),
            [[over["prompts"], over["undefended"]] + list(over["scorers"].values())],
            caption="Over-refusal: share of safe prompts that look unsafe which the judge calls "
                    "refused (lower is better).")
    cost = res["cost"]
    html += Markup("<p>Cost: {:.3f} s per request for plain sampling of N, {:.3f} s with the "
                   "latent scorer: <strong>{:.2f}&times;</strong> ({} {} requests).</p>").format(
        cost["sample_seconds_per_request"], cost["defended_seconds_per_request"],
        cost["ratio"], cost["requests"], cost["attack"])
    samples = res.get("samples", [])[:1]
    if samples:
        html += table(["request", "candidate", "judge"],
                      [[s["request"], redact(a["text"], a["harmful"], options.show_completions),
                        a["label"]] for s in samples for a in s["answers"][:4]],
                      caption="Candidates of one request (harmful completions redacted unless "
                              "--show-completions).")
    return html


def _details(details: dict[str, Any]) -> str:
    shown = {key: value for key, value in details.items() if key != "alpha_sweep"}
    return ", ".join(f"{key} {value}" for key, value in shown.items())


def _adaptive_html(adaptive: dict[str, Any]) -> Markup:
    if not adaptive:
        return Markup("")
    rows = [[ATTACK_LABELS.get(attack, attack), o["requests"], o["one_sample"]["asr"],
             o["one_sample"]["queries"], o["latent"]["asr"], o["latent"]["queries"],
             _reduction(o["reduction"])] for attack, o in adaptive.items()]
    return table(["adaptive attack", "requests", "ASR vs one sample", "queries",
                  "ASR vs latent defense", "queries", "relative reduction"], rows,
                 caption="Adaptive: the attack's own search run against the defended system "
                         "(its verdicts come from the defended answers), vs the same search "
                         "against one sample at the defense's temperature; queries are mean "
                         "target queries per request.")


def _sweep_plot(row: CellRecord) -> Markup:
    sweep = row.results.get("sweep") or []
    if len(sweep) < 2:
        return Markup("")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.2))
    axes = fig.add_subplot()
    layers = [point["layer"] for point in sweep]
    for split, style in (("select", "o-"), ("test", "s--")):
        axes.plot(layers, [point[split]["rate"] for point in sweep], style,
                  label=f"{split} split")
    axes.axvline(row.results["chosen_layer"], color="grey", linestyle=":", label="chosen")
    axes.set_xlabel("layer")
    axes.set_ylabel("ASR of the latent pick")
    axes.legend(fontsize=8)
    return figure(fig, f"layer sweep of {row.target}",
                  caption="Latent-similarity pick ASR by layer (pooled over attacks); the layer "
                          "is chosen on the select split only.")
