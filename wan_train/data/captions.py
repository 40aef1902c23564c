"""Caption choice and dropout, shared by the raw and latent paths: one of a clip's captions uniformly, then the
empty prompt with probability `dropout` (what classifier-free guidance trains its unconditional branch on)."""

import random


def choose_caption(count: int, *, dropout: float, rng: random.Random) -> int | None:
    """Index of the caption to use, or None for the empty prompt. Both draws always happen, so the choice for
    a sample does not depend on the dropout rate's effect on the generator."""
    index = rng.randrange(count)
    return None if rng.random() < dropout else index


def caption_flags(captions: tuple[str, ...] | list[str], *, key: str) -> list[tuple[str, str]]:
    """(flag, detail) for a sample trained despite something the user should know: empty (or whitespace-only)
    captions train the unconditional branch whenever they are chosen."""
    empty = sum(not caption.strip() for caption in captions)
    if not empty:
        return []
    which = "its caption is" if len(captions) == 1 else f"{empty} of its {len(captions)} captions are"
    return [("empty_caption", f"{key}: {which} empty: trained as the unconditional branch (the empty prompt)")]
