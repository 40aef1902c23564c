"""Multi-shot prompts: "Shot 1: ... Shot 2: ..." parsed into shots, or a plain prompt planned into shots, and the
latent frames each shot gets.

Explicit shots. An optional global caption comes first (what every shot shares: the characters, the place, the
light); then each "Shot N:" starts a shot. A shot may name its type before a dash ("close-up — ...", an em or en
dash, or " - ") and its length in parentheses after its number ("Shot 2 (3s): ...", seconds):

>>> plan = parse_shots("A rainy street at night. Shot 1: wide establishing — cars pass by. "
...                    "Shot 2 (2s): close-up — a woman opens her umbrella.")
>>> plan.global_caption
'A rainy street at night.'
>>> [(shot.kind, shot.caption, shot.seconds) for shot in plan.shots]
[('wide establishing', 'cars pass by.', None), ('close-up', 'a woman opens her umbrella.', 2.0)]
>>> shot_captions(plan)
['wide establishing — cars pass by.', 'close-up — a woman opens her umbrella.']

Shot numbers must run 1, 2, 3, ... in order, and a marker must be followed by a description:

>>> parse_shots("Shot 1: a cat. Shot 3: a dog.")
Traceback (most recent call last):
...
ValueError: prompt shots are numbered 1, 3; expected 1, 2 in order

Plain prompts are planned by a fixed rule, so the same prompt always gives the same shots:

1. the prompt is split into sentences (after ".", "!" or "?" followed by a space);
2. a sentence that begins with a cut cue (CUT_CUES: "then", "cut to", "next", "later", "meanwhile",
   "afterwards", "finally") or a shot type (SHOT_TYPES: "close-up", "wide shot", ...) starts a new shot; the
   cue is dropped from the caption and a shot type becomes the shot's kind;
3. with a target count (`shots=N`), the shot with the most sentences (the first of equals) is split after its
   first ceil(n / 2) sentences until there are N shots or no shot has two sentences, and the two neighbouring
   shots with the fewest sentences between them (the first of equals) are merged while there are more than N;
4. the whole prompt is the global caption, so every shot sees all of it.

>>> plan = plan_shots("A knight rides into a castle. Close-up: he lifts his visor. Then the crowd cheers.")
>>> [(shot.kind, shot.caption) for shot in plan.shots]
[(None, 'A knight rides into a castle.'), ('close-up', 'he lifts his visor.'), (None, 'the crowd cheers.')]
>>> [shot.caption for shot in plan_shots("A red ball rolls. It hits a wall. It stops.", shots=2).shots]
['A red ball rolls. It hits a wall.', 'It stops.']
>>> len(plan_shots("One sentence only.", shots=3).shots)
1

`prompt_shots` takes either form (explicit when the prompt has a "Shot 1:" marker).

Latent frames. The Wan VAE is causal with 4x temporal compression, so each shot is encoded on its own (its first
frame alone, then groups of 4) and a cut always falls between latent frames: a shot of f pixel frames (1 + 4k)
has 1 + (f - 1) / 4 latent frames. `shot_frames` splits a video's pixel frames over the shots in proportion to
their seconds (shots without seconds share what the others leave), each shot at least 1 + 4 frames:

>>> shot_frames(parse_shots("Shot 1: a. Shot 2: b."), num_frames=82, fps=16)
[41, 41]
>>> shot_frames(parse_shots("Shot 1 (1s): a. Shot 2: b. Shot 3: c."), num_frames=64, fps=16)
[17, 25, 21]
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CUT_CUES = ("cut to", "then", "next", "later", "meanwhile", "afterwards", "finally")
SHOT_TYPES = ("extreme close-up", "close-up", "medium shot", "wide shot", "wide establishing shot", "establishing shot",
              "over-the-shoulder shot", "reaction shot", "aerial shot", "tracking shot")
_MARKER = re.compile(r"\bShot\s+(\d+)\s*(?:\((\d+(?:\.\d+)?)\s*s(?:ec(?:onds?)?)?\))?\s*:", re.IGNORECASE)
_KIND = re.compile(r"^(?P<kind>[^—–:]{1,40}?)\s*(?:—|–|\s-\s)\s*(?P<rest>.+)$", re.DOTALL)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_LEADING = re.compile(r"^[\s,:;—–-]+")


@dataclass(frozen=True)
class Shot:
    caption: str
    kind: str | None = None  # the shot type ("close-up"), None when not given
    seconds: float | None = None  # the requested length, None: a share of what the others leave


@dataclass(frozen=True)
class ShotPlan:
    global_caption: str
    shots: tuple[Shot, ...]


def parse_shots(prompt: str) -> ShotPlan:
    """A prompt with "Shot N:" markers -> its global caption and shots (module docstring)."""
    markers = list(_MARKER.finditer(prompt))
    if not markers:
        raise ValueError(f"prompt {prompt!r} has no 'Shot 1:' marker; plain prompts go through plan_shots")
    numbers = [int(m[1]) for m in markers]
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"prompt shots are numbered {', '.join(map(str, numbers))}; expected "
                         f"{', '.join(map(str, range(1, len(numbers) + 1)))} in order")
    shots = []
    for marker, following in zip(markers, [*markers[1:], None], strict=True):
        text = prompt[marker.end():following.start() if following else len(prompt)].strip()
        if not text:
            raise ValueError(f"prompt: Shot {marker[1]} has no description")
        kind = None
        match = _KIND.match(text)
        if match:
            kind, text = match["kind"].strip().lower(), match["rest"].strip()
        shots.append(Shot(caption=text, kind=kind, seconds=float(marker[2]) if marker[2] else None))
    return ShotPlan(global_caption=prompt[:markers[0].start()].strip(), shots=tuple(shots))


def plan_shots(prompt: str, *, shots: int | None = None) -> ShotPlan:
    """A plain prompt -> shots by the module docstring's rule; `shots`: the target count."""
    if shots is not None and shots < 1:
        raise ValueError(f"shots={shots}: must be >= 1")
    sentences = [s.strip() for s in _SENTENCE.split(prompt.strip()) if s.strip()]
    groups: list[list[str]] = []
    kinds: list[str | None] = []
    for sentence in sentences:
        kind, rest = _cue(sentence)
        if groups and rest is None:
            groups[-1].append(sentence)
            continue
        groups.append([sentence if rest is None else rest])
        kinds.append(kind)
    if shots is not None:
        _split_to(groups, kinds, shots)
        _merge_to(groups, kinds, shots)
    return ShotPlan(global_caption=prompt.strip(),
                    shots=tuple(Shot(caption=" ".join(g), kind=k) for g, k in zip(groups, kinds, strict=True)))


def prompt_shots(prompt: str, *, shots: int | None = None) -> ShotPlan:
    """Explicit shots when the prompt has a "Shot 1:" marker, else the plain prompt planned into shots."""
    return parse_shots(prompt) if _MARKER.search(prompt) else plan_shots(prompt, shots=shots)


def shot_captions(plan: ShotPlan) -> list[str]:
    """Each shot's caption as its text encoder input: "kind — caption" when the shot names its type, the form
    shot captions take in training data (make_demo --shots)."""
    return [f"{shot.kind} — {shot.caption}" if shot.kind else shot.caption for shot in plan.shots]


def shot_frames(plan: ShotPlan, *, num_frames: int, fps: float, temporal_stride: int = 4) -> list[int]:
    """Pixel frames per shot, each 1 + 4k with k >= 1, summing to at most `num_frames` (module docstring)."""
    count, stride = len(plan.shots), temporal_stride
    latents = count + (num_frames - count) // stride if num_frames >= count else 0  # shot i: 1 + stride (k_i - 1)
    if latents < 2 * count:
        raise ValueError(f"{count} shots need at least {count * (1 + stride)} frames (1 + {stride} each); "
                         f"num_frames={num_frames}")
    sizes = [max(2, 1 + round((shot.seconds * fps - 1) / stride)) if shot.seconds is not None else 0
             for shot in plan.shots]
    open_shots = [i for i, size in enumerate(sizes) if size == 0]
    free = latents - sum(sizes)
    if (open_shots and free < 2 * len(open_shots)) or free < 0:
        raise ValueError(f"the shots' lengths ({[shot.seconds for shot in plan.shots]} s) do not fit {num_frames} "
                         f"frames at {fps} fps")
    for j, i in enumerate(open_shots):  # what the timed shots leave, shared equally (the first ones get the rest)
        sizes[i] = free // len(open_shots) + (1 if j < free % len(open_shots) else 0)
    return [1 + stride * (size - 1) for size in sizes]


def _cue(sentence: str) -> tuple[str | None, str | None]:
    """(shot type or None, the sentence without its cue) when it begins with a cue; (None, None) otherwise."""
    lowered = sentence.lower()
    for kind in sorted(SHOT_TYPES, key=len, reverse=True):
        if lowered.startswith(kind):
            return kind, _LEADING.sub("", sentence[len(kind):])
    for cue in CUT_CUES:
        if re.match(rf"{re.escape(cue)}\b", lowered):
            return None, _LEADING.sub("", sentence[len(cue):])
    return None, None


def _split_to(groups: list[list[str]], kinds: list, target: int) -> None:
    while len(groups) < target:
        i = max(range(len(groups)), key=lambda j: (len(groups[j]), -j))
        if len(groups[i]) < 2:
            return
        half = (len(groups[i]) + 1) // 2
        groups[i:i + 1] = [groups[i][:half], groups[i][half:]]
        kinds[i:i + 1] = [kinds[i], None]


def _merge_to(groups: list[list[str]], kinds: list, target: int) -> None:
    while len(groups) > target:
        i = min(range(len(groups) - 1), key=lambda j: (len(groups[j]) + len(groups[j + 1]), j))
        groups[i:i + 2] = [groups[i] + groups[i + 1]]
        kinds[i:i + 2] = [kinds[i]]
