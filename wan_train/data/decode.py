"""Decode a clip with decord (PyAV where decord fails), reading only the frames it needs and letting the decoder
scale them, in a process of its own that a deadline can kill and a memory bound caps (wan_train.data.decoder),
then crop to the bucket. Loader output is uint8 [F, H, W, 3], as decoded: a quarter of the bytes of
float32 through worker queues and host-to-device copies, and no channel transpose on the CPU (which costs as much
as the copy itself). `video_to_model` makes the VAE's input, float32 [B, 3, F, H, W] in [-1, 1], on the device."""

import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from wan_train.data.buckets import Bucket
from wan_train.data.decoder import decoder
from wan_train.data.errors import SampleError
from wan_train.data.metadata import ClipMeta

CROPS = ("random", "centre")


def cover_size(width: int, height: int, bucket: Bucket) -> tuple[int, int]:
    """The smallest aspect-preserving size of a width x height video that covers the bucket."""
    scale = max(bucket.width / width, bucket.height / height)
    return max(bucket.width, round(width * scale)), max(bucket.height, round(height * scale))


MIB = 1 << 20
# the least a sample's decoding may take whatever its bucket: the decoder's own frames of a 4K source (~100 MiB)
# must fit even when the clip is small
MEMORY_FLOOR = 256 * MIB


@dataclass
class Limits:
    """What one sample's decoding may take, over all its decodes (a clip, then its references): `seconds` of wall
    time from creation (<= 0: no limit) and `memory` bytes per decode (None: no limit)."""

    seconds: float
    memory: int | None = None
    start: float = field(default_factory=time.monotonic)
    frames: int | None = None  # bytes the decoded frames (uint8, at the size asked for) may take; None: no limit

    @classmethod
    def for_bucket(cls, bucket: Bucket, *, timeout: float, memory_factor: float) -> "Limits":
        """memory: `memory_factor` times the bucket's uint8 clip (frames x H x W x 3), at least MEMORY_FLOOR;
        frames: the same without the floor (the floor is the decoder's working room, not the clip's: a 4000x4
        stream covering a 96p bucket would be decoded at 96000x96)."""
        clip = bucket.frames * bucket.height * bucket.width * 3
        return cls(timeout, max(int(memory_factor * clip), MEMORY_FLOOR), frames=int(memory_factor * clip))

    def remaining(self, key: str) -> float | None:
        if self.seconds <= 0:
            return None
        left = self.seconds - (time.monotonic() - self.start)
        if left <= 0:
            raise SampleError("timeout", f"{key}: decoding took longer than {self.seconds:g} s")
        return left


def expected(meta: ClipMeta) -> dict:
    """What the metadata declares about the stream, for the decoder to check against the real one."""
    return {"width": meta.width, "height": meta.height, "fps": meta.fps, "num_frames": meta.num_frames}


def decode_frames(video: bytes, indices: list[int], *, size: tuple[int, int], key: str, expect: dict | None = None,
                  limits: Limits | None = None) -> np.ndarray:
    """uint8 [F, H, W, 3] of the given source frames scaled to size = (width, height) ((-1, -1): native), decoded
    in the decoding process (wan_train.data.decoder). Each distinct frame is decoded once, in order (decord decodes
    forward from the nearest keyframe). expect: the declared stream (`expected(meta)`); a stream whose real size,
    frame rate or length disagrees is refused (`metadata_mismatch`). limits: the sample's deadline and memory
    bound (`timeout`, `memory_limit`)."""
    return decode_clip(video, indices, size=size, key=key, expect=expect, limits=limits)[0]


def decode_clip(video: bytes, indices: list[int], *, size: tuple[int, int], key: str, expect: dict | None = None,
                limits: Limits | None = None, sound: dict | None = None,
                member: bytes = b"") -> tuple[np.ndarray, np.ndarray | None]:
    """decode_frames' frames, and with `sound` (wan_train.data.audio.sound_request) the clip's sound from the
    same decode: float32 [T], or [0] where the video has no sound stream (and no `member`, the bytes of the
    sound member the request names); its failures are `bad_audio` / `audio_too_short`, under the same deadline
    and memory bound."""
    unique = sorted(set(indices))
    limits = limits or Limits(0.0)
    request = {"key": key, "indices": unique, "size": list(size), "expect": expect, "memory": limits.memory,
               "frames_memory": limits.frames,
               "audio": None if sound is None else {**sound, "nbytes": len(member) if sound["member"] else 0}}
    try:
        reply, batch, audio = decoder().decode(video, request, timeout=limits.remaining(key), key=key,
                                               member=member if sound is not None and sound["member"] else b"")
    except TimeoutError:
        raise SampleError("timeout", f"{key}: decoding took longer than {limits.seconds:g} s; the decoding process "
                                     "was killed") from None
    if not reply["ok"]:
        raise SampleError(reply["reason"], reply["message"])
    if reply["resize"] is not None:
        batch = resize_frames(batch, tuple(reply["resize"]))
    if unique == indices:  # the usual case (source fps >= target fps): no 100 MB gather
        return batch, audio
    position = {index: i for i, index in enumerate(unique)}
    return batch[[position[i] for i in indices]], audio


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [N, H, W, 3] -> [N, size[1], size[0], 3], bilinear with antialiasing."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(size[1], size[0]), mode="bilinear", antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def video_to_model(video_BFHWC: torch.Tensor) -> torch.Tensor:
    """uint8 [B, F, H, W, 3] -> float32 [B, 3, F, H, W] in [-1, 1]."""
    return video_BFHWC.permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)


def crop_to_bucket(frames: np.ndarray, bucket: Bucket, *, mode: str, rng: random.Random) -> torch.Tensor:
    """[F, h, w, 3] uint8 (h, w covering the bucket) -> [F, H, W, 3] uint8, a view (collating copies it)."""
    _, h, w, _ = frames.shape
    dy, dx = h - bucket.height, w - bucket.width
    top, left = (rng.randint(0, dy), rng.randint(0, dx)) if mode == "random" else (dy // 2, dx // 2)
    return torch.from_numpy(frames[:, top:top + bucket.height, left:left + bucket.width])
