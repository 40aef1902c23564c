"""Caption choice and dropout, shared by the raw and latent paths: one of a clip's captions uniformly, then the
empty prompt with probability `dropout` (what classifier-free guidance trains its unconditional branch on); and
the tags @Video1..@Video3 that name a sample's reference subjects and voices in its caption."""

import random
from collections.abc import Sequence

from wan_train.data.errors import SampleError

MAX_REFERENCES = 3  # prompt tags @Video1..@Video3: R2V subjects and their voices (the DiT's slots: models.dit.config)


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


def tag_caption(caption: str, names: Sequence[str], *, key: str) -> str:
    """`caption` with the first occurrence of names[k] replaced by @Video{k+1}. Longer names claim their text
    first; a name's occurrence inside an already claimed one does not count."""
    claimed: list[tuple[int, int, str]] = []  # (start, end, tag), character offsets into caption
    for slot, name in sorted(enumerate(names), key=lambda item: -len(item[1])):
        at = caption.find(name)
        while at >= 0 and any(at < end and start < at + len(name) for start, end, _ in claimed):
            at = caption.find(name, at + 1)
        if at < 0:
            raise SampleError("subject_not_in_caption", f"{key}: subject {name!r} is not in the caption {caption!r}")
        claimed.append((at, at + len(name), f"@Video{slot + 1}"))
    out, done = [], 0
    for start, end, tag in sorted(claimed):
        out += [caption[done:start], tag]
        done = end
    return "".join(out) + caption[done:]
