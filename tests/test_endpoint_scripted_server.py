"""A scripted OpenAI-compatible chat server on 127.0.0.1, for endpoint and judge tests.

A script decides, per request and attempt, whether to answer, fail with a status, stall, or drop
the connection; the server counts attempts, delivered answers and concurrent requests, so tests
can check from the server's side that nothing was lost or doubled.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    """What the server does with one request."""

    text: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False  # close the connection without any response


def echo(body: dict, attempt: int) -> Reply:
    return Reply(text=f"echo: {request_key(body)}")


def request_key(body: dict) -> str:
    """The last message's content names a request."""
    return body["messages"][-1]["content"]


class ScriptedChatServer:
    def __init__(self, script: Callable[[dict, int], Reply] = echo):
        self.script = script
        self.attempts: Counter[str] = Counter()
        self.delivered: Counter[str] = Counter()
        self.arrivals: list[float] = []
        self.bodies: list[dict] = []
        self.authorizations: list[str | None] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> ScriptedChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = request_key(body)
                with server._lock:
                    attempt = server.attempts[key]
                    server.attempts[key] += 1
                    server.arrivals.append(time.monotonic())
                    server.bodies.append(body)
                    server.authorizations.append(self.headers.get("Authorization"))
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                try:
                    self._respond(key, server.script(body, attempt))
                finally:
                    with server._lock:
                        server._in_flight -= 1

            def _respond(self, key: str, reply: Reply) -> None:
                time.sleep(reply.delay)
                if reply.drop:
                    self.close_connection = True
                    return
                if reply.status == 200:
                    payload = {
                        "id": f"chatcmpl-{key}", "object": "chat.completion", "model": "scripted",
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": reply.text}}],
                    }
                else:
                    payload = {"error": {"message": reply.text or f"scripted {reply.status}"}}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
                    return
                if reply.status == 200:
                    with server._lock:
                        server.delivered[key] += 1

        return Handler
