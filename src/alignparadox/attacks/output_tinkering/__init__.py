"""Output tinkering: edit the aligned answer y into a misaligned y+ with a trained value editor.

    pairs = ground_truth_pairs(requests)                      # or self_pairs(...), read_pairs(f)
    folder = train_editor(pairs, "editor/", EditorConfig())   # resumable, deterministic
    editor = ValueEditor.load(folder)
    editor.edit([request], [aligned])                         # the misaligned rewrite
    minimal_edit(editor, judge, request, aligned)             # fewest token edits that flip it

The `output_tinkering` study measurement (measurement.py) puts the editor against every organism.
"""

from alignparadox.attacks.output_tinkering.editor import ValueEditor
from alignparadox.attacks.output_tinkering.pairs import (
    EditPair,
    ground_truth_pairs,
    read_pairs,
    write_pairs,
)
from alignparadox.attacks.output_tinkering.search import EditResult, minimal_edit
from alignparadox.attacks.output_tinkering.training import EditorConfig, fit_editor, train_editor

__all__ = [
    "EditPair",
    "EditResult",
    "EditorConfig",
    "ValueEditor",
    "fit_editor",
    "ground_truth_pairs",
    "minimal_edit",
    "read_pairs",
    "train_editor",
    "write_pairs",
]
