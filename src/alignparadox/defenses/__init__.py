"""Defenses: Best-of-N sampling with latent attribution to the pre-alignment model
(`defenses.best_of_n`), and robust (adversarial) training (`defenses.robust_training`)."""
