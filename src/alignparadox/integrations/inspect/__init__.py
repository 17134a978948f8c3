"""Inspect AI integration (`pip install alignparadox[inspect]`).

- `alignparadox/SPEC` model provider: any white-box target, plain, steered, ablated or
  orthogonalized, generating in-process (`provider`);
- one task per registered prompt set, scored by the toolkit's judges (`tasks`).

Inspect finds both through the `inspect_ai` entry point (`_registry`), so after installation
`inspect eval alignparadox/strongreject --model alignparadox/organism:aligned-5` just works.
"""
