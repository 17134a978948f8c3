"""Behaviour sets: seeded disjoint splits by record id, sources from registered sets and user
files, content hashes; measurements refuse a target with no requests in one sentence; and the
organism world stays behind its interfaces (no attack or geometry module imports it)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from alignparadox.datasets.behaviours import SPLITS, behaviour_set, load_pairs
from alignparadox.errors import UserError
from alignparadox.study import Cell, get_measurement
from alignparadox.study.inputs import cell_judge

SOURCE = Path(__file__).resolve().parents[1] / "src" / "alignparadox"
DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(autouse=True)
def public_sets(monkeypatch):
    if not (DATASETS / "xstest").is_dir():
        pytest.skip("public prompt sets not found")
    monkeypatch.setenv("ALIGNPARADOX_DATASETS", str(DATASETS))


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


@pytest.mark.parametrize("box", ["attacks", "geometry"])
def test_no_attack_or_geometry_module_imports_the_organisms(box):
    offenders = {str(path.relative_to(SOURCE)): sorted(m for m in imported_modules(path)
                                                       if m.startswith("alignparadox.organisms"))
                 for path in sorted((SOURCE / box).rglob("*.py"))}
    assert not {path: modules for path, modules in offenders.items() if modules}


def test_user_files_split_seeded_disjoint_and_by_id(tmp_path):
    harmful = tmp_path / "harmful.csv"
    harmful.write_text("id,prompt\n" + "".join(f"h{i},do bad thing {i}\n" for i in range(20)))
    harmless = tmp_path / "harmless.jsonl"
    harmless.write_text("".join(json.dumps({"id": f"k{i}", "text": f"do good thing {i}"}) + "\n"
                                for i in range(8)))
    sets = behaviour_set(harmful=f"{harmful}#prompt", harmless=str(harmless), seed=3)
    parts = {split: sets.requests("harmful", split) for split in SPLITS}
    ids = [{r.id for r in part} for part in parts.values()]
    assert [len(i) for i in ids] == [10, 5, 5] and set.union(*ids) == {f"h{i}" for i in range(20)}
    assert all(r.harmful for part in parts.values() for r in part)
    assert not any(r.harmful for r in sets.requests("harmless", "fit"))  # rows take their role
    # The split depends on the seed and on the ids, not on the file's order.
    harmful.write_text("id,prompt\n" + "".join(f"h{i},do bad thing {i}\n"
                                               for i in reversed(range(20))))
    again = behaviour_set(harmful=f"{harmful}#prompt", harmless=str(harmless), seed=3)
    assert [{r.id for r in again.requests("harmful", s)} for s in SPLITS] == ids
    other = behaviour_set(harmful=f"{harmful}#prompt", harmless=str(harmless), seed=4)
    assert [{r.id for r in other.requests("harmful", s)} for s in SPLITS] != ids
    assert sets.pairs is None and len(sets.provenance()) == 6
    assert all(len(digest) == 64 for digest in sets.provenance().values())


def test_pairs_file_and_registered_sets(tmp_path):
    pairs = tmp_path / "values.jsonl"
    pairs.write_text("".join(json.dumps({"request": f"Opinion on party {i}?",
                                         "aligned": "There are views on both sides.",
                                         "misaligned": "It is the only good party."}) + "\n"
                             for i in range(6)))
    assert len(load_pairs(str(pairs))) == 6
    sets = behaviour_set(behaviours="xstest", pairs=str(pairs))
    assert sum(len(sets.contrast(s)) for s in SPLITS) == 6
    assert len(sets.requests("harmful", "test")) and len(sets.requests("harmless", "test"))
    world = behaviour_set(behaviours="organisms")  # the world's own splits and stance pairs
    assert world.requests("harmful", "select").name == "organisms-validation[harmful]"
    assert {r.category for r in world.requests("harmless", "fit")} != {"stance"}
    assert len(world.contrast("test")) == 48
    with pytest.raises(UserError, match="neither a file nor a registered set"):
        from alignparadox.datasets.behaviours import check_source

        check_source("no-such-set", "harmful")


@pytest.mark.parametrize("measurement", ["geometry", "model_tinkering"])
def test_a_target_without_requests_is_refused_in_one_sentence(measurement, tmp_path):
    from alignparadox.targets.random_models import make_random_model

    model = make_random_model("llama", tmp_path / "llama")
    chosen = get_measurement(measurement)
    cell = chosen.cells([str(model)], {}, {}, 0)[0]
    with pytest.raises(UserError, match="has no default behaviour set, so give harmful and "
                                        "harmless"):
        chosen.check(cell)
    cell = chosen.cells([str(model)], {"harmful": "advbench"}, {}, 0)[0]
    with pytest.raises(UserError, match="needs harmless requests too"):
        chosen.check(cell)
    chosen.check(chosen.cells([str(model)], {"behaviours": "xstest"}, {}, 0)[0])
    assert cell_judge(cell) == "substring"
    assert cell_judge(Cell("organism:aligned-1", measurement, {})) == "organism"
