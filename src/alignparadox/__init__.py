"""alignparadox: measure the AI alignment paradox on Hugging Face models."""

__version__ = "0.1.0"
