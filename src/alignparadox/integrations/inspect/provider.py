"""The `alignparadox/` model provider for Inspect: any white-box target, generating in-process.

    inspect eval TASK --model alignparadox/organism:aligned-5
    inspect eval TASK --model alignparadox//models/my-7b-chat -M dtype=bf16
    inspect eval TASK --model alignparadox/organism:aligned-5 -M direction=dir.json -M alpha=-1
    inspect eval TASK --model alignparadox/organism:aligned-5 -M direction=dir.json -M ablate=true
    inspect eval TASK --model alignparadox/organism:aligned-5 -M direction=dir.json \
        -M orthogonalize=true

The model name is anything `open_target` opens: `organism:NAME` (or another provider's scheme), a
local Hugging Face folder, or a Hub id. Model args (`-M`, or `model_args` in Python):

    direction=PATH        a saved direction (`paradox directions fit`), made on this model; with
      alpha=A             ... add A × mean residual norm × direction (activation addition),
        layer=L           ... at layer L instead of the direction's own layer;
      ablate=true         ... or project it out at every layer (directional ablation);
      orthogonalize=true  ... or remove it from the weights (weight orthogonalization)
    device, dtype, chat_template, allow_pickle, trust_remote_code   as for `load_target`

Decoding uses the target's own loop, so an answer depends only on the settings Inspect sends:
greedy unless `temperature` > 0; then temperature + `top_p` with `seed` (a fresh random seed
per call when none is set, recorded in the output's metadata, so epochs differ). `stop_seqs` cut
the answer after decoding, which gives the same text as stopping early because decoding is
causal. `num_choices` answers are sampled in one batch. Settings this loop cannot honour (top-k,
penalties, logit bias, logprobs, tools, non-text content) are refused rather than ignored.

Generations run one at a time, in a worker thread, for the reason `paradox serve` gives: batching
concurrent requests would make an answer depend on which other requests shared its batch.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import anyio
from inspect_ai.model import (
    ChatCompletionChoice,
    ChatMessage,
    ChatMessageAssistant,
    GenerateConfig,
    ModelAPI,
    ModelInfo,
    ModelOutput,
    ModelUsage,
    StopReason,
    set_model_info,
)
from inspect_ai.tool import ToolChoice, ToolInfo

from alignparadox.errors import UserError
from alignparadox.targets import Generation, GenerationConfig, WhiteBoxTarget

DEFAULT_MAX_TOKENS = 512
# Keyword arguments passed through to `open_target` / `load_target`.
_LOAD_ARGS = ("device", "dtype", "chat_template", "allow_pickle", "trust_remote_code")
_STEER_ARGS = ("direction", "alpha", "layer", "ablate", "orthogonalize")
# GenerateConfig fields whose non-neutral values would change the answer in ways the target's
# decoding loop does not implement.
_UNSUPPORTED = {
    "top_k": (None,),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "prompt_logprobs": (None, 0),
    "best_of": (None, 1),
    "response_schema": (None,),
}


class AlignParadoxAPI(ModelAPI):
    """An Inspect `ModelAPI` over a `WhiteBoxTarget`, optionally steered along a direction."""

    def __init__(
        self,
        model_name: str,
        base_url: str | None = None,
        api_key: str | None = None,
        config: GenerateConfig = GenerateConfig(),
        **model_args: Any,
    ) -> None:
        super().__init__(model_name=model_name, base_url=base_url, api_key=api_key,
                         config=config)
        unknown = sorted(set(model_args) - set(_LOAD_ARGS) - set(_STEER_ARGS))
        if unknown:
            raise UserError(f"unknown model arg(s) {', '.join(unknown)} for alignparadox/; "
                            f"known: {', '.join(_STEER_ARGS + _LOAD_ARGS)}.")
        steering = {key: model_args.get(key) for key in _STEER_ARGS}
        _check_steering(**steering)  # before a possibly long model load
        from alignparadox.targets import open_target

        target = open_target(model_name, **{key: model_args[key] for key in _LOAD_ARGS
                                             if key in model_args})
        self.target, self.intervention, self._context = _intervene(target, **steering)
        self._lock = threading.Lock()
        # Inspect looks up facts about a model by name, and instantiates the provider (without
        # the model args: a second, unsteered copy of the weights) for names it does not know.
        set_model_info(f"alignparadox/{model_name}",
                       ModelInfo(model=model_name, organization="alignparadox",
                                 context_length=self.target.context_length))

    # -- generation -----------------------------------------------------------------------------

    async def generate(
        self,
        input: list[ChatMessage],
        tools: list[ToolInfo],
        tool_choice: ToolChoice,
        config: GenerateConfig,
    ) -> ModelOutput:
        if tools:
            raise UserError("alignparadox/ targets cannot call tools; run tasks without tools.")
        messages = [_message(message) for message in input]
        decoding, choices, stops = _decoding(config)
        started = time.monotonic()
        prompt_tokens, generations = await anyio.to_thread.run_sync(
            self._complete, messages, decoding, choices)
        answers = [_stopped(generation, decoding, stops) for generation in generations]
        return ModelOutput(
            model=self.model_name,
            choices=[ChatCompletionChoice(
                message=ChatMessageAssistant(content=text, model=self.model_name,
                                             source="generate"),
                stop_reason=reason) for text, reason in answers],
            usage=ModelUsage(input_tokens=prompt_tokens,
                             output_tokens=sum(len(g.token_ids) for g in generations),
                             total_tokens=prompt_tokens * len(generations)
                             + sum(len(g.token_ids) for g in generations)),
            time=time.monotonic() - started,
            metadata={"alignparadox": {
                "target": self.target.name, "intervention": self.intervention,
                "decoding": {"do_sample": decoding.do_sample, "temperature": decoding.temperature,
                             "top_p": decoding.top_p, "seed": decoding.seed}}},
        )

    def _complete(self, messages: list[dict], decoding: GenerationConfig,
                  choices: int) -> tuple[int, list[Generation]]:
        with self._lock, self._context():
            prompt_tokens = len(self.target.token_ids(messages))
            return prompt_tokens, self.target.complete([messages] * choices, decoding)

    # -- what Inspect asks of a provider --------------------------------------------------------

    def max_tokens(self) -> int | None:
        return DEFAULT_MAX_TOKENS

    def max_connections(self) -> int:
        return 1  # one generation at a time (see the module docstring)

    def connection_key(self) -> str:
        # Each instance holds its own model and lock, so two (say plain and steered) need not
        # queue for one shared connection slot.
        return f"{self.target.name}#{id(self)}"

    def close(self) -> None:
        self.target = None  # type: ignore[assignment]  # let the weights be freed


def _check_steering(direction: Any, alpha: Any, layer: Any, ablate: Any,
                    orthogonalize: Any) -> None:
    """Refuse inconsistent steering model args with one sentence, before anything is loaded."""
    for name, value in (("ablate", ablate), ("orthogonalize", orthogonalize)):
        if value is not None and not isinstance(value, bool):
            raise UserError(f"-M {name} takes true or false, got {value!r}.")
    modes = [name for name, on in (("alpha", alpha is not None), ("ablate", bool(ablate)),
                                   ("orthogonalize", bool(orthogonalize))) if on]
    if direction is None:
        if modes or layer is not None:
            raise UserError("-M alpha, layer, ablate and orthogonalize steer along a "
                            "-M direction=PATH; give one.")
        return
    if len(modes) != 1:
        raise UserError("with -M direction give exactly one of -M alpha=A, -M ablate=true or "
                        "-M orthogonalize=true.")
    if layer is not None and alpha is None:
        raise UserError("-M layer applies to -M alpha only; ablation and orthogonalization act "
                        "at every layer.")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
        raise UserError(f"-M layer takes a layer number, got {layer!r}.")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, int | float)):
        raise UserError(f"-M alpha takes a number, got {alpha!r}.")


def _intervene(
    target: WhiteBoxTarget, *, direction: Any, alpha: Any, layer: Any, ablate: Any,
    orthogonalize: Any,
) -> tuple[WhiteBoxTarget, dict | None, Callable[[], AbstractContextManager]]:
    """The target to generate with, a JSON-able description of the intervention, and the context
    entered around every generation. Hooks are tried once here, so a bad layer fails now."""
    if direction is None:
        return target, None, nullcontext
    from alignparadox.attacks.model_tinkering import (
        ActivationAddition,
        DirectionalAblation,
        WeightOrthogonalization,
    )
    from alignparadox.geometry import Direction
    from alignparadox.hooks import orthogonalize as orthogonalize_weights

    loaded = Direction.load(direction)
    attack = (ActivationAddition(loaded, alpha=float(alpha), layer=layer) if alpha is not None
              else DirectionalAblation(loaded) if ablate else WeightOrthogonalization(loaded))
    attack.check(target)  # made on this model, of this width
    described = {"attack": attack.name, "direction": str(direction), "method": loaded.method,
                 "direction_layer": loaded.layer, "model_hash": loaded.model_hash}
    if isinstance(attack, ActivationAddition):
        described |= {"alpha": attack.alpha, "layer": attack.steering_layer,
                      "coefficient": attack.coefficient}
    if isinstance(attack, WeightOrthogonalization):
        # In place, not `attack.applied` (a deep copy): this provider owns its freshly loaded
        # model, and a second copy of a 7B model would double the memory needed.
        edited = orthogonalize_weights(target.model, loaded.vector)
        return (WhiteBoxTarget(edited, target.tokenizer, f"{target.name}+orthogonalized"),
                described, nullcontext)
    with attack.applied(target):
        pass
    return target, described, lambda: attack.applied(target)


def _message(message: ChatMessage) -> dict:
    if isinstance(message.content, list) and any(part.type != "text"
                                                 for part in message.content):
        raise UserError("alignparadox/ targets read text only; a message has "
                        f"{', '.join(sorted({p.type for p in message.content}))} content.")
    if message.role == "tool":
        raise UserError("alignparadox/ targets cannot call tools; a message is a tool result.")
    return {"role": message.role, "content": message.text}


def _decoding(config: GenerateConfig) -> tuple[GenerationConfig, int, list[str]]:
    """The target's decoding settings, the number of answers, and the stop sequences."""
    for field, neutral in _UNSUPPORTED.items():
        if getattr(config, field) not in neutral:
            raise UserError(f"the alignparadox/ provider does not support {field}="
                            f"{getattr(config, field)!r}.")
    choices = config.num_choices or 1
    temperature = config.temperature or 0.0
    seed = config.seed if config.seed is not None else secrets.randbits(63)
    decoding = GenerationConfig(
        max_new_tokens=config.max_tokens or DEFAULT_MAX_TOKENS, do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else 1.0,
        top_p=config.top_p if config.top_p is not None else 1.0,
        seed=seed % (1 << 63) if temperature > 0 else 0, batch_size=choices)
    return decoding, choices, [stop for stop in config.stop_seqs or [] if stop]


def _stopped(generation: Generation, decoding: GenerationConfig,
             stops: list[str]) -> tuple[str, StopReason]:
    """The answer cut before its first stop sequence, and why it ended."""
    text = generation.text
    cuts = [index for index in (text.find(stop) for stop in stops) if index >= 0]
    if cuts:
        return text[:min(cuts)], "stop"
    if generation.finish_reason == "stop":
        return text, "stop"
    # Ended by length: the token budget, or the model's context when it came first.
    full = len(generation.token_ids) >= decoding.max_new_tokens
    return text, "max_tokens" if full else "model_length"
