"""`paradox serve`: any white-box target behind an OpenAI-compatible chat API on 127.0.0.1.

Black-box attack code, peer tools and judges can then talk to an organism or a local checkpoint
exactly as they talk to a hosted model. Endpoints: `POST /v1/chat/completions` (non-streaming and
SSE streaming, n=1) and `GET /v1/models`. With `--direction`, a saved steering direction is added
(`--alpha`) or ablated (`--ablate`) in every generation, by the model-tinkering attacks' own hooks.

Concurrency: requests are served by threads but generate one at a time, under a lock around the
model. Batching concurrent requests together would raise throughput, but it would make an answer
depend on which other requests happened to share its batch (padding changes floating-point sums,
and a shared sampling stream changes samples). An auditing tool needs the answer to a request —
seed included — to be a function of that request alone. Callers that need throughput should call
`WhiteBoxTarget.generate` in-process with many prompts, which batches.

The standard library's ThreadingHTTPServer is enough for a local, single-model server and adds no
dependency.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from alignparadox.errors import UserError

if TYPE_CHECKING:
    from alignparadox.targets.whitebox import GenerationConfig, WhiteBoxTarget

logger = logging.getLogger("alignparadox.serve")

GenerationContext = Callable[[], AbstractContextManager]
_MAX_BODY_BYTES = 16 << 20
# Request fields whose non-default values would change the answer in ways this server does not
# implement: refuse them instead of silently ignoring them.
_UNSUPPORTED = {
    "stop": (None, "", []),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "tools": (None, []),
    "logit_bias": (None, {}),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "response_format": (None, {"type": "text"}),
}


class ChatServer(ThreadingHTTPServer):
    """An HTTP server for one target. `generation_context`, if given, is a zero-argument callable
    returning a context manager that is entered around every generation while the model lock is
    held — the place for an intervention such as a steering hook that must only be active for
    this server's generations."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        target: WhiteBoxTarget,
        *,
        generation_context: GenerationContext | None = None,
        default_max_tokens: int = 512,
    ) -> None:
        super().__init__(address, _ChatHandler)
        self.target = target
        self.generation_context = generation_context or contextlib.nullcontext
        self.default_max_tokens = default_max_tokens
        self.model_lock = threading.Lock()
        self.created = int(time.time())

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


def make_server(
    target: WhiteBoxTarget,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    generation_context: GenerationContext | None = None,
    default_max_tokens: int = 512,
) -> ChatServer:
    """Bind a server for `target` (port 0 picks a free port; see `server.base_url`). Run it with
    `server.serve_forever()`, in a thread if you like; stop with `shutdown()` + `server_close()`."""
    try:
        return ChatServer((host, port), target, generation_context=generation_context,
                          default_max_tokens=default_max_tokens)
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror or error}.") from error


def steering_context(target: WhiteBoxTarget, direction: str | Path, *, alpha: float | None = None,
                     ablate: bool = False, layer: int | None = None) -> GenerationContext:
    """A `generation_context` that steers `target` along a saved direction (from `paradox
    directions fit`): adds alpha × mean residual norm × direction, or ablates the direction.

    Everything is checked here, before the server starts: the direction must have been made on
    this model, and the hooks are applied once so that a bad layer fails now, not per request.
    """
    from alignparadox.attacks.model_tinkering import ActivationAddition, DirectionalAblation
    from alignparadox.geometry import Direction
    from alignparadox.hooks import residual_layout

    _check_steering(direction, alpha, ablate, layer)
    loaded = Direction.load(direction, model_hash=target.weight_hash,
                            d_model=residual_layout(target.model).d_model)
    attack = (DirectionalAblation(loaded) if ablate
              else ActivationAddition(loaded, alpha=alpha, layer=layer))
    with attack.applied(target):
        pass
    return lambda: attack.applied(target)


def _check_steering(direction: str | Path | None, alpha: float | None, ablate: bool,
                    layer: int | None) -> None:
    if direction is None:
        if alpha is not None or ablate or layer is not None:
            raise UserError("--alpha, --ablate and --layer steer along a --direction; give one.")
        return
    if (alpha is None) == (not ablate):
        raise UserError("with --direction give exactly one of --alpha A or --ablate.")
    if ablate and layer is not None:
        raise UserError("--layer applies to --alpha only; ablation acts at every layer.")


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class _ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer
    protocol_version = "HTTP/1.1"  # keep-alive for JSON replies; SSE uses chunked encoding

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        logger.info("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        card = {"id": self.server.target.name, "object": "model",
                "created": self.server.created, "owned_by": "alignparadox"}
        if path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [card]})
        elif path == f"/v1/models/{self.server.target.name}":
            self._send_json(200, card)
        else:
            self._send_error(404, f"no route GET {path}", "not_found_error")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path != "/v1/chat/completions":
            self.close_connection = True  # the unread body must not be parsed as a request
            self._send_error(404, f"no route POST {path}", "not_found_error")
            return
        try:
            request = self._read_json()
            messages, config, stream, include_usage = _parse_chat_request(
                request, self.server.default_max_tokens)
        except _BadRequest as error:
            self.close_connection = error.status in (411, 413)  # body left unread
            self._send_error(error.status, str(error))
            return
        except UserError as error:
            self._send_error(400, str(error))
            return
        target = self.server.target
        with self.server.model_lock, self.server.generation_context():
            try:
                reply = _Reply(target.name, len(target.token_ids(messages)))
            except UserError as error:  # template rejects the messages, or prompt too long
                self._send_error(400, str(error))
                return
            if stream:
                self._stream(reply, messages, config, include_usage)
                return
            try:
                generation = target.complete([messages], config)[0]
            except Exception:
                logger.exception("generation failed")
                self._send_error(500, "generation failed; see the server log", "server_error")
                return
            self._send_json(200, reply.completion(generation))

    def _stream(self, reply: _Reply, messages: list[dict], config: GenerationConfig,
                include_usage: bool) -> None:
        text_stream = self.server.target.stream(messages, config)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self._send_event(reply.chunk({"role": "assistant", "content": ""}))
            for piece in text_stream:
                self._send_event(reply.chunk({"content": piece}))
            generation = text_stream.generation
            self._send_event(reply.chunk({}, finish_reason=generation.finish_reason))
            if include_usage:
                self._send_event(reply.usage_chunk(generation))
            self._send_chunk(b"data: [DONE]\n\n")
            self._send_chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            logger.info("%s went away; generation stopped", self.address_string())
            self.close_connection = True
        except Exception:  # the status line is sent already: log it and cut the stream short
            logger.exception("generation failed")
            self.close_connection = True
        finally:
            text_stream.close()

    def _read_json(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise _BadRequest("the request needs a Content-Length header", 411)
        if int(length) > _MAX_BODY_BYTES:
            raise _BadRequest(f"the request body is larger than {_MAX_BODY_BYTES} bytes", 413)
        try:
            body = json.loads(self.rfile.read(int(length)))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise _BadRequest(f"the request body is not valid JSON: {error}") from error
        if not isinstance(body, dict):
            raise _BadRequest("the request body must be a JSON object")
        return body

    def _send_json(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, status: int, message: str,
                    kind: str = "invalid_request_error") -> None:
        self._send_json(status, {"error": {"message": message, "type": kind,
                                           "param": None, "code": None}})

    def _send_event(self, payload: dict) -> None:
        self._send_chunk(f"data: {json.dumps(payload)}\n\n".encode())

    def _send_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


class _Reply:
    """OpenAI response bodies for one completion."""

    def __init__(self, model: str, prompt_tokens: int) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.prompt_tokens = prompt_tokens

    def _usage(self, generation) -> dict:
        completion_tokens = len(generation.token_ids)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def completion(self, generation) -> dict:
        return {
            "id": self.id, "object": "chat.completion", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "finish_reason": generation.finish_reason, "logprobs": None,
                         "message": {"role": "assistant", "content": generation.text}}],
            "usage": self._usage(generation),
        }

    def chunk(self, delta: dict, finish_reason: str | None = None) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                             "logprobs": None}]}

    def usage_chunk(self, generation) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [], "usage": self._usage(generation)}


def _parse_chat_request(
    request: dict, default_max_tokens: int
) -> tuple[list[dict], GenerationConfig, bool, bool]:
    """Messages, decoding settings, stream flag and include-usage flag of a chat request.
    Temperature 0 means greedy; a request without a seed gets a fresh random one, as with the
    OpenAI API, so repeated sampled requests differ unless the caller fixes the seed."""
    from alignparadox.targets.whitebox import GenerationConfig

    for field, neutral in _UNSUPPORTED.items():
        if request.get(field) not in neutral:
            raise _BadRequest(f"{field!r} is not supported by this server")
    if request.get("n", 1) != 1:
        raise _BadRequest("only n=1 is supported")
    messages = _parse_messages(request.get("messages"))
    max_tokens = request.get("max_completion_tokens", request.get("max_tokens"))
    max_tokens = default_max_tokens if max_tokens is None else max_tokens
    temperature = _number(request, "temperature", 1.0, low=0.0, high=2.0)
    top_p = _number(request, "top_p", 1.0, low=0.0, high=1.0)
    seed = request.get("seed")
    seed = secrets.randbits(63) if seed is None else seed
    if not _is_int(max_tokens) or max_tokens < 1:
        raise _BadRequest("max_tokens must be a positive integer")
    if not _is_int(seed):
        raise _BadRequest("seed must be an integer")
    if top_p == 0:
        raise _BadRequest("top_p must be greater than 0")
    stream = request.get("stream", False)
    if not isinstance(stream, bool):
        raise _BadRequest("stream must be true or false")
    options = request.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    config = GenerationConfig(max_new_tokens=max_tokens, do_sample=temperature > 0,
                              temperature=temperature if temperature > 0 else 1.0,
                              top_p=top_p, seed=seed % (1 << 63), batch_size=1)
    return messages, config, stream, include_usage


def _parse_messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("messages must be a non-empty list")
    parsed = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _BadRequest("each message must be an object with a string 'role'")
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text parts are meaningful here
            if any(not isinstance(part, dict) or part.get("type") != "text" for part in content):
                raise _BadRequest("only text content parts are supported")
            content = "".join(str(part.get("text", "")) for part in content)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise _BadRequest("message content must be a string or a list of text parts")
        parsed.append({"role": message["role"], "content": content})
    return parsed


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(request: dict, field: str, default: float, *, low: float, high: float) -> float:
    value = request.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _BadRequest(f"{field} must be a number in [{low:g}, {high:g}]")
    return float(value)


def serve(
    spec: str = typer.Argument(
        ..., help="Target: organism:NAME, a local Hugging Face model folder, or a Hub id."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on (0 picks a free one)."),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:N or mps (default: best)."),
    dtype: str | None = typer.Option(None, help="bf16, fp16 or fp32 (default: by device)."),
    chat_template: str | None = typer.Option(
        None, help="Chat template (Jinja file or template string) replacing the tokenizer's."),
    allow_pickle: bool = typer.Option(
        False, help="Allow pickle (*.bin) weights, which can run code when loaded."),
    trust_remote_code: bool = typer.Option(
        False, help="Run the model repository's own Python code."),
    max_tokens: int = typer.Option(512, help="Answer length when a request sets no max_tokens."),
    direction: Path | None = typer.Option(
        None, help="Steer every answer along this saved direction (.json or .safetensors, from "
        "`paradox directions fit`); needs --alpha or --ablate."),
    alpha: float | None = typer.Option(
        None, help="With --direction: add alpha × mean residual norm × direction."),
    ablate: bool = typer.Option(
        False, "--ablate", help="With --direction: project the direction out at every layer."),
    layer: int | None = typer.Option(
        None, help="With --alpha: layer to add at (default: the direction's own layer)."),
) -> None:
    """Serve a white-box target over an OpenAI-compatible chat API (one generation at a time)."""
    from rich.console import Console

    from alignparadox.targets.whitebox import open_target

    console = Console(stderr=True)
    if max_tokens < 1:
        raise UserError(f"--max-tokens must be at least 1, got {max_tokens}.")
    _check_steering(direction, alpha, ablate, layer)  # before a possibly long model load
    target = open_target(spec, device=device, dtype=dtype, chat_template=chat_template,
                         allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    steering = (steering_context(target, direction, alpha=alpha, ablate=ablate, layer=layer)
                if direction is not None else None)
    server = make_server(target, host, port, generation_context=steering,
                         default_max_tokens=max_tokens)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/yellow] listening on {host}: anyone who can reach it "
                      "can query the model.")
    steered = ("" if direction is None else f", ablating {direction}" if ablate
               else f", steered along {direction} with alpha {alpha:g}")
    console.print(f"serving [bold]{target.name}[/bold] ({target.device}, {target.model.dtype}"
                  f"{steered}) at {server.base_url} — Ctrl-C to stop", highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped.")
    finally:
        server.server_close()
