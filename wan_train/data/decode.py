"""Decode a clip with decord (PyAV where decord fails), reading only the frames it needs and letting the decoder
scale them, then crop to the bucket. Loader output is uint8 [F, H, W, 3], as decoded: a quarter of the bytes of
float32 through worker queues and host-to-device copies, and no channel transpose on the CPU (which costs as much
as the copy itself). `video_to_model` makes the VAE's input, float32 [B, 3, F, H, W] in [-1, 1], on the device."""

import contextlib
import io
import random
import signal
import threading

import numpy as np
import torch

from wan_train.data.buckets import Bucket
from wan_train.data.errors import SampleError
from wan_train.data.probe import open_video

CROPS = ("random", "centre")


def cover_size(width: int, height: int, bucket: Bucket) -> tuple[int, int]:
    """The smallest aspect-preserving size of a width x height video that covers the bucket."""
    scale = max(bucket.width / width, bucket.height / height)
    return max(bucket.width, round(width * scale)), max(bucket.height, round(height * scale))


@contextlib.contextmanager
def deadline(seconds: float, *, key: str):
    """Raise SampleError('timeout') if the body runs longer than `seconds`. Uses SIGALRM, so it only arms in a
    process's main thread (DataLoader workers run datasets there); elsewhere it is a no-op."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise SampleError("timeout", f"{key}: decoding took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def decode_frames(video: bytes, indices: list[int], *, size: tuple[int, int], key: str) -> np.ndarray:
    """uint8 [F, H, W, 3] of the given source frames scaled to size = (width, height). Each distinct frame is
    decoded once, in order (decord decodes forward from the nearest keyframe)."""
    unique = sorted(set(indices))
    try:
        batch = _read(video, unique, size=size, key=key)
    except SampleError as error:
        if error.reason != "undecodable":
            raise
        # decord's scaler rejects a few small widths (16, 24, 48, 72 px), and for some videos of those widths its
        # reader fails unscaled too ("Check failed: from_size == to_size"): decode unscaled, with PyAV if need be,
        # and resize here
        try:
            frames = _read(video, unique, size=(-1, -1), key=key)
        except SampleError as unscaled:
            if unscaled.reason != "undecodable":
                raise
            frames = _read_pyav(video, unique, key=key)
        batch = resize_frames(frames, size)
    if unique == indices:  # the usual case (source fps >= target fps): no 100 MB gather
        return batch
    position = {index: i for i, index in enumerate(unique)}
    return batch[[position[i] for i in indices]]


def _read(video: bytes, unique: list[int], *, size: tuple[int, int], key: str) -> np.ndarray:
    reader = open_video(video, name=key, width=size[0], height=size[1])
    if unique[-1] >= len(reader):
        raise SampleError("too_short", f"{key}: needs frame {unique[-1]}, the video has {len(reader)}")
    try:
        return reader.get_batch(unique).asnumpy()
    except Exception as error:
        raise SampleError("undecodable", f"{key}: decoding frames {unique[0]}..{unique[-1]} failed ({error})") from None


def _read_pyav(video: bytes, unique: list[int], *, key: str) -> np.ndarray:
    """uint8 [N, H, W, 3] of the frames at the sorted indices `unique`, in decode order, unscaled."""
    import av

    wanted, frames, decoded = set(unique), [], 0
    try:
        with av.open(io.BytesIO(video)) as container:
            for frame in container.decode(video=0):
                if decoded in wanted:
                    frames.append(frame.to_ndarray(format="rgb24"))
                decoded += 1
                if decoded > unique[-1]:
                    break
    except av.error.FFmpegError as error:
        raise SampleError("undecodable", f"{key}: neither decord nor PyAV decodes it ({error})") from None
    if len(frames) < len(unique):
        raise SampleError("too_short", f"{key}: needs frame {unique[-1]}, the video has {decoded}")
    return np.stack(frames)


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
