"""Robust (adversarial) training recipes for any HF causal LM, on plain behaviour data.

    data = BehaviourData(harmful=(HarmfulExample(request, refusal, completion), ...),
                         harmless=(HarmlessExample(request, answer), ...))
    model, result = train(target, data, LatConfig(epsilon=0.5, steps=200))
    train_checkpoint("path/or/hub-id", data, RRConfig(), "out/")   # merged, plain HF folder

- ReFAT (`RefatConfig`, `refat`): refusal fine-tuning with the refusal direction of each layer,
  refitted every few steps, ablated on a share of the harmful examples at a share of the layers.
- Targeted LAT (`LatConfig`, `lat`): PGD on the residual stream of harmful prompts towards the
  harmful completion; the model learns to refuse under it, plus a retain loss on harmless data.
- Representation rerouting / circuit breakers (`RRConfig`, `rr`): ReLU-of-cosine rerouting of
  harmful-text states at chosen layers, plus an L2 retain loss, LoRA by default.

Every recipe: LoRA (peft, merged at the end) or full fine-tuning (`adapter`), deterministic from
its seed, a progress bar, and resumable: with a state folder the run's state is saved every
`checkpoint_every` steps and a restarted run continues bit-identically from it.
"""

from alignparadox.lazy import lazy_getattr

_P = "alignparadox.defenses.robust_training"
_EXPORTS = {
    **dict.fromkeys(("CONFIGS", "METHODS", "make_config", "recipe_for", "train",
                     "train_checkpoint", "state_folder"), f"{_P}.api"),
    **dict.fromkeys(("RecipeConfig", "TrainResult", "edit_stream", "run_recipe",
                     "source_digest"), f"{_P}.common"),
    **dict.fromkeys(("DEFAULT_REFUSAL", "BehaviourData", "HarmfulExample", "HarmlessExample",
                     "load_behaviour_data"), f"{_P}.data"),
    "RefatConfig": f"{_P}.refat", "LatConfig": f"{_P}.lat", "RRConfig": f"{_P}.rr",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
