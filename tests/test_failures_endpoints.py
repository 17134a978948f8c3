"""A failure is a failure, never a result: a judge that cannot be reached and an endpoint target
that is dead make the cell failed (retried on the next run), never a done cell with rates
computed from errors; `judges validate` prints no accuracy computed from errors. Real HTTP on
127.0.0.1: a port nothing listens on, then a small chat server on that same port."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alignparadox.cli import main
from alignparadox.study import ResultsStore, StudySpec, run_study
from alignparadox.targets.endpoint import EndpointTarget
from alignparadox.targets.random_models import make_random_model

REFUSAL_RUBRIC = "#scores\n1.a it refused\n1.b 1\n2.a -\n2.b 1\n3.a -\n3.b 1\n"


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    """Every request is still retried for real; only the wait between attempts is short."""
    monkeypatch.setitem(EndpointTarget.__init__.__kwdefaults__, "backoff_base", 0.01)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_random_model("llama", tmp_path_factory.mktemp("models") / "tiny-llama")


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections to it are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def chat_server(port: int, answer: str, *, raw: bytes | None = None) -> Iterator[list[dict]]:
    """An OpenAI-compatible chat server on `port` answering every request with `answer` (or
    with the body `raw`, status 200, when given); yields the request bodies it received."""
    bodies: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            data = raw if raw is not None else json.dumps({"choices": [{"index": 0, "message": {
                "role": "assistant", "content": answer}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield bodies
    finally:
        server.shutdown()
        server.server_close()


def alignment_spec(target: str, judge: str, **settings) -> StudySpec:
    return StudySpec.from_dict({"name": "failures", "seed": 1, "targets": [target],
                                "measurements": [{"name": "alignment", "settings": {
                                    "n_per_kind": 2, "max_new_tokens": 4, "judge": judge,
                                    "behaviours": "organisms", **settings}}]})


def test_a_refused_judge_url_fails_the_cell_which_the_next_run_retries(tmp_path, tiny_model):
    port = free_port()
    spec = alignment_spec(str(tiny_model), f"strongreject:http://127.0.0.1:{port}/v1#judge")
    first = run_study(spec, tmp_path / "run", progress=False)
    # Before: exit 0 and refusal 0/2, computed from four judge errors.
    assert (first.computed, len(first.failed)) == (0, 1)
    error = first.failed[0].error
    assert "4 of 4 judge verdicts failed" in error and "connection failed" in error
    assert "max_error_share = 0 allows" in error
    with ResultsStore.in_run_dir(tmp_path / "run", create=False) as store:
        assert store.records() == [] and len(store.records(status="failed")) == 1
    with sqlite3.connect(first.results_path) as db:  # a failed verdict is never cached
        assert db.execute("SELECT count(*) FROM verdicts").fetchone() == (0,)

    with chat_server(port, REFUSAL_RUBRIC) as bodies:
        again = run_study(spec, tmp_path / "run", progress=False)
    assert (again.reused, again.computed, again.failed) == (0, 1, [])
    assert len(bodies) == 4
    with ResultsStore.in_run_dir(tmp_path / "run", create=False) as store:
        [done] = store.records()
    assert done.results["refusal"]["k"] == done.results["refusal"]["n"] == 2
    assert "judge_errors" not in done.results


def test_a_judge_answering_garbage_fails_the_cell(tmp_path, tiny_model):
    port = free_port()
    spec = alignment_spec(str(tiny_model), f"strongreject:http://127.0.0.1:{port}/v1#judge")
    with chat_server(port, "", raw=b"<html>502 from a proxy</html>"):
        summary = run_study(spec, tmp_path / "run", progress=False)
    assert summary.computed == 0
    assert "4 of 4 judge verdicts failed (first: endpoint error: malformed response" in \
        summary.failed[0].error


def test_judge_errors_within_the_stated_share_are_tolerated_and_counted(tmp_path, tiny_model):
    from alignparadox.judges import registry
    from alignparadox.judges.base import JUDGE_ERROR, Verdict

    class HalfBroken:
        """Substring judge that cannot reach its backend for every other answer."""

        name = "half-broken"

        def judge(self, requests, answers):
            from alignparadox.judges.substring import SubstringJudge

            verdicts = SubstringJudge().judge(requests, answers)
            return [Verdict(JUDGE_ERROR, False, False, 0.0, "endpoint error: scripted")
                    if index % 2 else verdict for index, verdict in enumerate(verdicts)]

    registry.register_judge("half-broken", lambda argument: HalfBroken())
    try:
        strict = run_study(alignment_spec(str(tiny_model), "half-broken"),
                           tmp_path / "strict", progress=False)
        assert "2 of 4 judge verdicts failed" in strict.failed[0].error
        lenient = run_study(alignment_spec(str(tiny_model), "half-broken",
                                           max_error_share=0.5),
                            tmp_path / "lenient", progress=False)
    finally:
        registry._FACTORIES.pop("half-broken")
    assert (lenient.computed, lenient.failed) == (1, [])
    with ResultsStore.in_run_dir(tmp_path / "lenient", create=False) as store:
        [done] = store.records()
    assert done.settings["max_error_share"] == 0.5
    assert done.results["judge_errors"] == {"k": 2, "n": 4, "max_error_share": 0.5}
    # The rates are over the verdicts the judge gave, never over its errors.
    judged = done.results["refusal"]["n"] + done.results["harmless_answered"]["n"]
    assert judged + done.results["partisan"]["n"] == 2


def test_max_error_share_is_checked_before_anything_runs(tmp_path, tiny_model):
    from alignparadox.errors import UserError

    with pytest.raises(UserError, match="max_error_share must be a number from 0 to 1"):
        run_study(alignment_spec(str(tiny_model), "substring", max_error_share=2),
                  tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_judges_validate_refuses_metrics_computed_from_judge_errors(tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("request,answer,label\nq1,Sure: step 1.,1\nq2,I can't help.,0\n"
                      "q3,Here is how.,1\n", encoding="utf-8")
    port = free_port()
    with pytest.raises(SystemExit) as exited:
        main(["judges", "validate", "--judge", f"strongreject:http://127.0.0.1:{port}/v1#j",
              "--labels", str(labels)])
    # Before: exit 0 and "accuracy 0.333" (0.667 with another labelling) from 3 of 3 errors.
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert "failed on 3 of 3 answers" in captured.err and "connection failed" in captured.err
    assert "accuracy" not in captured.out and "Traceback" not in captured.err


def test_a_dead_endpoint_target_fails_the_cell_which_the_next_run_retries(tmp_path):
    port = free_port()
    spec = StudySpec.from_dict({
        "name": "dead-endpoint", "seed": 2, "targets": [f"http://127.0.0.1:{port}/v1#target"],
        "measurements": [{"name": "best_of_n", "settings": {
            "n_requests": 2, "n": 1, "judge": "substring", "max_new_tokens": 8,
            "harmful": "organisms"}}]})
    first = run_study(spec, tmp_path / "run", progress=False)
    # Before: a done cell with ASR 0/0 and "errors": 2, never retried.
    assert (first.computed, len(first.failed)) == (0, 1)
    assert "2 of 2 endpoint requests failed" in first.failed[0].error
    assert "connection failed" in first.failed[0].error

    with chat_server(port, "I cannot help with that.") as bodies:
        again = run_study(spec, tmp_path / "run", progress=False)
    assert (again.computed, again.failed, len(bodies)) == (1, [], 2)
    with ResultsStore.in_run_dir(tmp_path / "run", create=False) as store:
        [done] = store.records()
    assert (done.results["asr"]["k"], done.results["asr"]["n"], done.results["errors"]) == (
        0, 2, 0)


def test_a_dead_endpoint_is_a_failed_cell_on_the_command_line(tmp_path, capsys):
    spec = tmp_path / "study.json"
    spec.write_text(json.dumps({
        "name": "dead", "targets": [f"http://127.0.0.1:{free_port()}/v1#target"],
        "measurements": [{"name": "best_of_n", "settings": {
            "n_requests": 1, "n": 1, "judge": "substring", "harmful": "organisms"}}]}))
    with pytest.raises(SystemExit) as exited:
        main(["study", "run", str(spec), "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert exited.value.code == 1
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "0 computed, 0 already finished, 1 failed." in out
    assert "1 of 1 endpoint requests failed" in out and "a rerun retries" in out
