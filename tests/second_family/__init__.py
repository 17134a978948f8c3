"""A second small chat-model family that `alignparadox.organisms` knows nothing about (tests only).

    family = build()                        # cached in $ALIGNPARADOX_CACHE/second-family/<hash>
    family.member("safe-3").path            # a plain HF folder: GPT-NeoX, ChatML, <|im_end|>
    family.prompts("test") / "xstest" / "xstest_prompts.csv"   # public-format prompt files
"""

from .build import Config, Member, SecondFamily, build

__all__ = ["Config", "Member", "SecondFamily", "build"]
