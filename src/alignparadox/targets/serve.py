"""`paradox serve`: any white-box target behind an OpenAI-compatible API on 127.0.0.1.

Black-box attack code, peer tools (garak, PyRIT, Inspect, ...) and judges can then talk to an
organism or a local checkpoint exactly as they talk to a hosted model. Endpoints:
`POST /v1/chat/completions` and `POST /v1/completions` (raw text, for base-model tools), both
non-streaming and SSE streaming, with `n`, `stop`, `seed`, `logprobs`; `POST /v1/responses`
(OpenAI's Responses API, text only, streaming too); `GET /v1/models`. The wire
format and what is refused live in `serve_protocol`. With `--direction`, a saved steering
direction is added (`--alpha`) or ablated (`--ablate`) in every generation, by the
model-tinkering attacks' own hooks.

Concurrency: the HTTP side is Starlette on uvicorn (asyncio); all generation happens on one
worker thread that batches concurrent requests (`batching.BatchWorker`: continuous batching,
each row with its own positions, stop rule and seeded generator). Batching can change a greedy
answer by floating-point rounding (see `batching`); `--max-batch 1` decodes every request alone,
bit-identical to `WhiteBoxTarget.complete`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from alignparadox.errors import UserError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from alignparadox.targets.batching import Completion
    from alignparadox.targets.serve_protocol import Plan, Reply, ResponsesReply
    from alignparadox.targets.whitebox import WhiteBoxTarget

logger = logging.getLogger("alignparadox.serve")

GenerationContext = Callable[[], AbstractContextManager]
_MAX_BODY_BYTES = 16 << 20
_BACKLOG = 2048  # the standard library's 5 dropped connections under 32 clients


class ChatServer:
    """A bound HTTP server for one target. `generation_context`, if given, is a zero-argument
    callable returning a context manager entered around the generation worker's batches — the
    place for an intervention such as a steering hook that must only be active for this
    server's generations. Run with `serve_forever()` (in a thread if you like); stop with
    `shutdown()` and release the port and the worker with `server_close()`."""

    def __init__(self, sock: socket.socket, target: WhiteBoxTarget, *,
                 generation_context: GenerationContext | None = None,
                 default_max_tokens: int = 512, max_batch: int = 16,
                 batch_window: float = 0.005, worker_factory: Callable | None = None) -> None:
        import uvicorn

        from alignparadox.targets.batching import BatchWorker

        self.socket = sock
        self.target = target
        self.default_max_tokens = default_max_tokens
        # `worker_factory(target)`: another generation worker with BatchWorker's submit/close,
        # e.g. a defended system (`defenses.best_of_n.serving`).
        self.worker = (worker_factory(target) if worker_factory is not None else
                       BatchWorker(target, max_batch=max_batch, window=batch_window,
                                   generation_context=generation_context))
        self.created = int(time.time())
        config = uvicorn.Config(_app(self), log_config=None, lifespan="off",
                                timeout_graceful_shutdown=5, server_header=False)
        self._uvicorn = uvicorn.Server(config)
        self._running = threading.Lock()
        self._stopped = threading.Event()
        self._stopped.set()

    @property
    def base_url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"

    def serve_forever(self) -> None:
        with self._running:
            self._stopped.clear()
            try:
                self._uvicorn.run(sockets=[self.socket])
            finally:
                self._stopped.set()

    def shutdown(self, timeout: float = 30) -> None:
        self._uvicorn.should_exit = True
        self._stopped.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()
        self.worker.close()


def make_server(
    target: WhiteBoxTarget,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    generation_context: GenerationContext | None = None,
    default_max_tokens: int = 512,
    max_batch: int = 16,
    batch_window: float = 0.005,
    worker_factory: Callable | None = None,
) -> ChatServer:
    """Bind a server for `target` (port 0 picks a free port; see `server.base_url`).
    `max_batch` caps the rows decoded together (1: every request alone, bit-exact);
    `batch_window` is how long an idle worker waits for more requests to start a batch with."""
    try:
        sock = _listen(host, port)
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror or error}.") from error
    return ChatServer(sock, target, generation_context=generation_context,
                      default_max_tokens=default_max_tokens, max_batch=max_batch,
                      batch_window=batch_window, worker_factory=worker_factory)


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket. Its protocol is set to IPPROTO_TCP explicitly: accepted sockets
    inherit it, and asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets that say
    so. Otherwise every keep-alive reply, written as headers then body, waits ~40 ms for the
    client's delayed ACK."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                  proto=socket.IPPROTO_TCP)[0]
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _app(server: ChatServer):
    from starlette.applications import Starlette
    from starlette.routing import Route

    async def models(request: Request) -> Response:
        return _json(200, {"object": "list", "data": [_card(server)]})

    async def model(request: Request) -> Response:
        if request.path_params["name"] != server.target.name:
            return _error(404, f"The model `{request.path_params['name']}` does not exist.",
                          "model_not_found")
        return _json(200, _card(server))

    async def chat(request: Request) -> Response:
        return await _generate(server, request, kind="chat")

    async def completions(request: Request) -> Response:
        return await _generate(server, request, kind="completion")

    async def responses(request: Request) -> Response:
        return await _generate(server, request, kind="responses")

    async def not_found(request: Request, error: Exception) -> Response:
        return _error(404, f"no route {request.method} {request.url.path}", "not_found_error")

    async def not_allowed(request: Request, error: Exception) -> Response:
        return _error(405, f"{request.method} is not allowed on {request.url.path}",
                      "invalid_request_error")

    routes = [Route("/v1/models", models, methods=["GET"]),
              Route("/v1/models/{name:path}", model, methods=["GET"]),
              Route("/v1/chat/completions", chat, methods=["POST"]),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/responses", responses, methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})


def _card(server: ChatServer) -> dict:
    return {"id": server.target.name, "object": "model", "created": server.created,
            "owned_by": "alignparadox"}


async def _generate(server: ChatServer, request: Request, *, kind: str) -> Response:
    """A generation endpoint: `kind` is "chat", "completion" or "responses"."""
    from alignparadox.targets.serve_protocol import (
        ApiError,
        Reply,
        ResponsesReply,
        plan_chat,
        plan_completion,
        plan_responses,
    )

    planner = {"chat": plan_chat, "completion": plan_completion,
               "responses": plan_responses}[kind]
    try:
        body = await _read_json(request)
        plan = planner(body, server.target, server.default_max_tokens)
    except ApiError as error:  # logged, so that a peer tool's silent failures can be traced
        logger.info("refused %s %s (%s): %s", request.method, request.url.path, error.status,
                    error)
        return _json(error.status, error.body())
    reply = (ResponsesReply(server.target, plan, body) if kind == "responses"
             else Reply(server.target, plan, chat=kind == "chat"))
    if plan.stream:
        from starlette.responses import StreamingResponse

        events = (_stream_response(server, plan, reply) if kind == "responses"
                  else _stream(server, plan, reply))
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    jobs = _submit(server, plan)
    try:
        completions = [await asyncio.wrap_future(job.future) for job in jobs]
    except Exception:
        logger.exception("generation failed")
        return _error(500, "generation failed; see the server log", "server_error")
    finally:
        for job in jobs:
            if not job.future.done():
                job.cancel()
    return _json(200, reply.body(completions))


def _submit(server: ChatServer, plan: Plan, on_text=None) -> list:
    """One worker job per choice, in choice order (prompt-major)."""
    from alignparadox.targets.batching import Job

    jobs = []
    for prompt in plan.prompts:
        for config in plan.configs:
            index = len(jobs)
            jobs.append(Job(prompt, config, plan.stop, plan.logprobs, plan.top_logprobs,
                            None if on_text is None else
                            (lambda piece, index=index: on_text(index, piece))))
    for job in jobs:
        server.worker.submit(job)
    return jobs


async def _progress(server: ChatServer, plan: Plan) -> AsyncIterator[tuple[int, object]]:
    """Submit the plan's jobs and yield (choice index, text piece) as pieces become final and
    (choice index, Completion or failed Future) as choices end, until every choice has ended.
    Whatever still runs when the consumer stops (the client went away) is cancelled."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def post(index: int, item: str | Future) -> None:  # called from the worker thread
        with contextlib.suppress(RuntimeError):  # a closed loop: the server is stopping
            loop.call_soon_threadsafe(events.put_nowait, (index, item))

    jobs = _submit(server, plan, on_text=post)
    for index, job in enumerate(jobs):
        job.future.add_done_callback(lambda future, index=index: post(index, future))
    left = len(jobs)
    try:
        while left:
            index, item = await events.get()
            if isinstance(item, Future):
                if item.cancelled() or item.exception() is not None:
                    logger.error("generation failed", exc_info=item.exception())
                    yield index, item
                    return
                left -= 1
                item = item.result()
            yield index, item
    finally:
        for job in jobs:
            if not job.future.done():
                job.cancel()


async def _stream(server: ChatServer, plan: Plan, reply: Reply) -> AsyncIterator[str]:
    """SSE events: each choice's opening, its text pieces as they become final (interleaved
    across choices), its end; then usage if asked for, and [DONE]."""
    completions: list[Completion | None] = [None] * (len(plan.prompts) * plan.n)
    if reply.chat:
        for index in range(len(completions)):
            yield _event(reply.chunk(index, role=True))
    async with contextlib.aclosing(_progress(server, plan)) as progress:
        async for index, item in progress:
            if isinstance(item, str):
                yield _event(reply.chunk(index, text=item))
            elif isinstance(item, Future):
                yield _event({"error": {"message": "generation failed; see the server log",
                                        "type": "server_error", "param": None, "code": None}})
                return
            else:
                completions[index] = item
                yield _event(reply.chunk(index, done=item, logprobs=item.logprobs))
    if plan.include_usage:
        yield _event(reply.usage_chunk(completions))
    yield "data: [DONE]\n\n"


async def _stream_response(server: ChatServer, plan: Plan,
                           reply: ResponsesReply) -> AsyncIterator[str]:
    """The Responses API's typed SSE events for one answer: created, in_progress, the output
    item and its text part opened, text deltas, then everything closed and `response.completed`
    (or `response.incomplete` at max_output_tokens). No [DONE], as with OpenAI."""
    for event in reply.opening():
        yield _typed_event(event)
    async with contextlib.aclosing(_progress(server, plan)) as progress:
        async for _, item in progress:
            if isinstance(item, str):
                yield _typed_event(reply.delta(item))
            elif isinstance(item, Future):
                yield _typed_event(reply.failure())
                return
            else:
                for event in reply.closing(item):
                    yield _typed_event(event)


async def _read_json(request: Request) -> dict:
    from alignparadox.targets.serve_protocol import ApiError

    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > _MAX_BODY_BYTES:
        raise ApiError(f"the request body is larger than {_MAX_BODY_BYTES} bytes", 413)
    data = bytearray()
    async for piece in request.stream():
        data += piece
        if len(data) > _MAX_BODY_BYTES:
            raise ApiError(f"the request body is larger than {_MAX_BODY_BYTES} bytes", 413)
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(f"the request body is not valid JSON: {error}") from error
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    return body


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _typed_event(payload: dict) -> str:
    return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n"


def _json(status: int, payload: dict) -> Response:
    from starlette.responses import Response

    return Response(json.dumps(payload), status, media_type="application/json")


def _error(status: int, message: str, kind: str = "invalid_request_error") -> Response:
    code = kind if kind == "model_not_found" else None
    kind = "invalid_request_error" if kind == "model_not_found" else kind
    return _json(status, {"error": {"message": message, "type": kind, "param": None,
                                    "code": code}})


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


def _check_defense(defense: str | None, reference: str | None, candidates: int,
                   direction: Path | None) -> str | None:
    """The scorer a `--defense` names, checked before any model is loaded."""
    if defense is None:
        if reference is not None:
            raise UserError("--reference is the reference model of a --defense; give one.")
        return None
    from alignparadox.defenses.best_of_n.core import SERVABLE

    scorer = defense.removeprefix("bon-").replace("-", "_")
    if not defense.startswith("bon-") or scorer not in SERVABLE:
        raise UserError(f"unknown --defense {defense!r}; use "
                        f"{', '.join('bon-' + name for name in SERVABLE)}.")
    if candidates < 1:
        raise UserError(f"--candidates (N) must be at least 1, got {candidates}.")
    if direction is not None:
        raise UserError("--defense serves the defended model as it is; it cannot be combined "
                        "with --direction steering.")
    if reference is None and scorer in ("latent", "token_kl"):
        raise UserError(f"--defense {defense} compares with the model before alignment; give "
                        "--reference REF (e.g. organism:base).")
    return scorer


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
    max_batch: int = typer.Option(
        16, help="Most requests decoded together; 1 decodes each alone, bit-identical to "
        "local generation (batching can flip a greedy token by float rounding)."),
    threads: int | None = typer.Option(
        None, help="CPU threads for the model (default: torch's; 1-2 is often fastest on a "
        "busy machine)."),
    defense: str | None = typer.Option(
        None, help="Serve the defended system: bon-latent (Best-of-N with latent attribution; "
        "controls: bon-random, bon-perplexity, bon-self_certainty, bon-token_kl)."),
    reference: str | None = typer.Option(
        None, help="With --defense: the target before alignment, same tokenizer."),
    candidates: int = typer.Option(8, help="With --defense: candidates N per answer."),
    defense_layer: str = typer.Option(
        "0.5", help="With --defense bon-latent: layer index or relative depth."),
) -> None:
    """Serve a white-box target over an OpenAI-compatible API, batching concurrent requests."""
    from rich.console import Console
    from rich.markup import escape

    from alignparadox.targets.whitebox import open_target

    console = Console(stderr=True)
    if max_tokens < 1:
        raise UserError(f"--max-tokens must be at least 1, got {max_tokens}.")
    if not 0 <= port <= 65535:  # checked before a possibly long model load
        raise UserError(f"--port must be between 0 and 65535, got {port}.")
    if max_batch < 1:
        raise UserError(f"--max-batch must be at least 1, got {max_batch}.")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}.")
    _check_steering(direction, alpha, ablate, layer)  # before a possibly long model load
    scorer = _check_defense(defense, reference, candidates, direction)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    target = open_target(spec, device=device, dtype=dtype, chat_template=chat_template,
                         allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    steering = (steering_context(target, direction, alpha=alpha, ablate=ablate, layer=layer)
                if direction is not None else None)
    factory = None
    if scorer is not None:
        from alignparadox.defenses.best_of_n.core import parse_layer
        from alignparadox.defenses.best_of_n.serving import defended_worker

        bon, factory = defended_worker(
            target, reference, scorer=scorer, n=candidates, layer=parse_layer(defense_layer),
            reference_options={"device": device, "dtype": dtype,
                               "allow_pickle": allow_pickle,
                               "trust_remote_code": trust_remote_code})
    server = make_server(target, host, port, generation_context=steering,
                         default_max_tokens=max_tokens, max_batch=max_batch,
                         worker_factory=factory)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/yellow] listening on {host}: anyone who can reach it "
                      "can query the model.")
    steered = ("" if direction is None else f", ablating {direction}" if ablate
               else f", steered along {direction} with alpha {alpha:g}")
    if factory is not None:
        steered = f", defended by {bon.describe()} against {reference}"
    batching = "each request alone" if max_batch == 1 else f"batches of up to {max_batch}"
    console.print(f"serving [bold]{escape(target.name)}[/bold] ({target.device}, "
                  f"{target.model.dtype}{escape(steered)}, {batching}) at {server.base_url} — "
                  "Ctrl-C to stop", highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped.")
    finally:
        server.server_close()
