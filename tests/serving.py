"""Helpers shared by the serve tests: run a `paradox serve` server in a thread."""

from __future__ import annotations

import contextlib
import threading

import openai


@contextlib.contextmanager
def running(server):
    """Serve in a background thread; yield an openai client for it; shut down on exit."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=60)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
