"""The sound of a training clip (data.audio): mono float32 at the audio autoencoder's rate, exactly the clip's time
span. A clip of F frames at `fps` whose first frame is shown at `start` seconds (stored video) covers
[start, start + F / fps); its sound is samples round(start * rate) .. + round(F / fps * rate) of the sample's
sound, where sample k is heard at k / rate seconds after the video's frame 0.

The sound comes from a `.wav` / `.flac` member of the sample where it has one (its time 0 is the video's), else
from the video's own first sound stream; it is decoded in the decoding process (wan_train.data.decoder_child:
the sample's deadline and memory bound hold for it too). A sample without either has no sound: its clip gets an
empty waveform and `has_audio` False (flagged `no_audio`, trained), never invented silence. A sound that does not
decode is skipped as `bad_audio`, one that does not cover the clip as `audio_too_short` (a stream at most one
video frame short at the end is padded with zeros there).

Item / batch keys beside VideoSource's:
  audio      float32 [T] / [B, T]: T = clip_samples(F); an item without sound has [0], zero-filled in the batch
  has_audio  bool [] / [B]"""

import torch

SAMPLE_RATE = 16000  # the audio autoencoder's (wan_train.models.audio); cache_latents passes the model's own
AUDIO_EXTENSIONS = ("wav", "flac")  # sound members of a sample, in the order they are looked for


def clip_samples(frames: int, *, fps: float, rate: int) -> int:
    """Sound samples of a clip of `frames` frames at `fps`."""
    return round(frames / fps * rate)


def sound_request(start: float, *, frames: int, fps: float, rate: int, member: str | None,
                  voices: tuple[float, ...] = (), voice_samples: int = 0) -> dict:
    """The decoding process's `audio` request for a clip (see decoder_child.read_sound): its span in samples and
    the tolerance at its end, one video frame; with `voices` (starts, seconds) also those spans of
    `voice_samples` samples each (wan_train.data.voices), returned after the clip's."""
    request = {"rate": rate, "start": round(start * rate), "samples": clip_samples(frames, fps=fps, rate=rate),
               "tolerance": round(rate / fps), "member": member}
    if voices:
        request.update(voices=[round(v * rate) for v in voices], voice_samples=voice_samples)
    return request


def sound_member(sample: dict) -> tuple[str, bytes] | None:
    """(extension, bytes) of the sample's sound member, if it has one."""
    return next(((ext, sample[ext]) for ext in AUDIO_EXTENSIONS if ext in sample), None)


def collate_audio(items: list[dict], *, samples: int) -> dict[str, torch.Tensor]:
    """audio float32 [B, samples] (zeros where an item has none) and has_audio bool [B]."""
    audio = torch.zeros(len(items), samples)
    for b, item in enumerate(items):
        if item["has_audio"]:
            audio[b] = item["audio"]
    return {"audio": audio, "has_audio": torch.tensor([bool(item["has_audio"]) for item in items])}
