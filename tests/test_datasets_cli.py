"""`paradox prompts list | show | sample`: bad files end in one sentence and exit 2 (checked in a
real subprocess), and sampling is seeded, filtered and written atomically."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignparadox.cli import main
from alignparadox.datasets.registry import ENV_VAR

DATASETS = Path(
    os.environ.get(ENV_VAR) or Path(__file__).resolve().parents[2] / "shared" / "datasets"
)
needs_shared = pytest.mark.skipif(not DATASETS.is_dir(), reason=f"no prompt sets at {DATASETS}")


@pytest.fixture(autouse=True)
def _datasets_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(DATASETS))


def _paradox(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "alignparadox.cli", *args]
    environment = os.environ | {ENV_VAR: str(DATASETS), "COLUMNS": "200"}
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=60)


BAD_FILES = {
    "missing-column": (b"category,source\nViolence,custom\n", "missing column forbidden_prompt"),
    "empty": (b"", "is empty"),
    "header-only": (b"category,source,forbidden_prompt\n", "has a header but no rows"),
    "non-utf8": (b"category,source,forbidden_prompt\nViolence,custom,caf\xe9\n", "not valid UTF-8"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_show_on_a_bad_file_exits_2_with_one_sentence(tmp_path: Path, case: str):
    content, message = BAD_FILES[case]
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    result = _paradox("prompts", "show", "strongreject", "--path", str(path))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    main(list(args))
    return capsys.readouterr().out


def _fail(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run in this process a command that must fail as a user error; return its stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    return err


def test_unknown_set_and_missing_file_exit_2(capsys):
    assert "unknown prompt set 'strongrejct'" in _fail(capsys, "prompts", "show", "strongrejct")
    missing = _fail(capsys, "prompts", "show", "xstest", "--path", "/nonexistent/x.csv")
    assert "does not exist" in missing


@needs_shared
def test_list_shows_every_set_with_rows_and_licence(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    out = _run(capsys, "prompts", "list")
    assert "jailbreak-templates" in out and "1405" in out and "templates" in out
    assert "xstest" in out and "CC BY 4.0" in out
    assert "wildjailbreak-eval" in out and "not found" in out  # not in shared/


@needs_shared
def test_show_prints_counts_hash_and_truncated_rows(capsys, monkeypatch):
    from alignparadox.datasets import load_prompt_set

    monkeypatch.setenv("COLUMNS", "250")
    out = _run(capsys, "prompts", "show", "harmbench-contextual", "--rows", "2")
    assert load_prompt_set("harmbench-contextual").sha256 in out
    assert "chemical_biological" in out and "harmbench/" in out
    assert max(len(line) for line in out.splitlines()) < 250 and "…" in out


@needs_shared
def test_sample_is_seeded_filtered_and_written_atomically(capsys, tmp_path: Path):
    args = ("prompts", "sample", "xstest", "--n", "7", "--seed", "4", "--harmless")
    printed = [json.loads(line) for line in _run(capsys, *args).splitlines()]
    assert len(printed) == 7 and not any(row["harmful"] for row in printed)
    out = tmp_path / "sub" / "sample.jsonl"
    main([*args, "--out", str(out)])
    written = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert written == printed
    assert os.listdir(out.parent) == ["sample.jsonl"]  # no temporary file left behind
    other_seed = _run(
        capsys, "prompts", "sample", "xstest", "--n", "7", "--seed", "5", "--harmless"
    )
    assert [json.loads(line) for line in other_seed.splitlines()] != printed


@needs_shared
def test_sample_by_category(capsys):
    out = _run(capsys, "prompts", "sample", "strongreject", "--n", "3", "--category", "Violence")
    assert [json.loads(line)["category"] for line in out.splitlines()] == ["Violence"] * 3


@needs_shared
def test_sample_errors_leave_no_output_file(capsys, tmp_path: Path):
    out = tmp_path / "sample.jsonl"
    too_many = _fail(capsys, "prompts", "sample", "jbb-benign", "--n", "500", "--out", str(out))
    assert "cannot sample 500" in too_many and not out.exists()
    unknown = _fail(
        capsys, "prompts", "sample", "xstest", "--category", "nonsense", "--out", str(out)
    )
    assert "no category 'nonsense'" in unknown and not out.exists()
    templates = _fail(capsys, "prompts", "sample", "jailbreak-templates", "--harmful")
    assert "no category or harm label" in templates
