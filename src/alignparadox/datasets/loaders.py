"""One loader per published prompt-set format. Each reads a local file and returns a PromptSet
(or a TemplateSet for the in-the-wild jailbreak prompts), keeping upstream text verbatim.

Record ids are `<set>/<native id>` where the set has ids of its own (HarmBench BehaviorID, XSTest
id, JBB behavior name, forbidden-question policy and number) and `<set>/<1-based data row>`
otherwise, so they match how the upstream papers and issues refer to rows.
"""

from __future__ import annotations

import re
from pathlib import Path

from alignparadox.datasets.io import read_jsonl, read_table
from alignparadox.datasets.records import JailbreakTemplate, PromptRecord, PromptSet, TemplateSet
from alignparadox.errors import UserError


def _optional(value: str | None) -> str | None:
    return value if value and value.strip() else None


def load_strongreject(path: Path, name: str = "strongreject") -> PromptSet:
    """StrongREJECT `category, source, forbidden_prompt` (full 313 or small 60)."""
    rows = read_table(
        path, ["category", "source", "forbidden_prompt"], non_empty=["forbidden_prompt", "category"]
    )
    return PromptSet(
        name,
        tuple(
            PromptRecord(
                id=f"{name}/{i}",
                text=row["forbidden_prompt"],
                harmful=True,
                category=row["category"],
                source=f"strongreject:{row['source']}",
            )
            for i, row in enumerate(rows, start=1)
        ),
    )


def load_advbench_behaviors(path: Path, name: str = "advbench") -> PromptSet:
    """AdvBench `goal, target`: harmful instructions with GCG's affirmative target strings.

    Kept verbatim, including the upstream rows whose goal and target are mismatched
    (llm-attacks issue #89: data rows 62, 64, 65, 459, 460).
    """
    rows = read_table(path, ["goal", "target"], non_empty=["goal", "target"])
    return PromptSet(
        name,
        tuple(
            PromptRecord(
                id=f"{name}/{i}",
                text=row["goal"],
                harmful=True,
                category="harmful_behaviors",
                source="advbench",
                target=row["target"],
            )
            for i, row in enumerate(rows, start=1)
        ),
    )


def load_advbench_strings(path: Path, name: str = "advbench-strings") -> PromptSet:
    """AdvBench `target`: strings for exact-string elicitation, each both text and target."""
    rows = read_table(path, ["target"], non_empty=["target"])
    return PromptSet(
        name,
        tuple(
            PromptRecord(
                id=f"{name}/{i}",
                text=row["target"],
                harmful=True,
                category="harmful_strings",
                source="advbench",
                target=row["target"],
            )
            for i, row in enumerate(rows, start=1)
        ),
    )


HARMBENCH_FUNCTIONAL = ("standard", "contextual", "copyright")


def load_harmbench(path: Path, name: str = "harmbench", functional: str | None = None) -> PromptSet:
    """HarmBench text behaviors (all, val or test file); `functional` keeps one FunctionalCategory.

    Contextual behaviors carry their ContextString in `context`; `PromptRecord.prompt` joins them
    in HarmBench's own format. The category is the SemanticCategory.
    """
    if functional is not None and functional not in HARMBENCH_FUNCTIONAL:
        raise UserError(
            f"HarmBench functional category must be one of "
            f"{', '.join(HARMBENCH_FUNCTIONAL)}, not {functional!r}."
        )
    columns = ["behavior", "functionalcategory", "semanticcategory", "contextstring", "behaviorid"]
    rows = read_table(
        path,
        columns,
        non_empty=["behavior", "functionalcategory", "semanticcategory", "behaviorid"],
    )
    records = []
    for i, row in enumerate(rows, start=1):
        kind = row["functionalcategory"]
        if kind not in HARMBENCH_FUNCTIONAL:
            raise UserError(f"{path} data row {i} has unknown FunctionalCategory {kind!r}.")
        context = _optional(row["contextstring"])
        if kind == "contextual" and context is None:
            raise UserError(
                f"{path} data row {i} is a contextual behavior without a ContextString."
            )
        if functional is None or kind == functional:
            records.append(
                PromptRecord(
                    id=f"harmbench/{row['behaviorid']}",
                    text=row["behavior"],
                    harmful=True,
                    category=row["semanticcategory"],
                    source="harmbench",
                    context=context,
                )
            )
    return PromptSet(name, tuple(records))


def jbb_behavior_key(behavior: str) -> str:
    """JBB pairs each harmful behavior 1:1 with a benign one of the same Behavior name; the two
    copies differ in spacing ("Human  trafficking"), so the key is a slug."""
    return re.sub(r"[^a-z0-9]+", "-", behavior.lower()).strip("-")


def load_jbb_behaviors(path: Path, harmful: bool, name: str | None = None) -> PromptSet:
    """JailbreakBench JBB-Behaviors, harmful or benign file, in either header style: the Hugging
    Face `Index, Goal, Target, Behavior, Category, Source` or the lower-case / unnamed-index copies.

    Ids are `jbb-harmful/<behavior>` and `jbb-benign/<behavior>`; a harmful record's
    `benign_twin_id` names its benign twin.
    """
    kind = "harmful" if harmful else "benign"
    name = name or f"jbb-{kind}"
    columns = ["goal", "target", "behavior", "category", "source"]
    rows = read_table(path, columns, non_empty=["goal", "behavior", "category"])
    records = []
    for row in rows:
        key = jbb_behavior_key(row["behavior"])
        records.append(
            PromptRecord(
                id=f"jbb-{kind}/{key}",
                text=row["goal"],
                harmful=harmful,
                category=row["category"],
                source=f"jbb:{row['source']}",
                target=_optional(row["target"]),
                benign_twin_id=f"jbb-benign/{key}" if harmful else None,
            )
        )
    return PromptSet(name, tuple(records))


def load_xstest(path: Path, name: str = "xstest") -> PromptSet:
    """XSTest `id, prompt, type, label`: 250 safe prompts that look unsafe, 200 unsafe contrasts.
    The category is the `type` (contrast types start with `contrast_`)."""
    rows = read_table(
        path, ["id", "prompt", "type", "label"], non_empty=["id", "prompt", "type", "label"]
    )
    records = []
    for i, row in enumerate(rows, start=1):
        if row["label"] not in ("safe", "unsafe"):
            raise UserError(
                f"{path} data row {i} has label {row['label']!r}, expected safe or unsafe."
            )
        records.append(
            PromptRecord(
                id=f"xstest/{row['id']}",
                text=row["prompt"],
                harmful=row["label"] == "unsafe",
                category=row["type"],
                source="xstest",
            )
        )
    return PromptSet(name, tuple(records))


def load_forbidden_questions(path: Path, name: str = "forbidden-questions") -> PromptSet:
    """Shen et al.'s forbidden question set: 13 OpenAI-policy scenarios x 30 questions. All are
    marked harmful because the paper counts an answer to any of them as a policy violation, though
    scenarios such as Financial Advice are only restricted, not dangerous."""
    columns = ["content_policy_id", "content_policy_name", "q_id", "question"]
    rows = read_table(path, columns, non_empty=columns)
    return PromptSet(
        name,
        tuple(
            PromptRecord(
                id=f"forbidden-questions/{row['content_policy_id']}-{row['q_id']}",
                text=row["question"],
                harmful=True,
                category=row["content_policy_name"],
                source="jailbreak_llms",
            )
            for row in rows
        ),
    )


def load_jailbreak_templates(path: Path, name: str = "jailbreak-templates") -> TemplateSet:
    """In-the-wild jailbreak prompts (JailbreakHub). Both releases: 2023-12-25 names the community
    `community`, 2023-05-07 names it `community_name`."""
    rows = read_table(path, ["platform", "source", "prompt"], non_empty=["prompt"])
    return TemplateSet(
        name,
        tuple(
            JailbreakTemplate(
                id=f"{name}/{i}",
                text=row["prompt"],
                platform=_optional(row["platform"]),
                source=_optional(row["source"]),
                community=_optional(row.get("community") or row.get("community_name")),
                date=_optional(row.get("date")),
            )
            for i, row in enumerate(rows, start=1)
        ),
    )


WILDJAILBREAK_TYPES = (
    "vanilla_harmful",
    "vanilla_benign",
    "adversarial_harmful",
    "adversarial_benign",
)


def load_wildjailbreak_train(path: Path, name: str = "wildjailbreak-train") -> PromptSet:
    """WildJailbreak train.tsv `vanilla, adversarial, completion, data_type`. The text is the
    adversarial prompt where there is one, else the vanilla one; the category is the data_type.
    The reference completion is not a target (harmful rows hold refusals), so it is not kept."""
    rows = read_table(
        path,
        ["vanilla", "adversarial", "completion", "data_type"],
        delimiter="\t",
        non_empty=["data_type"],
    )
    records = []
    for i, row in enumerate(rows, start=1):
        data_type = row["data_type"]
        if data_type not in WILDJAILBREAK_TYPES:
            raise UserError(
                f"{path} data row {i} has data_type {data_type!r}, "
                f"expected one of {', '.join(WILDJAILBREAK_TYPES)}."
            )
        text = row["adversarial"] if data_type.startswith("adversarial") else row["vanilla"]
        if not text.strip():
            column = "adversarial" if data_type.startswith("adversarial") else "vanilla"
            raise UserError(f"{path} data row {i} is {data_type} but has no {column!r} text.")
        records.append(
            PromptRecord(
                id=f"{name}/{i}",
                text=text,
                harmful=data_type.endswith("harmful"),
                category=data_type,
                source="wildjailbreak",
            )
        )
    return PromptSet(name, tuple(records))


def load_wildjailbreak_eval(path: Path, name: str = "wildjailbreak-eval") -> PromptSet:
    """WildJailbreak eval.tsv `adversarial, label, data_type` (label 1 = harmful)."""
    rows = read_table(
        path,
        ["adversarial", "label", "data_type"],
        delimiter="\t",
        non_empty=["adversarial", "label", "data_type"],
    )
    records = []
    for i, row in enumerate(rows, start=1):
        if row["label"] not in ("0", "1"):
            raise UserError(f"{path} data row {i} has label {row['label']!r}, expected 0 or 1.")
        records.append(
            PromptRecord(
                id=f"{name}/{i}",
                text=row["adversarial"],
                harmful=row["label"] == "1",
                category=row["data_type"],
                source="wildjailbreak",
            )
        )
    return PromptSet(name, tuple(records))


def load_self_instruct_seed(path: Path, name: str = "self-instruct-seed") -> PromptSet:
    """Self-Instruct's 175 human-written benign seed tasks (JSON lines). The first instance's
    input, where there is one, follows the instruction, as in the Alpaca prompt format."""
    records = []
    for row in read_jsonl(path, ["id", "instruction", "instances", "is_classification"]):
        instances = row["instances"]
        first_input = (
            instances[0].get("input", "") if isinstance(instances, list) and instances else ""
        )
        text = str(row["instruction"])
        if first_input.strip():
            text = f"{text}\n\n{first_input}"
        records.append(
            PromptRecord(
                id=f"{name}/{row['id']}",
                text=text,
                harmful=False,
                category="classification" if row["is_classification"] else "generation",
                source="self-instruct",
            )
        )
    return PromptSet(name, tuple(records))


PROMPT_FILE_SUFFIXES = (".csv", ".tsv", ".jsonl")
_TRUE = {"1", "true", "yes", "harmful", "unsafe"}
_FALSE = {"0", "false", "no", "harmless", "safe"}


def _harmful_value(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise UserError(f"{where} has harmful = {value!r}; use true/false, 1/0 or yes/no.")


def load_prompt_file(path: Path, *, text_column: str = "text",
                     harmful_default: bool = True) -> PromptSet:
    """A user's own requests: a .csv/.tsv with a `text` column, or .jsonl objects with a "text"
    (as `paradox prompts sample --out` writes them); `text_column` names another column.
    Optional columns: id, harmful (default `harmful_default`, true: a file of one's own mostly
    holds requests to attack), category, source, target, context."""
    suffix = path.suffix.lower()
    if suffix not in PROMPT_FILE_SUFFIXES:
        raise UserError(f"prompt file {path} must end in {', '.join(PROMPT_FILE_SUFFIXES)}.")
    rows: list[dict[str, object]]
    column = text_column if suffix == ".jsonl" else text_column.strip().lower()
    if suffix == ".jsonl":
        rows = read_jsonl(path, [column])
    else:
        rows = list(read_table(path, [column], delimiter="\t" if suffix == ".tsv" else ",",
                               non_empty=[column]))
    records = []
    for i, row in enumerate(rows, start=1):
        where = f"{path} {'record' if suffix == '.jsonl' else 'data row'} {i}"
        if not isinstance(row[column], str) or not row[column].strip():
            raise UserError(f"{where} needs a non-empty string {column}.")
        fields = {name: str(value) for name, value in row.items()
                  if value is not None and str(value).strip()}
        harmful = row.get("harmful")
        records.append(PromptRecord(
            id=fields.get("id", f"{path.stem}/{i}"), text=row[column],
            harmful=harmful_default if harmful in (None, "") else _harmful_value(harmful, where),
            category=fields.get("category", "user"), source=fields.get("source", path.name),
            target=fields.get("target"), context=fields.get("context")))
    return PromptSet(path.name, tuple(records))
