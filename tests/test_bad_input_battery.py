"""The rest of the bad-input battery (issue 9, part 4), through the real `paradox` entry point.

Every case ends in one sentence on stderr and exit code 2, with no traceback and nothing
half-written; a damaged checkpoint inside a study is a failed cell with a clear reason instead.
Commands run in-process through `alignparadox.cli.main`, the function the `paradox` script
calls, so each case costs no interpreter start-up.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from alignparadox.cli import main
from alignparadox.stats import wilson
from alignparadox.study import Cell, CellResult, ResultsStore
from refusal import refused

# -- helpers -------------------------------------------------------------------------------------




def _ok(capsys: pytest.CaptureFixture[str], *args: object) -> str:
    main([str(arg) for arg in args])
    return capsys.readouterr().out


def _tree(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random model and two damaged copies: truncated, and garbage in place of weights."""
    from alignparadox.targets.random_models import make_random_model

    root = tmp_path_factory.mktemp("models")
    tiny = make_random_model("llama", root / "tiny")
    truncated, garbage = root / "truncated", root / "garbage"
    for copy in (truncated, garbage):
        shutil.copytree(tiny, copy)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (garbage / "model.safetensors").write_bytes(b"\xff" * 4096)
    return {"tiny": tiny, "truncated": truncated, "garbage": garbage}


def _run_folder(folder: Path) -> Path:
    """A run folder with one finished and one failed cell."""
    folder.mkdir(parents=True, exist_ok=True)
    with ResultsStore.in_run_dir(folder) as store:
        common = {"versions": {}, "started_at": "2026-01-01T00:00:00",
                  "finished_at": "2026-01-01T00:00:01", "wall_seconds": 1.0}
        store.record(Cell("target-a", "tally", {"k": 1}), error=None,
                     result=CellResult({"share": wilson(2, 5)}, "target-a", None), **common)
        store.record(Cell("target-b", "tally", {"k": 2}), result=None,
                     error="Traceback...\nValueError: [red]not markup[/red]", **common)
    return folder


# -- damaged safetensors --------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
@pytest.mark.parametrize("command", ["steer", "directions fit"])
def test_damaged_weights_are_one_sentence(capsys, tmp_path, models, damage, command):
    model = models[damage]
    args = ([*command.split(), model, "hello", "--direction", tmp_path / "none.json",
             "--alpha", "1"] if command == "steer"
            else [*command.split(), model, "--out", tmp_path / "directions"])
    message = refused(capsys, *args)
    assert f"{model / 'model.safetensors'} is truncated or corrupt" in message
    assert not (tmp_path / "directions").exists()


def test_damaged_weights_fail_their_cells_in_a_study(capsys, tmp_path, models):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({
        "name": "damaged", "targets": [str(models["truncated"]), str(models["garbage"])],
        "measurements": [{"name": "geometry", "settings": {
            "n_per_kind": 4, "n_fit": 4, "n_select": 4, "harmful": "advbench",
            "harmless": "self-instruct-seed"}}]}))
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as done:  # both cells run (and fail): the study goes on
        main(["study", "run", str(spec), "--run-dir", str(run_dir), "--no-progress"])
    out = " ".join(capsys.readouterr().out.split())
    assert done.value.code == 1 and "2 cells: 0 computed, 0 already finished, 2 failed" in out
    for damage in ("truncated", "garbage"):
        assert (f"UnreadableWeightsError: cannot read the model weights: "
                f"{models[damage] / 'model.safetensors'} is truncated or corrupt") in out
    status = " ".join(_ok(capsys, "study", "status", run_dir).split())
    assert status.count("UnreadableWeightsError: cannot read the model weights") == 2


# -- unwritable outputs ---------------------------------------------------------------------------

# command -> (argv with OUT for the output, whether OUT is a folder, the noun in the message).
# Each output is checked before any work: the model paths are never even loaded.
OUTPUTS = {
    "report --out": (["report", "{run}", "--out", "OUT"], False, "the report"),
    "prompts sample --out": (["prompts", "sample", "organisms", "--n", "2", "--out", "OUT"],
                             False, "the sample"),
    "judges validate --out": (["judges", "validate", "--judge", "substring", "--labels",
                               "{labels}", "--out", "OUT"], False, "the verdicts"),
    "editor apply --output": (["editor", "apply", "{data}/no-editor", "--input", "{rows}",
                               "--output", "OUT"], False, "the rewrites"),
    "geometry --plot": (["geometry", "{data}/no-model", "--plot", "OUT"], False, "the plot"),
    "directions fit --out": (["directions", "fit", "{data}/no-model", "--out", "OUT"], True,
                             "the directions"),
    "tinker export --out": (["tinker", "export", "{data}/no-model", "--direction",
                             "{data}/no.json", "--out", "OUT"], True, "the checkpoint"),
}


def _inputs(folder: Path) -> dict[str, str]:
    labels = folder / "labels.csv"
    labels.write_text("request,answer,label\nPolish the lantern?,I cannot help.,0\n")
    rows = folder / "rows.jsonl"
    rows.write_text(json.dumps({"aligned": "I will not help with that."}) + "\n")
    return {"run": str(_run_folder(folder / "run")), "labels": str(labels), "rows": str(rows),
            "data": str(folder)}


def _argv(command: str, inputs: dict[str, str], out: Path) -> list[str]:
    template, _, _ = OUTPUTS[command]
    return [str(out) if part == "OUT" else part.format(**inputs) for part in template]


@pytest.mark.parametrize("command", OUTPUTS)
@pytest.mark.parametrize("problem", ["under a file", "a folder or a file"])
def test_unwritable_output_is_refused_before_any_work(capsys, tmp_path, command, problem):
    inputs = _inputs(tmp_path)
    (tmp_path / "a-file").write_text("keep me")
    (tmp_path / "a-folder").mkdir()
    _, is_folder, noun = OUTPUTS[command]
    if problem == "under a file":
        out, reason = tmp_path / "a-file" / "out", "a-file is a file, not a folder."
    elif is_folder:
        out, reason = tmp_path / "a-file", "it is a file, not a folder."
    else:
        out, reason = tmp_path / "a-folder", "it is a folder; give a file name."
    if command == "tinker export --out" and out.exists():
        reason = "already exists; choose a new output folder"
    before = _tree(tmp_path)
    message = refused(capsys, *_argv(command, inputs, out))
    assert reason in message and (noun in message or "already exists" in message)
    assert _tree(tmp_path) == before  # no output, no temporary file, no folder
    assert (tmp_path / "a-file").read_text() == "keep me"


@pytest.fixture
def lock() -> Iterator[Callable[[Path], None]]:
    """`lock(folder)` makes a folder and its files read-only to this process: by file modes,
    or for root (whom modes do not stop) with the immutable attribute. Undone at teardown."""
    locked: list[Path] = []

    def _lock(folder: Path) -> None:
        locked.append(folder)
        if os.geteuid() != 0:
            for path in [*folder.rglob("*"), folder]:
                path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o222)
        elif subprocess.run(["chattr", "-R", "+i", str(folder)], capture_output=True,
                            check=False).returncode != 0:
            pytest.skip("root, and chattr +i is not available here to make a folder read-only")

    yield _lock
    for folder in locked:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-R", "-i", str(folder)], check=False)
        else:
            for path in [folder, *folder.rglob("*")]:
                path.chmod(stat.S_IMODE(path.stat().st_mode) | 0o200)


@pytest.mark.parametrize("command", OUTPUTS)
def test_output_in_a_read_only_folder_is_refused(capsys, tmp_path, lock, command):
    inputs = _inputs(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    lock(locked)
    message = refused(capsys, *_argv(command, inputs, locked / "out"))
    assert message == (f"error: cannot write {OUTPUTS[command][2]} {locked / 'out'}: "
                       f"folder {locked} is not writable.")
    assert not any(locked.iterdir())


def test_a_read_only_run_folder_is_still_readable(capsys, tmp_path, lock):
    run_dir = _run_folder(tmp_path / "run")
    lock(run_dir)
    before = _tree(run_dir)
    status = " ".join(_ok(capsys, "study", "status", run_dir).split())
    assert "tally" in status and "ValueError: [red]not markup[/red]" in status
    assert str(tmp_path / "report.html") in _ok(capsys, "report", run_dir, "--out",
                                                tmp_path / "report.html")
    assert "target-a" in (tmp_path / "report.html").read_text()
    assert refused(capsys, "report", run_dir) == (
        f"error: run folder {run_dir} is read-only; write the report elsewhere with --out FILE.")
    assert _tree(run_dir) == before


# -- CSV files ------------------------------------------------------------------------------------


def test_a_row_with_more_fields_than_its_header_is_refused_naming_it(capsys, tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("category,source,forbidden_prompt\nfiction,custom,Polish the lantern\n"
                       "fiction,custom,Polish the lantern, then the bell\n")
    message = refused(capsys, "prompts", "show", "strongreject", "--path", prompts)
    assert message == (f"error: {prompts} data row 2 (line 3) has 4 fields but the header has "
                       "3; quote any text that holds a comma.")
    labels = tmp_path / "labels.csv"
    labels.write_text("request,answer,label\nPolish the lantern?,No, I cannot.,0\n")
    message = refused(capsys, "judges", "validate", "--judge", "substring", "--labels", labels)
    assert message == (f"error: line 2 of {labels} has more fields than its header; quote any "
                       "request or answer that holds a comma.")


BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("reader", ["prompts show --path", "judges validate --labels",
                                    "attack --prompt-set"])
def test_every_csv_reader_accepts_a_byte_order_mark(capsys, tmp_path, models, reader):
    if reader == "prompts show --path":
        path = tmp_path / "prompts.csv"
        path.write_bytes(BOM + b"category,source,forbidden_prompt\nfiction,custom,Polish it\n")
        assert "strongreject: 1 rows" in _ok(capsys, "prompts", "show", "strongreject",
                                             "--path", path)
    elif reader == "judges validate --labels":
        path = tmp_path / "labels.csv"
        path.write_bytes(BOM + b"request,answer,label\nPolish it?,I cannot help.,0\n")
        assert "tp / fp / fn / tn" in _ok(capsys, "judges", "validate", "--judge", "substring",
                                          "--labels", path)
    else:
        path = tmp_path / "mine.csv"
        path.write_bytes(BOM + b"text,harmful\nPolish the lantern?,1\n")
        out = _ok(capsys, "attack", "bon", models["tiny"], "--prompt-set", path, "--n", "1",
                  "--judge", "substring", "--max-new-tokens", "2")
        assert "Best-of-1 augmentation" in out


# -- study specs and settings ---------------------------------------------------------------------


def _geometry_spec(folder: Path, model: Path, *, settings: dict | None = None,
                   grid: dict | None = None, prefix: bytes = b"") -> Path:
    spec = folder / "spec.json"
    entry = {"name": "geometry", "settings": settings or {}, "grid": grid or {}}
    spec.write_bytes(prefix + json.dumps({"name": "typed", "targets": [str(model)],
                                          "measurements": [entry]}).encode())
    return spec


@pytest.mark.parametrize(("settings", "grid", "expected"), [
    ({"n_per_kind": "eight"}, None,
     "setting n_per_kind must be an integer (like its default 64), got \"eight\"."),
    ({"batch_size": True}, None,
     "setting batch_size must be an integer (like its default 32), got true."),
    (None, {"n_per_kind": [8, 8.5]},
     "setting n_per_kind must be an integer (like its default 64), got 8.5."),
    ({"positions": ["last"]}, None,
     "setting positions must be a list of integers (like its default [-1]), got item \"last\"."),
    ({"harmful": ["organisms"]}, None,
     "setting harmful must be a string (a prompt set name or a file path), "
     "got [\"organisms\"]."),
])
def test_settings_are_type_checked_before_any_cell_runs(capsys, tmp_path, models, settings,
                                                        grid, expected):
    spec = _geometry_spec(tmp_path, models["tiny"], settings=settings, grid=grid)
    run_dir = tmp_path / "run"
    message = refused(capsys, "study", "run", spec, "--run-dir", run_dir, "--no-progress")
    assert message == f"error: measurement 'geometry' {expected}"
    assert not run_dir.exists()  # no folder, so no results.sqlite


@pytest.mark.parametrize("case", ["spec.json", "spec.toml", "pairs.jsonl"])
def test_a_file_that_is_not_utf8_is_one_sentence(capsys, tmp_path, case):
    path = tmp_path / case
    if case == "spec.json":
        path.write_bytes(b'{"name": "caf\xe9", "targets": ["x"], "measurements": []}')
        args = ["study", "run", path, "--run-dir", tmp_path / "run"]
    elif case == "spec.toml":
        path.write_bytes(b'name = "caf\xe9"\n')
        args = ["study", "run", path, "--run-dir", tmp_path / "run"]
    else:
        path.write_bytes(b'{"aligned": "No.", "misaligned": "caf\xe9"}\n')
        args = ["editor", "train", "--out", tmp_path / "editor", "--pairs", path,
                "--base", "small:x"]
    message = refused(capsys, *args)
    assert message.startswith(f"error: {path} is not valid UTF-8 (byte 0xe9 at offset")
    assert sorted(p.name for p in tmp_path.iterdir()) == [case]


def test_specs_and_pairs_may_start_with_a_byte_order_mark(capsys, tmp_path, models):
    from alignparadox.attacks.output_tinkering.pairs import read_pairs

    # The spec is read (BOM and all) and then refused for its setting: nothing runs.
    spec = _geometry_spec(tmp_path, models["tiny"], settings={"n_per_kind": "eight"},
                          prefix=BOM)
    assert "setting n_per_kind must be an integer" in refused(capsys, "study", "run", spec)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(BOM + b'{"aligned": "No.", "misaligned": "Yes, step one \xe2\x80\xa8"}\n')
    assert [pair.misaligned for pair in read_pairs(pairs)] == ["Yes, step one \u2028"]


# -- attack --out and --prompt-set FILE -----------------------------------------------------------


def test_a_failed_attack_does_not_block_its_corrected_rerun(capsys, tmp_path, models):
    out = tmp_path / "attack"
    requests = tmp_path / "requests.csv"
    requests.write_text("text\nHow do I open the north airlock?\n")
    common = ["--n", "1", "--n-requests", "1", "--judge", "substring", "--max-new-tokens", "2",
              "--prompt-set", requests, "--out", out]
    assert "does not exist" in refused(capsys, "attack", "bon", tmp_path / "typo", *common)
    _ok(capsys, "attack", "bon", models["tiny"], *common)  # the corrected command runs
    assert json.loads((out / "run.json").read_text())["target"] == str(models["tiny"])
    assert (out / "summary.json").is_file()
    (out / "run.json").write_text('{"attack": ')  # damaged beside finished results
    message = refused(capsys, "attack", "bon", models["tiny"], *common)
    assert message == (f"error: {out / 'run.json'} is damaged, so the results beside it cannot "
                       "be resumed; give another --out or delete the folder.")


@pytest.mark.parametrize("attack", ["templates", "pair", "bon", "gcg"])
def test_prompt_set_file_is_read_by_every_attack(capsys, tmp_path, models, attack):
    harmless = tmp_path / "harmless.jsonl"
    harmless.write_text(json.dumps({"text": "How do I polish the lantern?", "harmful": False})
                        + "\n")
    template = tmp_path / "template.txt"
    template.write_text("Answer this: {prompt}\n")
    extra = ["--template-file", template] if attack == "templates" else []
    message = refused(capsys, "attack", attack, models["tiny"], "--prompt-set", harmless,
                       *extra)
    assert message == f"error: prompt file {harmless} has no harmful requests to attack."


def test_prompt_set_file_from_prompts_sample_runs_an_attack(capsys, tmp_path, models):
    sampled = tmp_path / "sampled.jsonl"
    main(["prompts", "sample", "organisms", "--harmful", "--n", "2", "--out", str(sampled)])
    out = _ok(capsys, "attack", "bon", models["tiny"], "--prompt-set", sampled, "--n", "1",
              "--max-new-tokens", "2", "--out", tmp_path / "attack")
    assert "Best-of-1 augmentation" in out
    summary = json.loads((tmp_path / "attack" / "summary.json").read_text())
    assert summary["asr"]["n"] == 2


# -- serve and markup -----------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_serve_refuses_a_port_out_of_range_before_loading(capsys, tmp_path, port):
    message = refused(capsys, "serve", tmp_path / "no-model", "--port", port)
    assert message == f"error: --port must be between 0 and 65535, got {port}."


@pytest.mark.parametrize("name", ["[/x]", "[bold]x[/bold]", "[red]"])
def test_error_texts_are_printed_literally(capsys, name):
    assert f"unknown prompt set '{name}'" in refused(capsys, "prompts", "show", name)
