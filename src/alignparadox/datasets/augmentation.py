"""Random character-level augmentations of a request, as in Best-of-N jailbreaking (Hughes et al.
2024, Appendix A.1): word scrambling, random capitals, character noise. Used by the Best-of-N
attack and, as pre-training-style noise, by organism training."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from alignparadox.errors import UserError


@dataclass(frozen=True)
class Augmentation:
    """Probabilities of the three text augmentations (the paper's values by default)."""

    scramble: float = 0.6
    capitalize: float = 0.6
    noise: float = 0.06

    @classmethod
    def from_sigma(cls, sigma: float) -> Augmentation:
        """The authors' code's single strength knob: sqrt(sigma), sqrt(sigma), sigma^3 (their
        sigma = 0.4 is about the paper's 0.6 / 0.6 / 0.06); smaller is gentler."""
        if not 0 <= sigma <= 1:
            raise UserError(f"augmentation sigma must be in [0, 1], got {sigma}.")
        return cls(math.sqrt(sigma), math.sqrt(sigma), sigma**3)

    def apply(self, text: str, rng: random.Random) -> str:
        words = []
        for word in text.split(" "):
            if len(word) > 3 and rng.random() < self.scramble:
                middle = list(word[1:-1])
                rng.shuffle(middle)
                word = word[0] + "".join(middle) + word[-1]
            words.append(word)
        characters = []
        for character in " ".join(words):
            if character.isalpha() and rng.random() < self.capitalize:
                character = character.upper()
            if 32 <= ord(character) <= 126 and rng.random() < self.noise:
                step = rng.choice((-1, 1))
                if not 32 <= ord(character) + step <= 126:
                    step = -step  # stay printable: the ends of the range move inwards
                character = chr(ord(character) + step)
            characters.append(character)
        return "".join(characters)
