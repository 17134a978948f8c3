"""`paradox prompts fetch`: public sets downloaded (here from a local HTTP mirror) into the cache,
atomically and checked, and found there by loading and studies without ALIGNPARADOX_DATASETS."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from alignparadox.cli import main
from alignparadox.datasets.registry import (
    ENV_VAR,
    MIRROR_VAR,
    fetch_set,
    load_prompt_set,
)
from alignparadox.errors import UserError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
needs_shared = pytest.mark.skipif(not (SHARED / "advbench").is_dir(),
                                  reason=f"no public prompt sets at {SHARED}")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def mirror(tmp_path):
    """An HTTP server on 127.0.0.1 serving a copy of two sets in the datasets-root layout."""
    root = tmp_path / "mirror"
    for folder in ("advbench", "xstest"):
        shutil.copytree(SHARED / folder, root / folder)
    (root / "strongreject").mkdir()  # a "published" file that does not parse
    (root / "strongreject" / "strongreject_dataset.csv").write_text("not,the,columns\n1,2,3\n")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """No datasets root anywhere (not even ../shared/datasets from the working folder), and an
    empty cache: whatever loads must come from a fetch."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv(MIRROR_VAR, raising=False)
    monkeypatch.setenv("ALIGNPARADOX_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    return tmp_path / "cache" / "prompt-sets"


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@needs_shared
def test_fetched_sets_load_without_a_datasets_root(mirror, fresh, capsys):
    with pytest.raises(UserError, match="no prompt-set folder"):
        load_prompt_set("advbench")
    main(["prompts", "fetch", "advbench", "--mirror", mirror])
    assert "advbench: 520 rows" in capsys.readouterr().out
    assert _files(fresh) == ["advbench/harmful_behaviors.csv"]  # no temporary left behind
    fetched = load_prompt_set("advbench")
    assert fetched.sha256 == load_prompt_set("advbench", SHARED / "advbench").sha256
    # A second fetch keeps the copy; a study's check finds it too.
    assert fetch_set("advbench", mirror=mirror) == fresh / "advbench" / "harmful_behaviors.csv"
    from alignparadox.study.measurements.alignment import check_prompt_set

    check_prompt_set("advbench")


@needs_shared
def test_a_bad_download_leaves_nothing_behind(mirror, fresh):
    with pytest.raises(UserError, match="not prompt set strongreject in its published format"):
        fetch_set("strongreject", mirror=mirror)
    with pytest.raises(UserError, match="HTTP 404"):
        fetch_set("harmbench", mirror=mirror)
    assert _files(fresh) == []


@needs_shared
def test_fetch_all_reports_what_it_could_not_fetch(mirror, fresh, monkeypatch, capsys):
    monkeypatch.setenv(MIRROR_VAR, mirror)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(SystemExit) as stopped:
        main(["prompts", "fetch", "all"])
    assert stopped.value.code == 2
    captured = capsys.readouterr()
    assert "xstest: 450 rows" in captured.out and "wildjailbreak-train: skipped" in captured.out
    assert "sets were not fetched" in captured.err
    assert {"advbench/harmful_behaviors.csv", "xstest/xstest_prompts.csv"} <= set(_files(fresh))
    assert not any(name.endswith(".part") for name in _files(fresh))


def test_offline_is_one_sentence_and_exit_2(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = os.environ | {"ALIGNPARADOX_CACHE": str(tmp_path / "cache"),
                                MIRROR_VAR: f"http://127.0.0.1:{port}"}
    result = subprocess.run([sys.executable, "-m", "alignparadox.cli", "prompts", "fetch", "all"],
                            capture_output=True, text=True, env=environment, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "could not reach 127.0.0.1" in result.stderr and "needs internet" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "cache" / "prompt-sets").exists() or not _files(
        tmp_path / "cache" / "prompt-sets")
