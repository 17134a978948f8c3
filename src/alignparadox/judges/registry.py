"""Judges from short spec strings, as used on the command line and in study files.

    substring                       GCG + HarmBench refusal phrases in the answer's opening
    substring:gcg                   one phrase list: gcg, harmbench, or gcg+harmbench
    strongreject:URL#MODEL          StrongREJECT rubric via an OpenAI-compatible endpoint;
    strongreject:URL#MODEL#KEY_ENV    API key from $OPENAI_API_KEY, or from $KEY_ENV
    classifier:PATH                 local HF classifier, HarmBench prompt format
    classifier:PATH#llama_guard     ... Llama Guard format
    ensemble:SPEC,SPEC,...          strict-majority vote of the listed judges
    organism                        exact ground truth of the organism world

A new kind is one `register_judge(name, factory)` call; the factory gets the text after
"name:" ("" when absent). A factory may be given as "module:attribute" so that registering it
imports nothing until a judge of that kind is made. A kind whose judges are costly to build (a
local model) also registers a `check` that validates the argument without building one, so
studies can refuse a bad spec before they start (`check_judge`).

Inside a running study cell (`judges.cache.verdict_cache`), `make_judge` returns the judge
wrapped in a `CachedJudge` on the run's results store: every measurement's verdicts are cached
by content hash without the measurement doing anything.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from alignparadox.errors import UserError
from alignparadox.judges.base import Judge

JudgeFactory = Callable[[str], Judge]
ArgumentCheck = Callable[[str], object]

_FACTORIES: dict[str, JudgeFactory | str] = {}
_CHECKS: dict[str, ArgumentCheck] = {}


def register_judge(name: str, factory: JudgeFactory | str, *,
                   check: ArgumentCheck | None = None) -> None:
    """Make `name[:ARGUMENT]` specs build judges with `factory(ARGUMENT)`; `check(ARGUMENT)`,
    if given, raises ValueError or UserError for a bad argument without building a judge."""
    if not name or ":" in name or "," in name:
        raise ValueError(f"judge kind {name!r} must be non-empty without ':' or ','")
    _FACTORIES[name] = factory
    _CHECKS.pop(name, None)
    if check is not None:
        _CHECKS[name] = check


def judge_kinds() -> list[str]:
    return sorted(_factories())


def _factories() -> dict[str, JudgeFactory | str]:
    from alignparadox.extensions import load_extensions

    load_extensions()  # installed extensions register their judges (organisms: ground truth)
    return _FACTORIES


def make_judge(spec: str) -> Judge:
    """Build the judge a spec string describes; a bad spec is a `UserError`. Inside a study
    cell the judge comes wrapped in the run's verdict cache (see the module docstring)."""
    from alignparadox.judges.cache import CachedJudge, active_verdict_cache

    judge = _build(spec)
    store = active_verdict_cache()
    return judge if store is None else CachedJudge(judge, store)


def check_judge(spec: str) -> None:
    """Raise UserError for a spec `make_judge` would refuse, without loading any model."""
    kind, argument = _kind(spec)
    if kind not in _CHECKS:
        _build(spec)  # judges without a registered check are cheap to build
        return
    try:
        _CHECKS[kind](argument)
    except ValueError as error:
        raise UserError(f"bad judge spec {spec!r}: {error}.") from error


def _kind(spec: str) -> tuple[str, str]:
    kind, _, argument = spec.strip().partition(":")
    if kind not in _factories():
        raise UserError(f"unknown judge {kind!r} in {spec!r}; known kinds: "
                        f"{', '.join(judge_kinds())}.")
    return kind, argument


def _build(spec: str) -> Judge:
    kind, argument = _kind(spec)
    factory = _FACTORIES[kind]
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        factory = getattr(importlib.import_module(module), attribute)
    try:
        return factory(argument)
    except ValueError as error:
        raise UserError(f"bad judge spec {spec!r}: {error}.") from error


def _substring(argument: str) -> Judge:
    from alignparadox.judges.substring import SubstringJudge

    return SubstringJudge(tuple(argument.split("+"))) if argument else SubstringJudge()


def _strongreject(argument: str) -> Judge:
    from alignparadox.judges.strongreject import StrongRejectJudge
    from alignparadox.targets.endpoint import EndpointTarget

    url, _, rest = argument.partition("#")
    model, _, key_env = rest.partition("#")
    if not url.startswith(("http://", "https://")) or not model:
        raise ValueError("write strongreject:URL#MODEL, e.g. "
                         "strongreject:http://127.0.0.1:8000/v1#gpt-4o-mini")
    return StrongRejectJudge(EndpointTarget(url, model, api_key_env=key_env or "OPENAI_API_KEY"))


def _classifier_arguments(argument: str) -> tuple[Path, str]:
    path, _, prompt_format = argument.partition("#")
    if not path:
        raise ValueError("write classifier:PATH or classifier:PATH#llama_guard")
    if not Path(path).expanduser().is_dir():
        raise UserError(f"classifier model folder {path} does not exist.")
    from alignparadox.judges.classifier import FORMATS

    prompt_format = prompt_format or "harmbench"
    if prompt_format not in FORMATS:
        raise ValueError(f"unknown prompt format {prompt_format!r}; choose from "
                         f"{', '.join(sorted(FORMATS))}")
    return Path(path).expanduser(), prompt_format


def _classifier(argument: str) -> Judge:
    from alignparadox.judges.classifier import ClassifierJudge

    return ClassifierJudge(*_classifier_arguments(argument))


def _ensemble_members(argument: str) -> list[str]:
    specs = [spec for spec in argument.split(",") if spec.strip()]
    if any(spec.strip().startswith("ensemble") for spec in specs):
        raise ValueError("ensembles cannot be nested")
    if len(specs) < 2:
        raise ValueError("an ensemble needs at least two judges, e.g. ensemble:substring,"
                         "classifier:PATH")
    return specs


def _ensemble(argument: str) -> Judge:
    from alignparadox.judges.ensemble import EnsembleJudge

    # Members are built uncached: the ensemble's verdicts are what a study caches.
    return EnsembleJudge([_build(spec) for spec in _ensemble_members(argument)])


def _check_ensemble(argument: str) -> None:
    for spec in _ensemble_members(argument):
        check_judge(spec)


register_judge("substring", _substring)
register_judge("strongreject", _strongreject)
register_judge("classifier", _classifier, check=_classifier_arguments)
register_judge("ensemble", _ensemble, check=_check_ensemble)
