"""Every loader on its real file in shared/datasets (row counts from each SOURCE.md), the two JBB
header styles, WildJailbreak's published TSV format, path resolution and the registration hook."""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

import pytest

from alignparadox.datasets import (
    PromptRecord,
    PromptSet,
    TemplateSet,
    datasets_root,
    load,
    load_prompt_set,
    load_templates,
    prompt_sets,
    register_prompt_set,
)
from alignparadox.datasets.registry import ENV_VAR
from alignparadox.errors import UserError

DATASETS = Path(
    os.environ.get(ENV_VAR) or Path(__file__).resolve().parents[2] / "shared" / "datasets"
)
needs_shared = pytest.mark.skipif(not DATASETS.is_dir(), reason=f"no prompt sets at {DATASETS}")


@pytest.fixture(autouse=True)
def _datasets_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(DATASETS))


# (set name, rows, harmful rows) exactly as each SOURCE.md states them.
SHARED_COUNTS = [
    ("strongreject", 313, 313),
    ("strongreject-small", 60, 60),
    ("advbench", 520, 520),
    ("advbench-strings", 574, 574),
    ("harmbench", 400, 400),
    ("harmbench-standard", 200, 200),
    ("harmbench-contextual", 100, 100),
    ("harmbench-val", 80, 80),
    ("harmbench-test", 320, 320),
    ("jbb-harmful", 100, 100),
    ("jbb-benign", 100, 0),
    ("xstest", 450, 200),
    ("forbidden-questions", 390, 390),
    ("self-instruct-seed", 175, 0),
]


@needs_shared
@pytest.mark.parametrize(("name", "rows", "harmful"), SHARED_COUNTS)
def test_every_shared_set_loads_with_its_documented_row_count(name: str, rows: int, harmful: int):
    prompts = load_prompt_set(name)
    assert len(prompts) == rows
    assert len(prompts.harmful()) == harmful
    assert all(r.text.strip() and r.category and r.source for r in prompts)


@needs_shared
def test_strongreject_categories_match_source_md():
    assert load_prompt_set("strongreject").category_counts() == {
        "Disinformation and deception": 50,
        "Hate, harassment and discrimination": 50,
        "Illegal goods and services": 50,
        "Non-violent crimes": 59,
        "Sexual content": 50,
        "Violence": 54,
    }
    small = load_prompt_set("strongreject-small")
    # The small file capitalises "Deception": kept verbatim, as SOURCE.md records.
    assert sorted(small.category_counts().values()) == [10] * 6
    assert "Disinformation and Deception" in small.category_counts()
    full_texts = {r.text for r in load_prompt_set("strongreject")}
    assert {r.text for r in small} <= full_texts


@needs_shared
def test_advbench_keeps_targets_and_its_known_mismatched_rows():
    behaviors = load_prompt_set("advbench")
    assert all(r.target and r.target.startswith("Sure, here") for r in behaviors)
    assert behaviors[0].id == "advbench/1"
    strings = load_prompt_set("advbench-strings")
    assert all(r.target == r.text for r in strings)


@needs_shared
def test_harmbench_contextual_records_carry_their_context():
    everything = load_prompt_set("harmbench")
    kinds = Counter(
        "contextual" if r.context else "copyright" if r.category == "copyright" else "standard"
        for r in everything
    )
    assert kinds == {"standard": 200, "contextual": 100, "copyright": 100}
    contextual = load_prompt_set("harmbench-contextual")
    assert all(r.context for r in contextual)
    record = contextual[0]
    assert record.prompt == f"{record.context}\n\n---\n\n{record.text}"
    # The CRLFs inside two context strings are upstream's and are kept verbatim.
    crlf = load_prompt_set("harmbench").by_category("cybercrime_intrusion")
    assert any("\r\n" in (r.context or "") for r in crlf)
    assert load_prompt_set("harmbench-standard")[0].context is None
    val, test = load_prompt_set("harmbench-val"), load_prompt_set("harmbench-test")
    assert {r.id for r in val}.isdisjoint({r.id for r in test})
    assert {r.id for r in val} | {r.id for r in test} == {r.id for r in everything}


@needs_shared
def test_jbb_harmful_behaviors_are_linked_to_existing_benign_twins():
    harmful, benign = load_prompt_set("jbb-harmful"), load_prompt_set("jbb-benign")
    benign_by_id = {r.id: r for r in benign}
    assert sorted(harmful.category_counts().values()) == [10] * 10
    assert Counter(r.source for r in harmful) == {
        "jbb:Original": 55,
        "jbb:TDC/HarmBench": 27,
        "jbb:AdvBench": 18,
    }
    for record in harmful:
        twin = benign_by_id[record.benign_twin_id]
        assert twin.category == record.category and not twin.harmful
    # "Human  trafficking" (double space) in the harmful file pairs with "Human trafficking".
    assert "jbb-benign/human-trafficking" in {r.benign_twin_id for r in harmful}
    assert all(r.benign_twin_id is None for r in benign)


@needs_shared
@pytest.mark.parametrize(("name", "twins"), [("jbb-harmful", True), ("jbb-benign", False)])
def test_jbb_hugging_face_header_style_loads_the_same_records(tmp_path: Path, name, twins):
    github_style = DATASETS / prompt_sets()[name].default_file
    with github_style.open(newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))[1:]
    hf_style = tmp_path / "behaviors.csv"
    with hf_style.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["Index", "Goal", "Target", "Behavior", "Category", "Source"])
        writer.writerows([str(int(row[0]) + 1), *row[1:]] for row in rows)  # HF counts from 1
    assert not github_style.read_text(encoding="utf-8").startswith("Index,")
    from_hf, from_github = load_prompt_set(name, hf_style), load_prompt_set(name)
    assert from_hf.records == from_github.records
    assert from_hf.sha256 == from_github.sha256
    assert all((r.benign_twin_id is not None) == twins for r in from_hf)


@needs_shared
def test_xstest_labels_and_contrast_types_agree():
    xstest = load_prompt_set("xstest")
    assert len(xstest.harmless()) == 250
    assert all(r.harmful == r.category.startswith("contrast_") for r in xstest)
    assert xstest[0].id == "xstest/1"


@needs_shared
def test_forbidden_questions_are_13_scenarios_of_30():
    questions = load_prompt_set("forbidden-questions")
    assert sorted(questions.category_counts().values()) == [30] * 13


@needs_shared
@pytest.mark.parametrize(
    ("name", "rows"), [("jailbreak-templates", 1405), ("jailbreak-templates-2023-05", 666)]
)
def test_jailbreak_prompts_load_as_templates_with_their_metadata(name: str, rows: int):
    templates = load_templates(name)
    assert isinstance(templates, TemplateSet) and len(templates) == rows
    assert set(templates.platform_counts()) >= {"discord", "reddit", "website"}
    assert sum(t.community is not None for t in templates) > 0
    assert all(t.date is None or len(t.date) == 10 for t in templates)
    with pytest.raises(UserError, match="templates"):
        load_prompt_set(name)


# WildJailbreak is not in shared/: these rows follow its published TSV layout with harmless
# placeholder text, including a quoted field with a tab, a newline and a quote in it.
WILDJAILBREAK_TRAIN = (
    "vanilla\tadversarial\tcompletion\tdata_type\n"
    "Placeholder plain request one.\t\tPlaceholder refusal.\tvanilla_harmful\n"
    "Placeholder plain request two.\t\tPlaceholder answer.\tvanilla_benign\n"
    'Placeholder plain request three.\t"Placeholder\twrapped ""role-play""\nrequest."\t'
    "Placeholder refusal.\tadversarial_harmful\n"
    "Placeholder plain request four.\tPlaceholder wrapped benign request.\t"
    "Placeholder answer.\tadversarial_benign\n"
)
WILDJAILBREAK_EVAL = (
    "adversarial\tlabel\tdata_type\n"
    "Placeholder wrapped request A.\t1\tadversarial_harmful\n"
    "Placeholder wrapped request B.\t0\tadversarial_benign\n"
    "Placeholder wrapped request C.\t1\tadversarial_harmful\n"
)


def test_wildjailbreak_train_uses_adversarial_text_where_there_is_one(tmp_path: Path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "train.tsv").write_text(WILDJAILBREAK_TRAIN, encoding="utf-8")
    train = load_prompt_set("wildjailbreak-train", tmp_path)  # HF folder layout: train/train.tsv
    assert [r.harmful for r in train] == [True, False, True, False]
    assert train[0].text == "Placeholder plain request one."
    assert train[2].text == 'Placeholder\twrapped "role-play"\nrequest.'
    assert train.category_counts() == {
        "vanilla_harmful": 1,
        "vanilla_benign": 1,
        "adversarial_harmful": 1,
        "adversarial_benign": 1,
    }


def test_wildjailbreak_eval_reads_labels(tmp_path: Path):
    path = tmp_path / "eval.tsv"
    path.write_text(WILDJAILBREAK_EVAL, encoding="utf-8")
    evaluation = load_prompt_set("wildjailbreak-eval", path)
    assert [r.harmful for r in evaluation] == [True, False, True]
    assert [r.id for r in evaluation] == [f"wildjailbreak-eval/{i}" for i in (1, 2, 3)]


def test_wildjailbreak_rejects_an_unknown_data_type_and_label(tmp_path: Path):
    path = tmp_path / "train.tsv"
    path.write_text(WILDJAILBREAK_TRAIN.replace("vanilla_benign", "vanilla_other"), "utf-8")
    with pytest.raises(UserError, match="vanilla_other"):
        load_prompt_set("wildjailbreak-train", path)
    path.write_text(WILDJAILBREAK_EVAL.replace("\t0\t", "\tmaybe\t"), "utf-8")
    with pytest.raises(UserError, match="maybe"):
        load_prompt_set("wildjailbreak-eval", path)


_STRONGREJECT = ("category,source,forbidden_prompt", "forbidden_prompt")
_HARMBENCH = (
    "Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID",
    "BehaviorID",
)
_JBB = ("Index,Goal,Target,Behavior,Category,Source", "Goal")
_TEMPLATES = ("platform,source,prompt,jailbreak,created_at,date", "prompt")
# A valid header for every CSV/TSV set, and one required column to drop from it.
FORMATS = {
    "strongreject": _STRONGREJECT,
    "strongreject-small": _STRONGREJECT,
    "advbench": ("goal,target", "target"),
    "advbench-strings": ("target", "target"),
    "harmbench": _HARMBENCH,
    "harmbench-standard": _HARMBENCH,
    "harmbench-contextual": _HARMBENCH,
    "harmbench-val": _HARMBENCH,
    "harmbench-test": _HARMBENCH,
    "jbb-harmful": _JBB,
    "jbb-benign": _JBB,
    "xstest": ("id,prompt,type,label,focus,note", "label"),
    "jailbreak-templates": _TEMPLATES,
    "jailbreak-templates-2023-05": _TEMPLATES,
    "forbidden-questions": ("content_policy_id,content_policy_name,q_id,question", "question"),
    "wildjailbreak-train": ("vanilla\tadversarial\tcompletion\tdata_type", "data_type"),
    "wildjailbreak-eval": ("adversarial\tlabel\tdata_type", "label"),
}


def test_every_registered_set_has_a_bad_file_test():
    # Generated sets (the organism world) read no file.
    file_backed = {name for name, spec in prompt_sets().items() if spec.default_file}
    assert file_backed == {*FORMATS, "self-instruct-seed"}


@pytest.mark.parametrize("name", FORMATS)
def test_every_loader_names_the_missing_column(tmp_path: Path, name: str):
    header, dropped = FORMATS[name]
    delimiter = "\t" if "\t" in header else ","
    kept = [column if column != dropped else "unrelated" for column in header.split(delimiter)]
    path = tmp_path / "bad.csv"
    path.write_text(delimiter.join(kept) + "\n" + delimiter.join("x" for _ in kept) + "\n", "utf-8")
    with pytest.raises(UserError, match=f"missing column {dropped.lower()} "):
        load(name, path)


@pytest.mark.parametrize("name", [*FORMATS, "self-instruct-seed"])
def test_every_loader_rejects_empty_and_non_utf8_files(tmp_path: Path, name: str):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="is empty"):
        load(name, empty)
    latin1 = tmp_path / "latin1"
    header = FORMATS[name][0].encode() if name in FORMATS else b'{"id": "x", "instruction": "y"'
    latin1.write_bytes(header + b"\ncaf\xe9\n")
    with pytest.raises(UserError, match="not valid UTF-8"):
        load(name, latin1)


@pytest.mark.parametrize("name", FORMATS)
def test_every_loader_rejects_a_header_without_rows(tmp_path: Path, name: str):
    path = tmp_path / "header_only.csv"
    path.write_text(FORMATS[name][0] + "\n", "utf-8")
    with pytest.raises(UserError, match="no rows"):
        load(name, path)


def test_self_instruct_names_missing_keys(tmp_path: Path):
    path = tmp_path / "seed_tasks.jsonl"
    path.write_text('{"id": "seed_task_0", "instruction": "Name a colour."}\n', "utf-8")
    with pytest.raises(UserError, match="line 1 is missing instances, is_classification"):
        load("self-instruct-seed", path)


@needs_shared
def test_a_set_folder_or_the_root_can_stand_for_the_file():
    by_root = load_prompt_set("strongreject", DATASETS)
    by_folder = load_prompt_set("strongreject", DATASETS / "strongreject")
    assert by_root.sha256 == by_folder.sha256 == load_prompt_set("strongreject").sha256
    with pytest.raises(UserError, match="holds no strongreject_dataset.csv"):
        load_prompt_set("strongreject", DATASETS / "xstest")


def test_datasets_root_comes_from_the_environment_or_the_sibling_shared_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="not a folder"):
        datasets_root()
    monkeypatch.delenv(ENV_VAR)
    (tmp_path / "main").mkdir()
    monkeypatch.chdir(tmp_path / "main")
    with pytest.raises(UserError, match=ENV_VAR):
        load("strongreject")
    (tmp_path / "shared" / "datasets").mkdir(parents=True)
    assert datasets_root() == (tmp_path / "shared" / "datasets").resolve()


def test_unknown_set_name_is_a_user_error():
    with pytest.raises(UserError, match="unknown prompt set 'strongrejct'"):
        load("strongrejct")


def test_registered_prompt_sets_load_like_builtin_ones(tmp_path: Path):
    seen_paths = []

    def world(path: Path | None) -> PromptSet:
        seen_paths.append(path)
        return PromptSet(
            "world", (PromptRecord("world/1", "Open the gate.", False, "chores", "world"),)
        )

    register_prompt_set("test-world", world, licence="generated", description="a tiny world")
    try:
        assert load_prompt_set("test-world")[0].text == "Open the gate."
        load_prompt_set("test-world", tmp_path)
        assert seen_paths == [None, tmp_path]
        with pytest.raises(ValueError, match="already registered"):
            register_prompt_set("test-world", world)
    finally:
        prompt_sets().pop("test-world")


@pytest.fixture
def local_http_server(tmp_path: Path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www, standing in for a public URL."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_port}", server
    server.shutdown()
    server.server_close()


def test_a_url_is_downloaded_once_into_the_cache(tmp_path: Path, monkeypatch, local_http_server):
    root, base_url, server = local_http_server
    monkeypatch.setenv("ALIGNPARADOX_CACHE", str(tmp_path))  # downloads go to $CACHE/datasets
    (root / "eval.tsv").write_text(WILDJAILBREAK_EVAL, encoding="utf-8")
    downloaded = load_prompt_set("wildjailbreak-eval", f"{base_url}/eval.tsv")
    assert len(downloaded) == 3
    cached = list((tmp_path / "datasets").rglob("eval.tsv"))
    assert len(cached) == 1 and cached[0].read_text("utf-8") == WILDJAILBREAK_EVAL
    with pytest.raises(UserError, match="could not download"):
        load_prompt_set("wildjailbreak-eval", f"{base_url}/missing.tsv")
    server.shutdown()
    server.server_close()  # from here on any request would be refused: the cache must serve
    assert load_prompt_set("wildjailbreak-eval", f"{base_url}/eval.tsv").sha256 == downloaded.sha256
