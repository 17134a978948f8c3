"""Defenses against instruction injection that change the model: SecAlign preference training
(`secalign`, Chen et al. 2024) for any HF causal LM.

    config = SecAlignConfig(n_tasks=64, steps=100, beta=0.1)
    train_secalign("path/or/hub-id", load_tasks("my-train-tasks.jsonl"),
                   load_injections("canaries"), config, "out/")   # merged, plain HF folder
"""

from alignparadox.lazy import lazy_getattr

_P = "alignparadox.defenses.injection.secalign"
_EXPORTS = dict.fromkeys(("PairSet", "PreferencePair", "SecAlignConfig", "TrainingRecord",
                          "build_pairs", "train_pairs", "train_secalign", "training_tasks",
                          "without"), _P)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
