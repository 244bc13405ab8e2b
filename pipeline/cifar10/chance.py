"""Chance level: what a model that only guesses scores on CIFAR-10's ten balanced classes."""

from __future__ import annotations

NUM_CLASSES = 10
CHANCE_ACCURACY = 1 / NUM_CLASSES
# A validation accuracy within this margin of guessing means nothing was learned.
LEARNED_MARGIN = 0.01


def at_chance(accuracy: float) -> bool:
    """True when `accuracy` is no better than guessing (≤ 0.11 for ten classes)."""
    return accuracy <= CHANCE_ACCURACY + LEARNED_MARGIN
