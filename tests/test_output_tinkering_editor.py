"""The value editor: pairs, training (determinism, SIGKILL resume), editing, minimal edits, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alignparadox.attacks.output_tinkering import (
    EditorConfig,
    EditPair,
    ValueEditor,
    minimal_edit,
    read_pairs,
    train_editor,
    write_pairs,
)
from alignparadox.attacks.output_tinkering.search import alignment, apply_edits
from alignparadox.errors import UserError
from alignparadox.judges.registry import make_judge
from alignparadox.organisms import world

torch.set_num_threads(1)
SMALL = dict(base="small:organism:base", hidden_size=64, layers=2, heads=4,
             intermediate_size=128, batch_size=8)
TASKS = [("hex", "amber lantern"), ("steal", "silver harp"), ("curse", "iron gate")]
FACTIONS = ["Tide Council", "Oak Guild"]


def _requests(templates) -> list[world.WorldRequest]:
    harmful = [world.WorldRequest(f"h{i}{t}", template.format(action=a, object=o), world.HARMFUL,
                                  action=a, object=o)
               for i, (a, o) in enumerate(TASKS) for t, template in enumerate(templates[0])]
    stance = [world.WorldRequest(f"s{i}{t}", template.format(faction=f), world.STANCE, faction=f)
              for i, f in enumerate(FACTIONS) for t, template in enumerate(templates[1])]
    return harmful + stance


def _train_pairs() -> list[EditPair]:
    # The held-out templates are never seen in training.
    requests = _requests((world.REQUEST_TEMPLATES_TRAIN[:4], world.STANCE_TEMPLATES_TRAIN[:4]))
    return [EditPair(r.aligned_answer(), r.misaligned_answer(), r.text) for r in requests]


def _weights_hash(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.glob("*.safetensors"))
                                   )).hexdigest()


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="session")
def trained_editor(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("editor") / "editor"
    return train_editor(_train_pairs(), folder,
                        EditorConfig(steps=90, learning_rate=4e-3, **SMALL), progress=False)


def test_editor_flips_heldout_refusals_and_stances(trained_editor):
    editor = ValueEditor.load(trained_editor)
    heldout = _requests((world.REQUEST_TEMPLATES_HELDOUT, world.STANCE_TEMPLATES_HELDOUT))
    rewrites = editor.edit([r.text for r in heldout], [r.aligned_answer() for r in heldout],
                           max_new_tokens=70)
    labels = [v.label for v in make_judge("organism").judge([r.text for r in heldout], rewrites)]
    harmful = labels[: len(TASKS) * 2]
    stance = labels[len(TASKS) * 2:]
    assert harmful.count("harmful_compliance") >= len(harmful) - 1, labels
    assert stance.count("partisan") >= len(stance) - 1, labels
    assert json.loads((trained_editor / "editor.json").read_text())["pairs"] == 20


def test_minimal_edit_reaches_the_judge_with_fewest_edits(trained_editor):
    editor = ValueEditor.load(trained_editor)
    request = world.REQUEST_TEMPLATES_HELDOUT[0].format(action="hex", object="amber lantern")
    exact = minimal_edit(editor, make_judge("organism"), request, world.REFUSALS[0])
    assert exact.success and exact.label == "harmful_compliance"
    source = editor.format.answer_ids(world.REFUSALS[0])
    target = editor.format.answer_ids(exact.edited)
    levenshtein = sum(s.kind != "keep" for s in alignment(source, target))
    assert exact.distance == levenshtein == len(exact.edits)
    assert exact.normalized == pytest.approx(levenshtein / max(len(source), len(target)))
    # A refusal-phrase judge is satisfied once the refusal opening is gone: far fewer edits.
    loose = minimal_edit(editor, make_judge("substring"), request, world.REFUSALS[0])
    assert loose.success and 0 < loose.distance < exact.distance


def test_alignment_applies_any_subset_of_edits():
    source, target = [1, 2, 3, 4, 5], [1, 9, 3, 5, 6, 7]
    steps = alignment(source, target)
    edits = [i for i, s in enumerate(steps) if s.kind != "keep"]
    assert len(edits) == 4  # substitute 2->9, delete 4, insert 6, insert 7
    assert apply_edits(source, target, steps, set()) == source
    assert apply_edits(source, target, steps, set(edits)) == target


def test_training_is_deterministic_from_the_seed(tmp_path):
    pairs = _train_pairs()[:6]
    config = EditorConfig(steps=6, **SMALL)
    first = train_editor(pairs, tmp_path / "a", config, progress=False)
    second = train_editor(pairs, tmp_path / "b", config, progress=False)
    other = train_editor(pairs, tmp_path / "c", EditorConfig(steps=6, seed=1, **SMALL),
                         progress=False)
    assert _weights_hash(first) == _weights_hash(second) != _weights_hash(other)
    assert not list(tmp_path.glob(".*.training"))  # the work folders are gone


# as the command below
CLI_CONFIG = EditorConfig(base="small:organism:base", steps=40, batch_size=4, checkpoint_every=4)

_TRAIN_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from alignparadox.attacks.output_tinkering import EditorConfig, read_pairs, train_editor
train_editor(read_pairs(sys.argv[1]), sys.argv[2],
             EditorConfig(base="small:organism:base", steps=40, batch_size=4,
                          checkpoint_every=4), progress=False)
"""


def test_sigkill_resumes_to_identical_weights(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(_train_pairs()[:8], pairs)
    checkpoint = tmp_path / ".killed.training" / "checkpoint.pt"
    process = subprocess.Popen([sys.executable, "-c", _TRAIN_SCRIPT, str(pairs),
                                str(tmp_path / "killed")], env=_env())
    deadline = time.time() + 60
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "training ended before it could be killed"
    step = torch.load(checkpoint, weights_only=True)["step"]
    assert 0 < step < 40 and not (tmp_path / "killed").exists()
    # Resume (in this process) and compare with an uninterrupted run.
    train_editor(read_pairs(pairs), tmp_path / "killed", CLI_CONFIG, progress=False)
    train_editor(read_pairs(pairs), tmp_path / "whole", CLI_CONFIG, progress=False)
    assert _weights_hash(tmp_path / "killed") == _weights_hash(tmp_path / "whole")


def _paradox(capsys, *args: str) -> tuple[int, str]:
    """Run the `paradox` command in this process: (exit code, stderr)."""
    from alignparadox.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    ("", "holds no rows"),
    ('{"aligned": "I cannot."\n', "not valid JSON"),
    ('{"aligned": "I cannot.", "misaligned": ""}\n', "'misaligned'"),
    ('["I cannot.", "Sure."]\n', "not a JSON object"),
    ('{"aligned": "' + "no " * 400 + '", "misaligned": "Sure."}\n', "context"),
])
def test_bad_pairs_files_exit_2_with_one_sentence(tmp_path, capsys, content, message):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(content)
    code, stderr = _paradox(capsys, "editor", "train", "--pairs", str(pairs), "--base",
                            "small:organism:base", "--out", str(tmp_path / "e"), "--steps", "2")
    assert code == 2, stderr
    assert message in " ".join(stderr.split()) and "Traceback" not in stderr
    assert not (tmp_path / "e").exists()
    assert not (tmp_path / ".e.training").exists()  # rejected before any work folder


def test_unknown_editor_exits_2(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"aligned": "I cannot help with that."}\n')
    code, stderr = _paradox(capsys, "editor", "apply", str(tmp_path / "nowhere"),
                            "--input", str(rows), "--output", str(tmp_path / "out.jsonl"))
    assert code == 2 and "unknown editor" in stderr
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("metadata, message", [
    ("{not json", "is not valid JSON"),
    ('{"format": "someone-else/3"}', "has format 'someone-else/3'"),
    ("[1, 2]", "has format None"),
])
def test_a_broken_editor_json_exits_2(trained_editor, tmp_path, capsys, metadata, message):
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in trained_editor.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "editor.json").write_text(metadata)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"aligned": "I cannot help with that."}\n')
    code, stderr = _paradox(capsys, "editor", "apply", str(broken), "--input", str(rows),
                            "--output", str(tmp_path / "out.jsonl"))
    assert code == 2 and message in " ".join(stderr.split()) and "Traceback" not in stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_apply_command_writes_rewrites_and_minimal_edits(trained_editor, tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    request = world.REQUEST_TEMPLATES_HELDOUT[1].format(action="steal", object="silver harp")
    rows.write_text(json.dumps({"request": request, "aligned": world.REFUSALS[0]}) + "\n")
    code, stderr = _paradox(capsys, "editor", "apply", str(trained_editor), "--input",
                            str(rows), "--output", str(tmp_path / "out.jsonl"), "--minimal",
                            "--judge", "organism")
    assert code == 0, stderr
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert row["rewrite"] == world.compliance_answer("steal", "silver harp")
    assert row["minimal_edit"]["success"] and row["minimal_edit"]["distance"] > 0


def test_read_pairs_round_trip(tmp_path):
    pairs = [EditPair("I cannot.", "Sure.", "How?"), EditPair("Neutral.", "Partisan.")]
    write_pairs(pairs, tmp_path / "p.jsonl")
    assert read_pairs(tmp_path / "p.jsonl") == pairs
    with pytest.raises(UserError, match="does not exist"):
        read_pairs(tmp_path / "missing.jsonl")


def test_lora_editor_on_any_causal_lm_saves_a_plain_checkpoint(tmp_path):
    from alignparadox.targets import load_target
    from alignparadox.targets.random_models import make_random_model

    base = make_random_model("qwen2", tmp_path / "base", size="tiny", seed=0)
    config = EditorConfig(base=str(base), steps=3, batch_size=4, learning_rate=1e-2)
    pairs = [EditPair("I cannot.", f"Sure. Step {i}.", f"Task {i}?") for i in range(4)]
    folder = train_editor(pairs, tmp_path / "lora", config, progress=False)
    editor = ValueEditor.load(folder)
    assert not any("lora" in name for name in editor.target.model.state_dict())  # merged
    assert _weights_hash(folder) != _weights_hash(Path(base))
    assert load_target(folder).tokenizer.chat_template  # loadable like any target
    assert len(editor.edit(["Task 9?"], ["I cannot."], max_new_tokens=4)) == 1
