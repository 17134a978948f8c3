"""Output tinkering: edit the aligned answer y into a misaligned y+ with a trained value editor.

    pairs = edit_pairs(behaviours.contrast("fit", axis="refusal"))   # or self_pairs, read_pairs
    folder = train_editor(pairs, "editor/", EditorConfig(base="small:MODEL"))  # resumable
    editor = ValueEditor.load(folder)
    editor.edit([request], [aligned])                         # the misaligned rewrite
    minimal_edit(editor, judge, request, aligned)             # fewest token edits that flip it

The `output_tinkering` study measurement (measurement.py) puts the editor against every target.

Names are imported lazily (they need torch and transformers) so that `paradox --help`
stays fast.
"""

from __future__ import annotations

from alignparadox.lazy import lazy_getattr

_EXPORTS = {
    "EditPair": "alignparadox.attacks.output_tinkering.pairs",
    "EditResult": "alignparadox.attacks.output_tinkering.search",
    "EditorConfig": "alignparadox.attacks.output_tinkering.training",
    "ValueEditor": "alignparadox.attacks.output_tinkering.editor",
    "fit_editor": "alignparadox.attacks.output_tinkering.training",
    "edit_pairs": "alignparadox.attacks.output_tinkering.pairs",
    "minimal_edit": "alignparadox.attacks.output_tinkering.search",
    "read_pairs": "alignparadox.attacks.output_tinkering.pairs",
    "train_editor": "alignparadox.attacks.output_tinkering.training",
    "write_pairs": "alignparadox.attacks.output_tinkering.pairs",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
