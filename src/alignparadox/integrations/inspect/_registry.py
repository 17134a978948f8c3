"""What the `inspect_ai` entry point loads: the model provider and the prompt-set tasks."""

from __future__ import annotations

from inspect_ai.model import ModelAPI, modelapi

from alignparadox.integrations.inspect import tasks  # noqa: F401  (registers the tasks)


@modelapi(name="alignparadox")
def alignparadox() -> type[ModelAPI]:
    # Imported on first use: Inspect loads this module for any extension lookup, and the
    # provider pulls in torch and transformers.
    from alignparadox.integrations.inspect.provider import AlignParadoxAPI

    return AlignParadoxAPI
