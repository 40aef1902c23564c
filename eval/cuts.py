"""Where a video cuts: the frame-difference peaks (the mean absolute pixel change between consecutive frames), and
whether the cuts landed where a multi-shot prompt asked for them (eval.md has no standard for it; this is the
measure of the multi-shot issue: "the generated video's frame-difference peak falls at the requested boundary").

A cut "at frame c" means frame c is the first frame of the new shot, so the peak is the difference between
frames c - 1 and c."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def frame_differences(video: torch.Tensor) -> torch.Tensor:
    """video [3, F, H, W] (any range) -> [F - 1]: mean |frame i+1 - frame i| over pixels and channels."""
    if video.ndim != 4 or video.shape[1] < 2:
        raise ValueError(f"video must be [3, F >= 2, H, W], got {tuple(video.shape)}")
    return (video[:, 1:] - video[:, :-1]).abs().float().mean(dim=(0, 2, 3))


def detected_cuts(video: torch.Tensor, count: int) -> list[int]:
    """The `count` frames that start a new shot by the largest frame differences, in order."""
    differences = frame_differences(video)
    return sorted(int(i) + 1 for i in differences.topk(min(count, len(differences))).indices)


def cuts_at(video: torch.Tensor, requested: Sequence[int], *, tolerance: int = 0) -> bool:
    """Whether the video's len(requested) largest frame-difference peaks are the requested cuts (each within
    `tolerance` frames)."""
    found = detected_cuts(video, len(requested))
    return len(found) == len(requested) and all(abs(f - r) <= tolerance for f, r in zip(found, sorted(requested),
                                                                                         strict=True))


def requested_cuts(pixel_frames: Sequence[int]) -> list[int]:
    """The frames that start shots 2, 3, ... of a video made of shots of these lengths."""
    return torch.tensor(list(pixel_frames)).cumsum(0)[:-1].tolist()
