"""`paradox steer | tinker export | directions fit | geometry`: results, and bad input -> exit 2."""

from __future__ import annotations

import math

import pytest
import torch

from alignparadox.cli import main
from alignparadox.geometry import Direction
from alignparadox.targets import load_target
from alignparadox.targets.random_models import make_random_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_random_model("llama", tmp_path_factory.mktemp("cli") / "llama")


@pytest.fixture(scope="module")
def weight_hash(model_dir):
    return load_target(model_dir).weight_hash


def save(tmp_path, name, *, width=64, layer=1, model_hash) -> str:
    vector = torch.randn(width, generator=torch.Generator().manual_seed(0))
    direction = Direction(vector, "diff_in_means", layer, (-1,), model_hash,
                          metadata={"mean_norm": 2.0, "misaligned_sign": -1})
    return str(direction.save(tmp_path / name))


def run(argv, capsys) -> tuple[int, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_steer_and_export_work(model_dir, weight_hash, tmp_path, capsys):
    good = save(tmp_path, "good", model_hash=weight_hash)
    code, out = run(["steer", str(model_dir), "hello there", "--direction", good, "--alpha",
                     "-1", "--max-new-tokens", "4"], capsys)
    assert code == 0 and "> hello there" in out
    code, _ = run(["steer", str(model_dir), "hi", "--direction", good, "--ablate",
                   "--max-new-tokens", "4"], capsys)
    assert code == 0
    code, out = run(["tinker", "export", str(model_dir), "--direction", good, "--out",
                     str(tmp_path / "ortho")], capsys)
    assert code == 0 and (tmp_path / "ortho" / "config.json").is_file()
    # The export is a normal checkpoint whose writes have no component along the direction.
    edited = load_target(tmp_path / "ortho")
    unit = Direction.load(good).vector
    embeddings = edited.model.get_input_embeddings().weight.detach()
    assert (embeddings @ unit).abs().max() < 1e-4
    code, out = run(["tinker", "export", str(model_dir), "--direction", good, "--out",
                     str(tmp_path / "ortho")], capsys)
    assert code == 2 and "already exists" in out


@pytest.mark.parametrize("case, message", [
    ("layer", "out of range"), ("width", "width"), ("other_model", "made on model"),
    ("nan", "finite"), ("inf", "finite"), ("empty", "empty"),
    ("layer_without_norm", "no scale"), ("layer_with_ablate", "--alpha only"),
])
def test_bad_input_is_one_sentence_and_exit_2(model_dir, weight_hash, tmp_path, capsys,
                                              case, message):
    good = save(tmp_path, "good", model_hash=weight_hash)
    argv = ["steer", str(model_dir), "hello", "--direction", good, "--alpha", "1"]
    if case == "layer":
        argv += ["--layer", "99"]
    elif case == "layer_without_norm":  # the saved direction records its norm at layer 1 only
        argv += ["--layer", "2"]
    elif case == "layer_with_ablate":
        argv[5:7] = ["--ablate", "--layer", "2"]
    elif case == "width":
        argv[4] = save(tmp_path, "narrow", width=32, model_hash=weight_hash)
    elif case == "other_model":
        argv[4] = save(tmp_path, "other", model_hash="0" * 64)
    elif case in ("nan", "inf"):
        argv[6] = str(getattr(math, case))
    elif case == "empty":
        empty = tmp_path / "none.txt"
        empty.write_text("\n")
        argv = ["steer", str(model_dir), "--direction", good, "--alpha", "1",
                "--prompts-file", str(empty)]
    code, out = run(argv, capsys)
    out = " ".join(out.split())  # the console wraps long lines
    assert code == 2
    assert message in out and "Traceback" not in out


def test_directions_fit_and_geometry_on_an_organism(organism_family, tmp_path, capsys):
    code, out = run(["directions", "fit", "organism:aligned-5", "--out", str(tmp_path / "dirs"),
                     "--n-fit", "16", "--n-select", "8"], capsys)
    assert code == 0, out
    refusal = Direction.load(tmp_path / "dirs" / "refusal")
    stance = Direction.load(tmp_path / "dirs" / "stance")
    assert refusal.metadata["behaviour"] == "refusal" and stance.metadata["misaligned_sign"] == 1
    assert refusal.model_hash == organism_family.member("aligned-5").weight_hash
    # The mean norm is recorded at every layer 0..4, so steering may move to another layer.
    by_layer = refusal.metadata["mean_norm_by_layer"]
    assert sorted(by_layer) == ["0", "1", "2", "3", "4"]
    assert by_layer[str(refusal.layer)] == refusal.metadata["mean_norm"]
    assert len(set(by_layer.values())) == 5
    plot = tmp_path / "geometry.png"
    code, out = run(["geometry", "organism:aligned-5", "--direction",
                     str(tmp_path / "dirs" / "refusal.json"), "--n", "12", "--plot", str(plot)],
                    capsys)
    assert code == 0, out
    assert plot.stat().st_size > 1000 and "AUROC" in out
    code, out = run(["geometry", "organism:aligned-5", "--n", "2"], capsys)
    assert code == 2 and "at least 4" in out


@pytest.mark.parametrize("layer", [0, 4])
def test_geometry_refuses_a_direction_outside_layers_1_to_L(model_dir, weight_hash, tmp_path,
                                                            capsys, layer):
    # The random model has 3 blocks: its states are compared at layers 1..3.
    direction = save(tmp_path, "direction", layer=layer, model_hash=weight_hash)
    code, out = run(["geometry", str(model_dir), "--direction", direction, "--n", "4", "--plot",
                     str(tmp_path / "geometry.png")], capsys)
    out = " ".join(out.split())  # the console wraps long lines
    assert code == 2 and f"at layer {layer}" in out and "layers 1..3" in out, out
    assert "Traceback" not in out and not (tmp_path / "geometry.png").exists()
