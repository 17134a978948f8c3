"""Public prompt sets (StrongREJECT, AdvBench, HarmBench, JailbreakBench, XSTest, in-the-wild
jailbreaks, WildJailbreak, ...) as one record type, loaded from local files or their public URLs."""

from alignparadox.datasets.records import (
    JailbreakTemplate,
    PromptRecord,
    PromptSet,
    TemplateSet,
    normalise_text,
)
from alignparadox.datasets.registry import (
    DatasetSpec,
    datasets_root,
    load,
    load_prompt_set,
    load_templates,
    prompt_sets,
    register_prompt_set,
)

__all__ = [
    "DatasetSpec",
    "JailbreakTemplate",
    "PromptRecord",
    "PromptSet",
    "TemplateSet",
    "datasets_root",
    "load",
    "load_prompt_set",
    "load_templates",
    "normalise_text",
    "prompt_sets",
    "register_prompt_set",
]
