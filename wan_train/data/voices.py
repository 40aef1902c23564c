"""Reference voices (data.voices): with its sound, each sample of an audio-video run also gets up to `voices`
stretches of `voice_seconds` of sound from elsewhere in its own source video: the voice of the same speaker or
source, as a generation later gets it from a file (generate.py voices=[...]). The audio tower's reference-voice
slots (model.audio_references) read them as clean latents with timestep 0 and no loss.

Which sound fills slot k (the k-th voice, of the subject tagged @Video{k+1} in the caption):
- speakers: the metadata's subjects with recorded `speech` (the stretches where each is heard, e.g. from speaker
  diarization), up to `voices` of them in random order, each tagged in the caption as R2V tags its subjects (a
  name missing from the caption skips the sample, `subject_not_in_caption`); slot k is cut from the k-th one's
  speech. An R2V sample's speakers are its own subjects in their slots, tagged already.
- where no subject has recorded speech and the metadata names at most one, slot 1 is the source's sound from
  another moment: the source is its own one speaker (a narrator, one singer, one machine), and its one subject,
  if it names one, is tagged @Video1;
- else a slot is absent: in a video with two speakers and no record of who is heard when, a stretch of its sound
  would be anyone's voice.
- moment: a stretch of the sound's recorded span (metadata `audio`, else the window) at least `voice_gap` seconds
  from the clip on either side, inside the speaker's speech where there is a record; never overlapping the clip.
  Where none holds `voice_seconds`, the slot is absent and the sample flagged `no_voice_moment` (it still
  trains, its voice guidance unconditioned).
- dropout: with probability `voice_dropout` all of a sample's voices are absent (not decoded): the voice-free
  branch of the guidance over voices.
The voices are cut in the same decode as the clip's sound (wan_train.data.decoder_child.read_sound), under the
same deadline and memory bound; a sample without sound has no voices either.

Item / batch keys beside the sound's (wan_train.data.audio):
  audio_refs      float32 [V, S] / [B, V, S]: S = round(voice_seconds * rate) samples per voice, zero where absent
  audio_ref_mask  bool [V] / [B, V]
  voice_starts    per sample, each voice's start (seconds, stored video) or None where it is absent"""

import random
from collections.abc import Sequence

import numpy as np
import torch

from wan_train.data.captions import MAX_REFERENCES
from wan_train.data.errors import SampleError
from wan_train.data.metadata import ClipMeta, Subject

_EPS = 1e-6


def check_voice_options(*, voices: int, seconds: float, gap: float, dropout: float) -> None:
    """ValueError naming the data.* key of the first bad voice option."""
    if not 0 <= voices <= MAX_REFERENCES:
        raise ValueError(f"data.voices={voices}: must be 0 (off) to {MAX_REFERENCES}, one per reference slot "
                         f"@Video1..@Video{MAX_REFERENCES}")
    if not seconds > 0:
        raise ValueError(f"data.voice_seconds={seconds}: must be > 0 seconds")
    if not gap >= 0:
        raise ValueError(f"data.voice_gap={gap}: must be >= 0 seconds")
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"data.voice_dropout={dropout}: must be in [0, 1]")


def choose_speakers(meta: ClipMeta, subjects: Sequence[Subject] | None, *, voices: int,
                    rng: random.Random) -> tuple[list[Subject | bool | None], list[Subject]]:
    """What fills each of the `voices` slots: a Subject (cut from its speech), True (the source's sound, anywhere)
    or None (absent); and the subjects to tag @Video1.. in the caption, in slot order. `subjects`: an R2V sample's
    own, in slot order (its caption is tagged already), None for a sample without R2V."""
    alone = len(meta.subjects) <= 1
    if subjects is not None:
        slots = [s if s.speech else (True if k == 0 and alone else None) for k, s in enumerate(subjects[:voices])]
        return slots + [None] * (voices - len(slots)), []
    speaking = [s for s in meta.subjects if s.speech]
    if speaking:
        chosen = rng.sample(speaking, min(voices, len(speaking)))
        return [*chosen] + [None] * (voices - len(chosen)), chosen
    if alone:  # the source is its own one speaker; its one subject, if it names one, is who is heard
        return [True] + [None] * (voices - 1), list(meta.subjects)
    return [None] * voices, []


def sound_span(meta: ClipMeta) -> tuple[float, float]:
    """Where the sample's sound may be cut from (seconds): its window, within the recorded sound where known."""
    start, end = meta.window
    if meta.audio is not None:
        start, end = max(start, meta.audio.start), min(end, meta.audio.end)
    return start, end


def voice_spans(meta: ClipMeta, speaker: Subject | bool, *, target: tuple[float, float],
                gap: float) -> list[tuple[float, float]]:
    """The intervals (seconds) a voice of `speaker` may lie in: the sound's span (inside the speaker's speech
    where recorded) less [t0 - gap, t1 + gap] around the clip's display interval `target` = (t0, t1)."""
    low, high = sound_span(meta)
    stretches = speaker.speech if isinstance(speaker, Subject) else ((low, high),)
    t0, t1 = target
    out = []
    for a, b in stretches:
        a, b = max(a, low), min(b, high)
        out += [(a, min(b, t0 - gap)), (max(a, t1 + gap), b)]
    return [(a, b) for a, b in out if b - a > _EPS]


def choose_voice_start(spans: list[tuple[float, float]], *, seconds: float, rate: int,
                       rng: random.Random) -> float | None:
    """A start (seconds, on the `rate` sample grid) of `seconds` of sound inside one of `spans`, uniform over all
    the starts they allow; None where none holds it."""
    options = []  # (first, last) sample index of a start, per span
    length = round(seconds * rate)
    for a, b in spans:
        first, last = int(-(-a * rate // 1)), int((b * rate + _EPS) // 1) - length
        if last >= first:
            options.append((first, last))
    if not options:
        return None
    total = sum(last - first + 1 for first, last in options)
    pick = rng.randrange(total)
    for first, last in options:
        if pick <= last - first:
            return (first + pick) / rate
        pick -= last - first + 1
    raise AssertionError("unreachable")


def plan_voices(meta: ClipMeta, subjects: Sequence[Subject] | None, *, voices: int, target: tuple[float, float],
                seconds: float, gap: float, dropout: float, rate: int, rng: random.Random,
                key: str) -> tuple[list[float | None], list[Subject], list[tuple[str, str]]]:
    """Each slot's voice start (None: absent), the subjects to tag in the caption (choose_speakers) and the flags
    to raise (`no_voice_moment`). All draws come from `rng`: the speakers, the dropout, then one start per slot
    that has a speaker. A dropped sample keeps its tags (the voice-free branch of the guidance)."""
    slots, tagged = choose_speakers(meta, subjects, voices=voices, rng=rng)
    if rng.random() < dropout:
        return [None] * voices, tagged, []
    starts: list[float | None] = []
    flags = []
    for k, speaker in enumerate(slots):
        if speaker is None:
            starts.append(None)
            continue
        start = choose_voice_start(voice_spans(meta, speaker, target=target, gap=gap), seconds=seconds, rate=rate,
                                   rng=rng)
        if start is None:
            whose = f"{speaker.name!r}'s speech" if isinstance(speaker, Subject) else "the sound"
            flags.append(("no_voice_moment", f"{key}: no {seconds:g} s of {whose} {gap:g} s away from the clip at "
                                             f"{target[0]:.3f} s for voice {k + 1}: trained without it"))
        starts.append(start)
    return starts, tagged, flags


def split_voices(sound: np.ndarray, *, clip: int, starts: list[float | None], samples: int,
                 key: str) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """The decode's float32 sound (the clip's `clip` samples, then each present voice's `samples`) -> (the clip's
    sound, audio_refs [V, samples] zero where absent, audio_ref_mask [V]). A sample without sound ([0]) has no
    voices."""
    refs = torch.zeros(len(starts), samples)
    mask = torch.zeros(len(starts), dtype=torch.bool)
    if not sound.size:
        return sound, refs, mask
    present = [k for k, s in enumerate(starts) if s is not None]
    if sound.size != clip + samples * len(present):
        raise SampleError("bad_audio", f"{key}: the decode gave {sound.size} sound samples for a {clip}-sample clip "
                                       f"and {len(present)} voices of {samples}")
    for n, k in enumerate(present):
        refs[k] = torch.from_numpy(sound[clip + n * samples:clip + (n + 1) * samples])
        mask[k] = True
    return sound[:clip], refs, mask


def collate_voices(items: list[dict]) -> dict:
    return {"audio_refs": torch.stack([item["audio_refs"] for item in items]),
            "audio_ref_mask": torch.stack([item["audio_ref_mask"] for item in items]),
            "voice_starts": [item["voice_starts"] for item in items]}
