"""The OpenAI wire format of `paradox serve`: request validation and response bodies.

Every request is checked completely before anything is generated. A field that would change the
answer in a way this server does not implement (tools, penalties, logit bias, JSON mode, ...) is
refused with a 400 that names it, never silently ignored; fields that do not change the answer
(`user`, `metadata`, `store`, `parallel_tool_calls`, ...) are accepted and ignored. Status codes,
error types and codes follow OpenAI: 400 `invalid_request_error`, 404 `model_not_found`.
`/v1/responses` (the Responses API) is stricter still: any field not known here is refused.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from alignparadox.errors import UserError
from alignparadox.targets.batching import Completion, TokenLogprob
from alignparadox.targets.whitebox import GenerationConfig, WhiteBoxTarget

MAX_N = 32
MAX_TOP_LOGPROBS = 20
MAX_STOP_STRINGS = 64
_SEED_MODULUS = 1 << 63
# Request fields that change the answer in ways this server does not implement, with the values
# that mean "not used". Any other value is refused.
_UNSUPPORTED = {
    "tools": (None, []),
    "functions": (None, []),
    "logit_bias": (None, {}),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "top_k": (None, 0, -1),
    "min_p": (None, 0, 0.0),
    "prediction": (None,),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "web_search_options": (None,),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "echo": (None, False),
}
_ROLES = ("system", "assistant", "user", "function", "tool", "developer")


class ApiError(Exception):
    """A request refused with an OpenAI-style error body."""

    def __init__(self, message: str, status: int = 400, *, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param,
                          "code": self.code}}


@dataclass(frozen=True)
class Plan:
    """What to generate for one request: prompts (token ids), `n` choices per prompt, the
    decoding settings of choice i of each prompt in `configs[i]`, stop strings, and what to
    report. Choice index k of the response is prompt k // n, choice k % n."""

    prompts: list[list[int]]
    configs: list[GenerationConfig]
    stop: tuple[str, ...]
    logprobs: bool
    top_logprobs: int
    stream: bool
    include_usage: bool

    @property
    def n(self) -> int:
        return len(self.configs)


def check_model(request: dict, served: str) -> None:
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError("you must provide a model parameter (the served model is "
                       f"{served!r}; see GET /v1/models)", param="model")
    if model != served:
        raise ApiError(f"The model `{model}` does not exist; this server serves {served!r}.",
                       404, param="model", code="model_not_found")


def plan_chat(request: dict, target: WhiteBoxTarget, default_max_tokens: int) -> Plan:
    """Validate a `/v1/chat/completions` body and tokenize its conversation."""
    check_model(request, target.name)
    _check_unsupported(request)
    _check_response_format(request.get("response_format"))
    if request.get("tool_choice") not in (None, "none", "auto"):
        raise ApiError("tool_choice is not supported: this server has no tools",
                       param="tool_choice")
    messages = parse_messages(request.get("messages"))
    logprobs = request.get("logprobs") or False
    if not isinstance(logprobs, bool):
        raise ApiError("logprobs must be true or false", param="logprobs")
    top = request.get("top_logprobs") or 0
    if not _is_int(top) or not 0 <= top <= MAX_TOP_LOGPROBS:
        raise ApiError(f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}]",
                       param="top_logprobs")
    if top and not logprobs:
        raise ApiError("top_logprobs needs logprobs set to true", param="top_logprobs")
    max_tokens = request.get("max_completion_tokens")
    name = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, name = request.get("max_tokens"), "max_tokens"
    configs = _configs(request, default_max_tokens if max_tokens is None else max_tokens, name)
    prompt = _tokenize(lambda: target.token_ids(messages))
    return Plan([prompt], configs, _stop(request.get("stop")), logprobs, top,
                *_stream(request))


def plan_completion(request: dict, target: WhiteBoxTarget, default_max_tokens: int) -> Plan:
    """Validate a legacy `/v1/completions` body (raw text in, no chat template)."""
    check_model(request, target.name)
    _check_unsupported(request)
    logprobs = request.get("logprobs")
    if logprobs is not None and (not _is_int(logprobs) or not 0 <= logprobs <= 5):
        raise ApiError("logprobs must be an integer in [0, 5] for completions",
                       param="logprobs")
    max_tokens = request.get("max_tokens")
    configs = _configs(request, default_max_tokens if max_tokens is None else max_tokens,
                       "max_tokens")
    prompts = [_tokenize(lambda p=p: _prompt_ids(target, p)) for p in _prompts(request)]
    return Plan(prompts, configs, _stop(request.get("stop")), logprobs is not None,
                logprobs or 0, *_stream(request))


def parse_messages(messages: Any) -> list[dict]:
    """Messages as the chat template takes them. `developer` (OpenAI's newer name for the
    system turn) becomes `system`; a role the template does not know is refused, because
    templates tend to render any other role as an assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages must be a non-empty list", param="messages")
    parsed = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError("each message must be an object with a string 'role'", param=where)
        role = message["role"]
        if role not in _ROLES:
            raise ApiError(f"Invalid value: {role!r}. Supported values are: 'system', "
                           "'assistant', 'user', and 'developer'.", param=f"{where}.role",
                           code="invalid_value")
        if role in ("tool", "function") or message.get("tool_calls") \
                or message.get("function_call"):
            raise ApiError("tool and function messages are not supported: this server has no "
                           "tools", param=where)
        parsed.append({"role": "system" if role == "developer" else role,
                       "content": _content(message.get("content"), where)})
    return parsed


def _content(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text parts are meaningful here
        if any(not isinstance(part, dict) or part.get("type") != "text" for part in content):
            raise ApiError("only text content parts are supported", param=f"{where}.content")
        return "".join(str(part.get("text", "")) for part in content)
    raise ApiError("message content must be a string or a list of text parts",
                   param=f"{where}.content")


def _check_unsupported(request: dict) -> None:
    for name, neutral in _UNSUPPORTED.items():
        if request.get(name) not in neutral:
            raise ApiError(f"{name!r} is not supported by this server", param=name,
                           code="unsupported_parameter")


def _check_response_format(response_format: Any, param: str = "response_format") -> None:
    """Only plain text. JSON mode is refused here, before anything is generated: this server
    cannot constrain decoding to JSON, and unconstrained text labelled as JSON would fail
    later, far from its cause (e.g. in a scorer's JSON parser)."""
    kind = response_format.get("type") if isinstance(response_format, dict) else response_format
    if response_format is None or kind == "text":
        return
    raise ApiError(f"{param} {kind!r} is not supported: paradox serve cannot "
                   f"constrain generation to JSON; send requests without {param} "
                   "(e.g. use a scorer that parses free text)", param=param,
                   code="unsupported_parameter")


def _configs(request: dict, max_tokens: Any, max_name: str) -> list[GenerationConfig]:
    """One config per choice. Temperature 0 is greedy. A request without a seed gets a fresh
    random one, as with the OpenAI API; choice i is sampled with seed + i, so choices differ
    while the request as a whole is reproducible."""
    n = request.get("n")
    n = 1 if n is None else n
    if not _is_int(n) or not 1 <= n <= MAX_N:
        raise ApiError(f"n must be an integer in [1, {MAX_N}]", param="n")
    if not _is_int(max_tokens) or max_tokens < 1:
        raise ApiError(f"{max_name} must be a positive integer", param=max_name)
    temperature = _number(request, "temperature", 1.0, low=0.0, high=2.0)
    top_p = _number(request, "top_p", 1.0, low=0.0, high=1.0)
    if top_p == 0:
        raise ApiError("top_p must be greater than 0", param="top_p")
    seed = request.get("seed")
    if seed is not None and not _is_int(seed):
        raise ApiError("seed must be an integer", param="seed")
    seed = secrets.randbits(63) if seed is None else seed
    return [GenerationConfig(max_new_tokens=max_tokens, do_sample=temperature > 0,
                             temperature=temperature if temperature > 0 else 1.0, top_p=top_p,
                             seed=(seed + choice) % _SEED_MODULUS, batch_size=1)
            for choice in range(n)]


def _stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or any(not isinstance(item, str) for item in stops):
        raise ApiError("stop must be a string or a list of strings", param="stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise ApiError(f"stop takes at most {MAX_STOP_STRINGS} strings", param="stop")
    return tuple(dict.fromkeys(item for item in stops if item))


def _stream(request: dict) -> tuple[bool, bool]:
    stream = request.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError("stream must be true or false", param="stream")
    options = request.get("stream_options") or {}
    return bool(stream), bool(isinstance(options, dict) and options.get("include_usage"))


def _prompts(request: dict) -> list[str | list[int]]:
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(_is_int(item) for item in prompt):
            return [prompt]
        if all(isinstance(item, str) for item in prompt) or all(
                isinstance(item, list) and item and all(_is_int(i) for i in item)
                for item in prompt):
            return prompt
    raise ApiError("prompt must be a string, a list of strings, a list of token ids or a "
                   "list of such lists", param="prompt")


def _prompt_ids(target: WhiteBoxTarget, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        return target.token_ids(prompt, chat=False)
    vocabulary = len(target.tokenizer)
    if any(not 0 <= token < vocabulary for token in prompt):
        raise UserError(f"a prompt token id is outside the vocabulary (0..{vocabulary - 1}).")
    if target.context_length is not None and len(prompt) > target.context_length:
        raise UserError(f"a prompt is {len(prompt)} tokens long, more than the "
                        f"{target.context_length}-token context of {target.name!r}.")
    return list(prompt)


def _tokenize(tokenize: Callable[[], list[int]], param: str = "messages") -> list[int]:
    try:
        return tokenize()
    except UserError as error:  # the template rejects the messages, or the prompt is too long
        code = "context_length_exceeded" if "context" in str(error) else None
        raise ApiError(str(error), param=param, code=code) from error


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(request: dict, name: str, default: float, *, low: float, high: float) -> float:
    value = request.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ApiError(f"{name} must be a number in [{low:g}, {high:g}]", param=name)
    return float(value)


# -- /v1/responses ---------------------------------------------------------------------------

# The Responses API fields this server honours, those it accepts because they cannot change the
# answer, and those it accepts only at their "not used" values. Any other field is refused with a
# 400 that names it: the Responses API grows quickly, and a new field silently ignored would make
# an audit measure something other than what was asked.
_RESPONSES_HONOURED = {"model", "input", "instructions", "max_output_tokens", "temperature",
                       "top_p", "top_logprobs", "include", "stream", "seed", "text"}
_RESPONSES_IGNORED = {"store", "metadata", "user", "safety_identifier", "prompt_cache_key",
                      "prompt_cache_retention", "service_tier", "parallel_tool_calls",
                      "max_tool_calls", "stream_options"}
_RESPONSES_NEUTRAL = {
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "previous_response_id": (None,),
    "conversation": (None,),
    "prompt": (None,),
    "background": (None, False),
    "reasoning": (None, {}),
    "truncation": (None, "disabled"),
}
_RESPONSES_WHY = {
    "previous_response_id": "this server stores no responses; send the whole conversation "
                            "as input",
    "conversation": "this server stores no conversations; send the whole conversation as input",
    "background": "answers are generated during the request",
    "reasoning": "the served model has no reasoning options",
    "truncation": "a conversation longer than the context is refused, never cut",
    "tools": "this server has no tools",
    "tool_choice": "this server has no tools",
}
LOGPROBS_INCLUDE = "message.output_text.logprobs"


def plan_responses(request: dict, target: WhiteBoxTarget, default_max_tokens: int) -> Plan:
    """Validate a `/v1/responses` body (OpenAI's Responses API, text in and text out) and
    tokenize its input. `instructions` is a system turn before the input; `developer` and
    `system` input messages are system turns. Everything else that could change the answer
    and is not implemented is refused, all such fields named in one 400."""
    check_model(request, target.name)
    known = _RESPONSES_HONOURED | _RESPONSES_IGNORED | set(_RESPONSES_NEUTRAL)
    refused = sorted(name for name in request if name not in known)
    refused += [name for name, neutral in _RESPONSES_NEUTRAL.items()
                if request.get(name) not in neutral]
    if refused:
        reasons = "; ".join(f"{name}: {_RESPONSES_WHY[name]}" for name in refused
                            if name in _RESPONSES_WHY)
        raise ApiError(f"unsupported parameter{'s' if len(refused) > 1 else ''} "
                       f"{', '.join(map(repr, refused))}: paradox serve does not implement "
                       f"{'them' if len(refused) > 1 else 'it'}"
                       + (f" ({reasons})" if reasons else ""), param=refused[0],
                       code="unsupported_parameter")
    text = request.get("text")
    if text is not None:
        if not isinstance(text, dict):
            raise ApiError("text must be an object", param="text")
        unknown = sorted(set(text) - {"format", "verbosity"})
        if unknown:
            raise ApiError(f"text.{unknown[0]} is not supported by this server",
                           param=f"text.{unknown[0]}", code="unsupported_parameter")
        _check_response_format(text.get("format"), "text.format")
        if text.get("verbosity") not in (None, "medium"):
            raise ApiError("text.verbosity other than 'medium' is not supported: the served "
                           "model has no verbosity control", param="text.verbosity",
                           code="unsupported_parameter")
    include = request.get("include") or []
    if not isinstance(include, list) or any(not isinstance(item, str) for item in include):
        raise ApiError("include must be a list of strings", param="include")
    top = request.get("top_logprobs") or 0
    if not _is_int(top) or not 0 <= top <= MAX_TOP_LOGPROBS:
        raise ApiError(f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}]",
                       param="top_logprobs")
    messages = response_messages(request.get("input"), request.get("instructions"))
    max_tokens = request.get("max_output_tokens")
    settings = {name: request.get(name) for name in ("temperature", "top_p", "seed")}
    configs = _configs(settings, default_max_tokens if max_tokens is None else max_tokens,
                       "max_output_tokens")
    prompt = _tokenize(lambda: target.token_ids(messages), "input")
    stream, _ = _stream({"stream": request.get("stream")})
    return Plan([prompt], configs, (), LOGPROBS_INCLUDE in include or top > 0, top, stream,
                False)


def response_messages(items: Any, instructions: Any = None) -> list[dict]:
    """Chat-template messages from a Responses API `input` (a string, or a list of message
    items whose content is a string or text parts) and `instructions`."""
    messages = []
    if instructions is not None:
        if not isinstance(instructions, str):
            raise ApiError("instructions must be a string", param="instructions")
        messages.append({"role": "system", "content": instructions})
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise ApiError("input must be a string or a non-empty list of messages", param="input")
    for index, item in enumerate(items):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise ApiError("each input item must be an object", param=where)
        kind = item.get("type", "message")
        if kind != "message":
            raise ApiError(f"input items of type {kind!r} are not supported: this server takes "
                           "messages only (no tools, reasoning or item references)",
                           param=f"{where}.type", code="unsupported_parameter")
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise ApiError(f"Invalid value: {role!r}. Supported values are: 'user', "
                           "'assistant', 'system', and 'developer'.", param=f"{where}.role",
                           code="invalid_value")
        messages.append({"role": "system" if role == "developer" else role,
                         "content": _response_content(item.get("content"), f"{where}.content")})
    return messages


def _response_content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError("message content must be a string or a list of text parts", param=where)
    pieces = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text") and isinstance(part.get("text"), str):
            pieces.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            pieces.append(part["refusal"])
        else:
            raise ApiError(f"content parts of type {kind!r} are not supported: only text "
                           "(input_text, output_text)", param=f"{where}[{index}]",
                           code="unsupported_parameter")
    return "".join(pieces)


# -- responses -------------------------------------------------------------------------------


class Reply:
    """Response bodies for one request: `chat` (chat.completion) or text_completion."""

    def __init__(self, target: WhiteBoxTarget, plan: Plan, *, chat: bool) -> None:
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = target.name
        self.plan, self.chat = plan, chat
        self.prompt_tokens = sum(len(prompt) for prompt in plan.prompts)
        self._token_text = _TokenText(target)

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def usage(self, completions: Sequence[Completion]) -> dict:
        completion_tokens = sum(len(done.token_ids) for done in completions)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def body(self, completions: Sequence[Completion]) -> dict:
        if self.chat:
            choices = [{"index": index, "finish_reason": done.finish_reason,
                        "logprobs": self.logprobs(done.logprobs),
                        "message": {"role": "assistant", "content": done.text,
                                    "refusal": None}}
                       for index, done in enumerate(completions)]
            return {**self._head("chat.completion"), "choices": choices,
                    "usage": self.usage(completions)}
        choices = [{"index": index, "text": done.text, "finish_reason": done.finish_reason,
                    "logprobs": self.logprobs(done.logprobs)}
                   for index, done in enumerate(completions)]
        return {**self._head("text_completion"), "choices": choices,
                "usage": self.usage(completions)}

    def chunk(self, index: int, *, text: str | None = None, role: bool = False,
              done: Completion | None = None, logprobs: list[TokenLogprob] | None = None
              ) -> dict:
        """One streamed event for choice `index`: its opening (role), a text piece, or its end."""
        finish = done.finish_reason if done is not None else None
        if not self.chat:
            choice = {"index": index, "text": text or "", "finish_reason": finish,
                      "logprobs": self.logprobs(logprobs)}
            return {**self._head("text_completion"), "choices": [choice]}
        delta: dict = {"role": "assistant", "content": ""} if role else {}
        if text is not None:
            delta["content"] = text
        choice = {"index": index, "delta": delta, "finish_reason": finish,
                  "logprobs": self.logprobs(logprobs)}
        return {**self._head("chat.completion.chunk"), "choices": [choice]}

    def usage_chunk(self, completions: Sequence[Completion]) -> dict:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(kind), "choices": [], "usage": self.usage(completions)}

    def logprobs(self, logprobs: list[TokenLogprob] | None) -> dict | None:
        if logprobs is None:
            return None
        text = self._token_text
        if self.chat:
            return {"content": [{**text.entry(item.token_id, item.logprob),
                                 "top_logprobs": [text.entry(token, value)
                                                  for token, value in item.top]}
                                for item in logprobs], "refusal": None}
        tokens = [text(item.token_id) for item in logprobs]
        offsets, offset = [], 0
        for token in tokens:
            offsets.append(offset)
            offset += len(token)
        return {"tokens": tokens, "token_logprobs": [item.logprob for item in logprobs],
                "top_logprobs": ([{text(token): value for token, value in item.top}
                                  for item in logprobs] if self.plan.top_logprobs else None),
                "text_offset": offsets}


class ResponsesReply:
    """The `response` object of `/v1/responses` and its streamed events, for one answer (the
    Responses API has no `n`). An answer cut by max_output_tokens is `incomplete`, with
    `incomplete_details.reason` "max_output_tokens", as OpenAI reports it."""

    def __init__(self, target: WhiteBoxTarget, plan: Plan, request: dict) -> None:
        self.id = f"resp_{uuid.uuid4().hex}"
        self.item_id = f"msg_{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = target.name
        self.plan, self.request = plan, request
        self.prompt_tokens = len(plan.prompts[0])
        self._token_text = _TokenText(target)
        self._sequence = 0

    def body(self, completions: Sequence[Completion]) -> dict:
        (done,) = completions
        incomplete = done.finish_reason == "length"
        output_tokens = len(done.token_ids)
        return {**self._response("incomplete" if incomplete else "completed"),
                "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
                "output": [self._item(done)],
                "usage": {"input_tokens": self.prompt_tokens,
                          "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                          "output_tokens": output_tokens,
                          "output_tokens_details": {"reasoning_tokens": 0},
                          "total_tokens": self.prompt_tokens + output_tokens}}

    def _response(self, status: str) -> dict:
        config = self.plan.configs[0]
        request = self.request
        return {"id": self.id, "object": "response", "created_at": self.created,
                "status": status, "error": None, "incomplete_details": None,
                "instructions": request.get("instructions"),
                "max_output_tokens": request.get("max_output_tokens"), "model": self.model,
                "output": [], "parallel_tool_calls": bool(request.get("parallel_tool_calls",
                                                                      True)),
                "temperature": config.temperature if config.do_sample else 0.0,
                "top_p": config.top_p, "top_logprobs": self.plan.top_logprobs,
                "tool_choice": request.get("tool_choice") or "auto", "tools": [],
                "text": {"format": {"type": "text"}, "verbosity": "medium"},
                "truncation": "disabled", "store": False, "background": False,
                "reasoning": None, "previous_response_id": None,
                "metadata": request.get("metadata") or {}, "user": request.get("user"),
                "usage": None}

    def _item(self, done: Completion | None) -> dict:
        status = ("in_progress" if done is None else
                  "incomplete" if done.finish_reason == "length" else "completed")
        return {"id": self.item_id, "type": "message", "status": status, "role": "assistant",
                "content": [] if done is None else [self._part(done.text, done.logprobs)]}

    def _part(self, text: str, logprobs: list[TokenLogprob] | None) -> dict:
        return {"type": "output_text", "text": text, "annotations": [],
                "logprobs": self.logprobs(logprobs)}

    def logprobs(self, logprobs: list[TokenLogprob] | None) -> list[dict]:
        text = self._token_text
        return [{**text.entry(item.token_id, item.logprob),
                 "top_logprobs": [text.entry(token, value) for token, value in item.top]}
                for item in logprobs or []]

    # streamed events, in OpenAI's order -------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> dict:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def opening(self) -> list[dict]:
        at = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        return [self._event("response.created", response=self._response("in_progress")),
                self._event("response.in_progress", response=self._response("in_progress")),
                self._event("response.output_item.added", output_index=0,
                            item=self._item(None)),
                self._event("response.content_part.added", **at, part=self._part("", None))]

    def delta(self, text: str) -> dict:
        return self._event("response.output_text.delta", item_id=self.item_id, output_index=0,
                           content_index=0, delta=text, logprobs=[])

    def closing(self, done: Completion) -> list[dict]:
        at = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        final = self.body([done])
        return [self._event("response.output_text.done", **at, text=done.text,
                            logprobs=self.logprobs(done.logprobs)),
                self._event("response.content_part.done", **at,
                            part=self._part(done.text, done.logprobs)),
                self._event("response.output_item.done", output_index=0, item=self._item(done)),
                self._event(f"response.{final['status']}", response=final)]

    def failure(self) -> dict:
        return self._event("error", code="server_error", param=None,
                           message="generation failed; see the server log")


class _TokenText:
    """The text and bytes of single tokens, as logprobs report them. A byte-level token that
    holds part of a multi-byte character decodes to U+FFFD, but its `bytes` are its real bytes
    (byte-level BPE and `<0xNN>` byte-fallback tokens), so the bytes of an answer's tokens
    concatenate to the answer."""

    def __init__(self, target: WhiteBoxTarget) -> None:
        self._tokenizer = target.tokenizer
        decoder = getattr(getattr(target.tokenizer, "backend_tokenizer", None), "decoder", None)
        self._byte_level = "ByteLevel" in repr(decoder)
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token: int) -> str:
        return self._lookup(token)[0]

    def entry(self, token: int, logprob: float) -> dict:
        text, data = self._lookup(token)
        return {"token": text, "logprob": logprob, "bytes": data}

    def _lookup(self, token: int) -> tuple[str, list[int]]:
        if token not in self._cache:
            text = self._tokenizer.decode([token])
            self._cache[token] = (text, list(self._bytes(token, text)))
        return self._cache[token]

    def _bytes(self, token: int, text: str) -> bytes:
        piece = self._tokenizer.convert_ids_to_tokens(token)
        if isinstance(piece, str):
            if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
                return bytes([int(piece[3:5], 16)])
            if self._byte_level and all(char in _UNICODE_TO_BYTE for char in piece):
                return bytes(_UNICODE_TO_BYTE[char] for char in piece)
        return text.encode("utf-8")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-to-unicode table, inverted: how byte-level BPE writes each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[chr(byte)] = byte
        else:
            table[chr(256 + extra)] = byte
            extra += 1
    return table


_UNICODE_TO_BYTE = _byte_level_alphabet()
