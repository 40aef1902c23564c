"""Prompts of audio-video models, in Ovi's convention (ovi_facts.md §4): words to be spoken between ``<S>`` and
``<E>``, the description of the sound between ``<AUDCAP>`` and ``<ENDAUDCAP>``, the rest describing the picture:

    A man at a desk says <S>We ship on Friday.<E> <AUDCAP>Calm male voice, keyboard clicks.<ENDAUDCAP>

The tags reach the text encoder as written (the model was trained on them); here they are only checked, so that a
typo does not silently become spoken text."""

from __future__ import annotations

import re
from collections.abc import Sequence

SPEECH = ("<S>", "<E>")
SOUND = ("<AUDCAP>", "<ENDAUDCAP>")
_TAG = re.compile(r"<(?:S|E|AUDCAP|ENDAUDCAP)>")
_LOOKALIKE = re.compile(r"<\s*/?\s*(?:s|e|audcap|endaudcap|aud_cap|end_audcap)\s*>", re.IGNORECASE)
HINT = "speech goes as <S>words<E>, the sound description as <AUDCAP>...<ENDAUDCAP>"


def check_av_prompts(prompts: Sequence[str]) -> None:
    for i, prompt in enumerate(prompts):
        problem = prompt_problem(prompt)
        if problem:
            raise ValueError(f"prompt {i + 1} ({_short(prompt)}): {problem} ({HINT})")


def prompt_problem(prompt: str) -> str | None:
    """What is wrong with the tags of one prompt, or None."""
    open_tag, open_at, captions = None, 0, 0
    for m in _TAG.finditer(prompt):
        tag = m.group()
        if tag in (SPEECH[0], SOUND[0]):
            if open_tag is not None:
                return f"{tag} at character {m.start()} opens inside {open_tag} (opened at character {open_at})"
            if tag == SOUND[0]:
                captions += 1
                if captions > 1:
                    return f"a second {SOUND[0]} at character {m.start()}: one sound description per prompt"
            open_tag, open_at = tag, m.start()
            continue
        expected = SPEECH[1] if open_tag == SPEECH[0] else SOUND[1] if open_tag == SOUND[0] else None
        if tag != expected:
            return (f"{tag} at character {m.start()} closes nothing" if open_tag is None else
                    f"{tag} at character {m.start()} cannot close {open_tag} (opened at character {open_at}); "
                    f"expected {expected}")
        if not prompt[open_at + len(open_tag):m.start()].strip():
            return f"{open_tag}{tag} at character {open_at} is empty"
        open_tag = None
    if open_tag is not None:
        closer = SPEECH[1] if open_tag == SPEECH[0] else SOUND[1]
        return f"{open_tag} at character {open_at} is not closed by {closer}"
    stray = [m for m in _LOOKALIKE.finditer(prompt) if not _TAG.fullmatch(m.group())]
    if stray:
        return f"{stray[0].group()!r} at character {stray[0].start()} is not a tag (tags are case-sensitive)"
    return None


def _short(prompt: str, limit: int = 60) -> str:
    return repr(prompt if len(prompt) <= limit else prompt[:limit - 3] + "...")
