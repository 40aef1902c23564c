"""Caption choice and dropout, shared by the raw and latent paths: one of a clip's captions uniformly, then the
empty prompt with probability `dropout` (what classifier-free guidance trains its unconditional branch on)."""

import random


def choose_caption(count: int, *, dropout: float, rng: random.Random) -> int | None:
    """Index of the caption to use, or None for the empty prompt. Both draws always happen, so the choice for
    a sample does not depend on the dropout rate's effect on the generator."""
    index = rng.randrange(count)
    return None if rng.random() < dropout else index
