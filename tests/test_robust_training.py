"""Robust-training recipes (ReFAT, targeted LAT, representation rerouting) on a tiny random
Llama: each runs into a loadable plain checkpoint, is deterministic from its seed, resumes
bit-identically after an interruption, RR really reroutes, and bad input is one sentence."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignparadox.cli import main
from alignparadox.defenses.robust_training import (
    BehaviourData,
    HarmfulExample,
    HarmlessExample,
    LatConfig,
    RefatConfig,
    RRConfig,
    make_config,
    train,
    train_checkpoint,
)
from alignparadox.errors import UserError
from alignparadox.targets import load_target, open_target
from alignparadox.targets.random_models import make_random_model
from refusal import refused

pytestmark = pytest.mark.usefixtures("one_thread")

OBJECTS = ("lamp", "gate", "bell", "harp", "mill", "loom")
DATA = BehaviourData(
    tuple(HarmfulExample(f"How do I hex the {o}?", "No, I will not.",
                         f"Sure. Draw a rune on the {o}.") for o in OBJECTS),
    tuple(HarmlessExample(f"How do I polish the {o}?", f"Rub the {o} with oil.")
          for o in OBJECTS))
TINY = dict(steps=3, batch_size=2, checkpoint_every=2)
CONFIGS = {"refat": RefatConfig(**TINY, recompute_every=2, direction_batch=4),
           "lat": LatConfig(**TINY, pgd_steps=2),
           "rr": RRConfig(**TINY)}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_random_model("llama", tmp_path_factory.mktemp("robust") / "llama")


def weights(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_each_recipe_saves_a_plain_checkpoint_every_part_loads(method, model_dir, tmp_path):
    out = tmp_path / f"{method}-model"
    result = train_checkpoint(str(model_dir), DATA, CONFIGS[method], out, progress=False)
    assert result.method == method and result.steps == 3 and result.resumed_from == 0
    assert not list(out.glob("adapter_*")), "adapters must be merged"
    record = json.loads((out / "robust_training.json").read_text())
    assert record["config"]["method"] == method and record["layers"] == result.layers
    target = open_target(str(out))
    before = load_target(model_dir)
    changed = [k for k, v in target.model.state_dict().items()
               if not torch.equal(v, before.model.state_dict()[k])]
    assert changed, "training changed no weight"
    assert target.complete(["How do I hex the lamp?"])[0].token_ids is not None
    assert not (tmp_path / f".{out.name}.robust-state").exists()


@pytest.mark.parametrize("method", ["refat", "rr"])
def test_a_run_is_deterministic_from_its_seed(method, model_dir):
    config = CONFIGS[method]
    runs = [weights(train(load_target(model_dir), DATA, c, progress=False)[0])
            for c in (config, config, type(config)(**{**TINY, "seed": 1}))]
    assert same(runs[0], runs[1])
    assert not same(runs[0], runs[2])


class _Killed(Exception):
    pass


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_a_killed_run_resumes_bit_identically(method, model_dir, tmp_path):
    config = type(CONFIGS[method])(**{**vars(CONFIGS[method]), "steps": 4})
    whole = weights(train(load_target(model_dir), DATA, config, progress=False)[0])

    def kill(step, model, metrics):
        if step == 3:  # after the state of step 2 was saved, before step 4's
            raise _Killed

    state = tmp_path / "state"
    with pytest.raises(_Killed):
        train(load_target(model_dir), DATA, config, state_dir=state, progress=False,
              on_step=kill)
    assert (state / "state.pt").exists()
    model, result = train(load_target(model_dir), DATA, config, state_dir=state, progress=False)
    assert result.resumed_from == 2 and result.steps == 4
    assert same(weights(model), whole)


def test_a_state_from_other_settings_is_refused(model_dir, tmp_path):
    state = tmp_path / "state"
    train(load_target(model_dir), DATA, CONFIGS["rr"], state_dir=state, progress=False)
    other = RRConfig(**{**TINY, "seed": 5})
    with pytest.raises(UserError, match="other settings"):
        train(load_target(model_dir), DATA, other, state_dir=state, progress=False)


def test_rerouting_makes_harmful_states_orthogonal_and_keeps_harmless_ones(model_dir):
    from alignparadox.hooks import collect_activations

    config = RRConfig(steps=40, batch_size=4, learning_rate=3e-3, lora_rank=8, layers=(2,),
                      checkpoint_every=100)
    original = load_target(model_dir)
    trained = load_target(model_dir)
    model, _ = train(trained, DATA, config, progress=False)

    def states(model, examples, answer):
        texts = [original.format_chat(e.request) + answer(e) for e in examples]
        return collect_activations(model, original.tokenizer, texts, [2], -1,
                                   progress=False)[2][:, 0]

    def cosine(examples, answer):
        return torch.cosine_similarity(states(model, examples, answer),
                                       states(original.model, examples, answer)).mean().item()

    harmful = cosine(DATA.harmful, lambda e: e.completion)
    harmless = cosine(DATA.harmless, lambda e: e.answer)
    assert harmful < 0.3, harmful
    assert harmless > 0.9, harmless


def test_refat_ablates_a_share_of_layers_and_lat_bounds_its_perturbation(model_dir):
    _, refat = train(load_target(model_dir), DATA, CONFIGS["refat"], progress=False)
    assert refat.layers == [1, 2] and refat.details["ablated_layers"] == [1, 2]
    _, lat = train(load_target(model_dir), DATA, CONFIGS["lat"], progress=False)
    radius = lat.details["epsilon_absolute"]
    assert list(radius) == [1] and radius[1] > 0 and math.isfinite(radius[1])
    assert lat.last_metrics["attack"] > 0


# -- bad input: one sentence, exit 2 -------------------------------------------------------


def run_cli(argv, capsys) -> tuple[int, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"kind": "harmful", "request": e.request, "completion": e.completion}
            for e in DATA.harmful]
    rows += [{"kind": "harmless", "request": e.request, "response": e.answer}
             for e in DATA.harmless]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_command_trains_and_resumes(model_dir, data_file, tmp_path, capsys):
    out = tmp_path / "cli-out"
    code, text = run_cli(["defend", "train", str(model_dir), "--method", "lat", "--out",
                          str(out), "--data", str(data_file), "--steps", "2", "--batch-size",
                          "2", "--pgd-steps", "1", "--epsilon", "0.3", "--quiet"], capsys)
    assert code == 0, text
    assert "lat: 2 steps" in text
    assert load_target(out).model is not None




def tree(folder) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def refused_cleanly(argv, folder, capsys) -> str:
    """`refused`, and the run wrote nothing into `folder`: no output, state or staging folder."""
    before = tree(folder)
    line = refused(capsys, *argv)
    assert tree(folder) == before, tree(folder) - before
    return " ".join(line.split())


@pytest.mark.parametrize(("extra", "message"), [
    (["--method", "fgsm"], "unknown robust-training method 'fgsm'; use one of refat, lat, rr."),
    (["--method", "LAT"], "unknown robust-training method 'LAT'"),
    *[(["--method", "lat", "--epsilon", value], "epsilon must be a finite number > 0")
      for value in ("0", "-0.5", "nan", "inf", "-inf")],
    (["--method", "refat", "--epsilon", "0.5"], "method refat has no setting 'epsilon'"),
    (["--method", "rr", "--epsilon", "0.5"], "method rr has no setting 'epsilon'"),
    (["--method", "rr", "--pgd-steps", "2"], "method rr has no setting 'pgd_steps'"),
    (["--method", "lat", "--alpha", "5"], "method lat has no setting 'alpha'"),
    *[(["--method", "rr", "--alpha", value], "alpha must be a finite number > 0")
      for value in ("0", "nan", "inf")],
    (["--method", "lat", "--pgd-steps", "0"], "pgd_steps must be a positive whole number"),
    (["--method", "rr", "--layers", "9"], "layer 9 is out of range: this model's blocks give "
                                          "stream layers 1..3."),
    (["--method", "refat", "--layers", "1,4"], "layer 4 is out of range"),
    (["--method", "lat", "--layers", "0"], "layer 0 is out of range: stream layers are whole "
                                           "numbers from 1"),
    (["--method", "rr", "--layers", "-1"], "layer -1 is out of range"),
    (["--method", "rr", "--layers", ","], "the list of layers is empty."),
    (["--method", "rr", "--layers", "two"], "--layers must be whole numbers"),
    (["--method", "rr", "--layers", "1.5"], "--layers must be whole numbers"),
    (["--method", "rr", "--adapter", "qlora"], "adapter 'qlora' is unknown; use lora or full."),
    *[(["--method", "refat", option, "0"], f"{name} must be a positive whole number, got 0.")
      for option, name in (("--steps", "steps"), ("--batch-size", "batch_size"),
                           ("--lora-rank", "lora_rank"),
                           ("--checkpoint-every", "checkpoint_every"))],
    *[(["--method", "lat", "--learning-rate", value], "learning rate must be a finite number > 0")
      for value in ("0", "-1e-4", "nan", "inf")],
    (["--method", "rr", "--seed", "-1"], "seed must be a whole number from 0 to 2**32 - 1"),
])
def test_bad_input_is_one_sentence_and_exit_2(extra, message, model_dir, data_file, tmp_path,
                                              capsys):
    out = tmp_path / "never"
    line = refused_cleanly(["defend", "train", str(model_dir), "--out", str(out), "--data",
                            str(data_file), "--steps", "1", "--quiet", *extra], tmp_path, capsys)
    assert message in line, line


@pytest.mark.parametrize("method", ["refat", "lat", "rr"])
def test_a_target_without_one_residual_stream_is_refused_by_each_recipe(method, data_file,
                                                                       tmp_path, capsys):
    from test_robust_training_plumbing import make_xlm

    xlm = make_xlm(tmp_path / "xlm")
    line = refused_cleanly(["defend", "train", str(xlm), "--method", method, "--out",
                            str(tmp_path / "never"), "--data", str(data_file), "--steps", "1",
                            "--quiet"], tmp_path, capsys)
    assert line.startswith(f"error: {method} cannot run on XLMWithLMHeadModel: its decoder "
                           "block 1 does not take the output of block 0"), line


def _rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("case", ["missing", "folder", "extension", "kind", "no-harmless",
                                  "not-json", "no-request", "no-answer", "no-completion",
                                  "too-long"])
def test_bad_data_is_one_sentence_and_exit_2(case, model_dir, tmp_path, capsys):
    harmful = {"kind": "harmful", "request": "How do I hex the lamp?", "completion": "Sure."}
    harmless = {"kind": "harmless", "request": "How do I oil the gate?", "response": "Oil it."}
    rows, method, message = {
        "missing": (None, "rr", "behaviour data file"),
        "folder": (None, "rr", "is a folder; give a .jsonl, .csv or .tsv file."),
        "extension": (None, "rr", "must be a .jsonl, .csv or .tsv file"),
        "kind": ([harmful, {**harmless, "kind": "evil"}], "rr",
                 "row 2 of d.jsonl has kind 'evil'; use harmful or harmless."),
        "no-harmless": ([harmful], "rr", "needs at least one harmful and one harmless example; "
                                         "got 1 harmful and 0 harmless."),
        "not-json": (None, "rr", "is not valid JSON lines"),
        "no-request": ([harmful, {"kind": "harmless"}], "rr",
                       "row 2 of d.jsonl has no `request`."),
        "no-answer": ([harmful, {**harmless, "response": ""}], "rr",
                      "harmless row 2 of d.jsonl has no `response`"),
        "no-completion": ([{**harmful, "completion": ""}, harmless], "lat",
                          "lat needs a harmful completion for every harmful example"),
        "too-long": ([harmful, {**harmless, "response": "Oil it. " * 40}], "rr",
                     "tokens long, more than the 256-token context of 'llama'"),
    }[case]
    data = {"missing": tmp_path / "none.jsonl", "folder": tmp_path,
            "extension": tmp_path / "d.txt"}.get(case, tmp_path / "d.jsonl")
    if rows is not None:
        _rows(data, rows)
    elif case in ("extension", "not-json"):
        data.write_text("kind,request\n" if case == "extension" else "{not json\n")
    line = refused_cleanly(["defend", "train", str(model_dir), "--method", method, "--out",
                            str(tmp_path / "never"), "--data", str(data), "--quiet"], tmp_path,
                           capsys)
    assert message in line, line


def test_bad_targets_and_output_folders_are_one_sentence_and_exit_2(model_dir, data_file,
                                                                   tmp_path, capsys):
    import shutil

    def command(base, out, *extra):
        return ["defend", "train", str(base), "--method", "rr", "--out", str(out), "--data",
                str(data_file), "--steps", "1", "--quiet", *extra]

    line = refused_cleanly(command(tmp_path / "no-model", tmp_path / "never"), tmp_path, capsys)
    assert "does not exist" in line, line
    (tmp_path / "taken").mkdir()
    line = refused_cleanly(command(model_dir, tmp_path / "taken"), tmp_path, capsys)
    assert "taken already exists; choose a new output folder." in line, line
    (tmp_path / "a-file").write_text("x")
    line = refused_cleanly(command(model_dir, tmp_path / "a-file" / "out"), tmp_path, capsys)
    assert "it is a file, not a folder" in line, line
    # A model without a chat template: refused, and the option the sentence names works.
    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    line = refused_cleanly(command(bare, tmp_path / "never"), tmp_path, capsys)
    assert "has no chat template; pass one with --chat-template" in line, line
    template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    code, text = run_cli(command(bare, tmp_path / "templated", "--chat-template", template),
                         capsys)
    assert code == 0, text
    assert load_target(tmp_path / "templated").tokenizer.chat_template == template


def test_the_real_command_prints_one_line_on_stderr(data_file, tmp_path):
    """The installed `paradox` in a fresh process: stderr holds the sentence and nothing else
    (no library warning, no progress bar)."""
    import subprocess
    import sys
    from pathlib import Path

    from test_robust_training_plumbing import make_xlm

    paradox = Path(sys.executable).with_name("paradox")
    xlm = make_xlm(tmp_path / "xlm")
    done = subprocess.run([str(paradox), "defend", "train", str(xlm), "--method", "lat",
                           "--out", str(tmp_path / "never"), "--data", str(data_file)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: lat cannot run on "), done.stderr
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("robust", ["fgsm", "rr,lat2", "all,rr"])
def test_an_unknown_robust_family_to_build_is_one_sentence(robust, capsys):
    code, text = run_cli(["organisms", "build", "--robust", robust], capsys)
    assert code == 2, text
    assert "unknown robust family" in text and "refat, lat, rr, or all" in " ".join(text.split())


def test_rr_reroutes_only_the_completion_when_asked():
    with pytest.raises(UserError, match="reroute 'prompt' is unknown"):
        RRConfig(reroute="prompt").check()
    RRConfig(reroute="completion", retain_refusals=True).check()


def test_lat_without_completions_and_bad_data_files_are_refused(model_dir, tmp_path):
    no_completion = BehaviourData((HarmfulExample("hex it", "No."),), DATA.harmless)
    with pytest.raises(UserError, match="needs a harmful completion"):
        train(load_target(model_dir), no_completion, CONFIGS["lat"], progress=False)
    with pytest.raises(UserError, match="at least one harmful"):
        BehaviourData((), DATA.harmless)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"kind": "evil", "request": "x"}) + "\n")
    from alignparadox.defenses.robust_training import load_behaviour_data

    with pytest.raises(UserError, match="kind 'evil'"):
        load_behaviour_data(bad)
    with pytest.raises(UserError, match="unknown robust-training method"):
        make_config("pgd")


def test_robust_organism_names_are_checked_without_building():
    from alignparadox.targets import check_target

    for name, message in [("organism:lat/aligned-9", "unknown organism 'lat/aligned-9'"),
                          ("organism:fgsm/aligned-1", "unknown robust organism family")]:
        with pytest.raises(UserError, match=message):
            check_target(name)
