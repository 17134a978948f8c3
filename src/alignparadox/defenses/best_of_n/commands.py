"""`paradox defend bon TARGET --reference REF`: the `bon_defense` measurement on one target,
printed as a table (and written as JSON with `--out`). Torch is imported only when it runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer


def bon(
    target: Annotated[str, typer.Argument(
        help="White-box target: organism:NAME or a local model folder.")],
    reference: Annotated[str, typer.Option(
        "--reference", help="The target before alignment, same tokenizer (e.g. "
        "organism:base).")],
    n: Annotated[int, typer.Option("--n", help="Candidates per request.")] = 8,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass.")] = 1.0,
    layer: Annotated[str, typer.Option(
        help="Fixed layer of the latent scorer: an index (12) or a relative depth (0.5).")]
    = "0.5",
    attacks: Annotated[str, typer.Option(
        help="Transfer attacks, comma-separated: direct, bon_augment, templates, gcg, pair, "
        "steering.")]
    = "direct,bon_augment,templates,gcg,pair,steering",
    adaptive: Annotated[str, typer.Option(
        help="Adaptive attacks against the defended system, comma-separated: pair, "
        "bon_augment ('' for none).")]
    = "pair,bon_augment",
    n_adaptive: Annotated[int, typer.Option(
        "--n-adaptive", help="Harmful requests the adaptive attacks run on.")] = 16,
    gcg_steps: Annotated[int, typer.Option("--gcg-steps", help="GCG steps per request.")] = 50,
    gcg_requests: Annotated[int, typer.Option(
        "--gcg-requests", help="Requests that get a GCG suffix.")] = 8,
    over_refusal: Annotated[str, typer.Option(
        "--over-refusal", help="Safe prompts that look unsafe: a set or file; 'auto' = XSTest "
        "where it is on the machine; 'none' to skip.")] = "auto",
    n_requests: Annotated[int, typer.Option(
        "--n-requests", help="Harmful requests per split (test; select for the sweep).")] = 32,
    n_harmless: Annotated[int, typer.Option(
        "--n-harmless", help="Harmless requests for utility.")] = 32,
    behaviours: Annotated[str | None, typer.Option(
        help="Behaviour set (default: the target's own, e.g. organisms).")] = None,
    harmful: Annotated[str | None, typer.Option(help="Harmful requests: set or file.")] = None,
    harmless: Annotated[str | None, typer.Option(help="Harmless requests: set or file.")]
    = None,
    judge: Annotated[str | None, typer.Option(
        help="Judge spec (default: the target's own, else substring).")] = None,
    sigma: Annotated[float | None, typer.Option(
        help="Augmentation strength of bon_augment (default: the paper's).")] = None,
    sweep: Annotated[bool, typer.Option(
        help="Choose a layer on the select split and report it apart.")] = True,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of splits and sampling.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON here.")] = None,
) -> None:
    """Best-of-N with latent attribution vs its controls: ASR per attack, layer, utility, cost."""
    from alignparadox.defenses.best_of_n.core import parse_layer
    from alignparadox.defenses.best_of_n.measurement import BestOfNDefenseMeasurement

    if out is not None:
        from alignparadox.datasets.io import check_output_file

        check_output_file(out)
    settings: dict[str, Any] = {
        **BestOfNDefenseMeasurement.defaults, "reference": reference, "n": n,
        "temperature": temperature, "top_p": top_p, "layer": parse_layer(layer),
        "attacks": _names(attacks), "adaptive": _names(adaptive), "n_adaptive": n_adaptive,
        "gcg_steps": gcg_steps, "gcg_requests": gcg_requests,
        "over_refusal": over_refusal,
        "n_requests": n_requests, "n_harmless": n_harmless, "behaviours": behaviours,
        "harmful": harmful, "harmless": harmless, "judge": judge, "sigma": sigma,
        "sweep": sweep, "max_new_tokens": max_new_tokens, "batch_size": batch_size}
    results = run_cell(target, settings, seed)
    if out is not None:
        from alignparadox.datasets.io import write_atomic

        write_atomic(out, json.dumps(results, indent=2, default=float).encode("utf-8"))
    print_results(target, results)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def run_cell(target: str, settings: dict[str, Any], seed: int) -> dict[str, Any]:
    """Check and run one `bon_defense` cell outside a study; its results."""
    import tempfile

    from alignparadox.defenses.best_of_n.measurement import BestOfNDefenseMeasurement
    from alignparadox.study.cells import Cell
    from alignparadox.study.measurement import RunContext

    measurement = BestOfNDefenseMeasurement()
    cell = Cell(target, measurement.name, settings, seed)
    measurement.check(cell)
    with tempfile.TemporaryDirectory() as folder:
        context = RunContext(Path(folder), cell, cache=None)  # type: ignore[arg-type]
        return dict(measurement.run(cell, context).results)


def _rate(value: dict[str, Any]) -> str:
    return (f"{value['rate']:.2f} [{value['low']:.2f}, {value['high']:.2f}] "
            f"({value['k']}/{value['n']})")


def _pct(value: dict[str, float]) -> str:
    def one(x: float) -> str:
        return "nan" if math.isnan(x) else f"{100 * x:+.0f}%"

    return f"{one(value['value'])} [{one(value['low'])}, {one(value['high'])}]"


def print_results(target: str, results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from alignparadox.defenses.best_of_n.measurement import ATTACK_LABELS, SCORER_LABELS

    console = Console(markup=False)
    table = Table(title=f"Best-of-{results['n']} on {target} (reference {results['reference']}, "
                        f"fixed layer {results['fixed_layer']} of {results['n_layers']}): ASR "
                        "and relative reduction vs one sample, 95% intervals")
    table.add_column("pick")
    attacks = results["attacks"]
    for attack in attacks:
        table.add_column(ATTACK_LABELS.get(attack, attack))
    table.add_row("one sample", *[_rate(o["undefended"]) for o in attacks.values()])
    for name in SCORER_LABELS:
        table.add_row(SCORER_LABELS[name],
                      *[_rate(o["scorers"][name]["asr"]) + "\n"
                        + _pct(o["scorers"][name]["reduction"]) for o in attacks.values()])
    console.print(table)
    for attack, reason in results.get("skipped", {}).items():
        console.print(f"{attack}: {reason}")
    if "chosen_layer" in results:
        pooled = results["chosen_layer_attacks"]["all"]["scorers"]["latent"]
        console.print(f"layer chosen on the select split: {results['chosen_layer']}; pooled "
                      f"test ASR {_rate(pooled['asr'])}, reduction {_pct(pooled['reduction'])}")
    if "utility" in results:
        utility = results["utility"]
        console.print("harmless answered: one sample " + _rate(utility["undefended"]) + "; "
                      + "; ".join(f"{name} {_rate(rate)}"
                                  for name, rate in utility["scorers"].items()))
    for attack, outcome in (results.get("adaptive") or {}).items():
        console.print(f"adaptive {attack}: ASR vs one sample {_rate(outcome['one_sample']['asr'])}"
                      f", vs latent defense {_rate(outcome['latent']['asr'])}, reduction "
                      f"{_pct(outcome['reduction'])}")
    over = results.get("over_refusal")
    if over and "not_measured" in over:
        console.print(f"over-refusal ({over['set']}): {over['not_measured']}")
    elif over:
        console.print(f"over-refusal ({over['set']}): one sample " + _rate(over["undefended"])
                      + "; " + "; ".join(f"{name} {_rate(rate)}"
                                         for name, rate in over["scorers"].items()))
    cost = results["cost"]
    console.print(f"cost per request: plain sampling of N {cost['sample_seconds_per_request']:.3f}"
                  f" s, defended {cost['defended_seconds_per_request']:.3f} s, ratio "
                  f"{cost['ratio']:.2f}x")

