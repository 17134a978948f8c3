"""Input tinkering: edit the prompt x into x+ so that the target answers misaligned.

One module per attack (templates, pair, best_of_n, gcg) over the shared interface in `base`.
Modules import torch and transformers lazily, so importing an attack stays cheap.
"""
