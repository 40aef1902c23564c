"""Weight-free audio-visual sync metrics of a video and its sound (signals: eval.av_signals).

- `av_offset`: the offset of the sound against the picture, in video frames, **positive = the sound is late** (a
  visual event at frame k is heard at frame k + offset). The normalised cross-correlation (Pearson's r over the
  overlap) of the motion energy m and the per-frame onset envelope a at each lag d: r(d) = corr(m[t], a[t + d]),
  for |d| <= max_shift and at most half the clip (shorter overlaps are left out); the offset is the lag of the
  largest r (ties: the smallest |d|). Its confidence is a z-score of that peak against null peaks, each the largest
  r over the same lags for a sound that does not belong to the picture:
  - with `others` (at least MIN_OTHERS other clips' sounds, e.g. the rest of a batch): the video against each;
  - alone: the sound's per-frame envelope cut into blocks of BLOCK frames, the blocks shuffled (NULLS seeded
    permutations, never the identity), which keeps the sound's rhythm and loses its timing.
  A picture or a sound with nothing happening (constant signal) gives offset 0 and confidence 0.
- `onset_scores`: precision / recall / F1 of the audio onsets against the visual events, both picked per video
  frame (eval.av_signals.pick_peaks), matched one-to-one within `tolerance` frames (the most matches possible).
  Precision: the share of onsets with a visual event; recall: the share of visual events that are heard. Either
  set empty: all three 0 (mir_eval's convention).
- `av_align`: AV-Align (Yariv et al., "Diverse and Aligned Audio-to-Video Generation via Text-to-Video Model
  Adaptation", AAAI 2024; guyyariv/TempoTokens `av_align.py`): video peaks are the strict local maxima of the
  motion trajectory (its first value repeats the second, as there), audio peaks the onset times (seconds); an
  audio peak is a hit when a video peak lies strictly within 1 / fps of it; AV-Align = hits / (audio peaks + video
  peaks - hits), the IoU of the two peak sets. Differences from TempoTokens: the motion is the frame difference
  (eval.av_signals.motion_energy), not Farnebäck optical flow; the onsets are pick_peaks on our spectral flux at the
  STFT hop, not librosa's onset_detect; and a video peak takes at most one hit (TempoTokens lets several onsets
  hit the same video peak, which can push its IoU above 1); both peak sets empty: 0.

Shapes: video [3, F, H, W] in [-1, 1], audio [T] float at `sample_rate` Hz, fps frames per second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from eval.av_signals import frame_onsets, motion_energy, onset_envelope, pick_peaks, strict_maxima

MAX_SHIFT = 15  # frames either way (SyncNet's vshift in Wav2Lip's evaluation)
BLOCK = 4  # frames per block of the shuffled-sound null
NULLS = 100  # shuffled sounds per clip
MIN_OTHERS = 2  # other clips' sounds needed for the mismatched-pair null (fewer: the shuffled-block null)
TOLERANCE = 1  # frames, onset matching


@dataclass(frozen=True)
class Offset:
    frames: int  # positive: the sound comes that many video frames after the picture
    confidence: float  # z-score of the peak correlation against the null peaks
    lags: torch.Tensor  # int [L]: the lags searched, -s..s with s = min(max_shift, F // 2)
    curve: torch.Tensor  # float64 [L]: Pearson's r of motion[t] and onsets[t + lag]
    null: str  # "others" (mismatched pairs) | "blocks" (shuffled blocks of the same sound)


def lagged_correlation(motion: torch.Tensor, onsets: torch.Tensor, *, lags: torch.Tensor) -> torch.Tensor:
    """Pearson's r of motion[t] and onsets[..., t + d] over the frames where both exist, per lag d:
    motion [F], onsets [F] or [K, F] -> [L] or [K, L]; 0 where either side is constant over the overlap."""
    frames, out = motion.numel(), []
    for d in lags.tolist():
        m = motion[max(0, -d):frames - max(0, d)].double()
        a = onsets[..., max(0, d):frames + min(0, d)].double()
        m, a = m - m.mean(), a - a.mean(-1, keepdim=True)
        norm = (m.square().sum() * a.square().sum(-1)).sqrt()
        out.append(torch.where(norm > 1e-12, (m * a).sum(-1) / norm.clamp_min(1e-12), 0.0))
    return torch.stack(out, -1) if out else torch.zeros((*onsets.shape[:-1], 0), dtype=torch.float64)


def search_lags(frames: int, *, max_shift: int) -> torch.Tensor:
    shift = min(max_shift, frames // 2)
    return torch.arange(-shift, shift + 1)


def best_lag(curve: torch.Tensor, *, lags: torch.Tensor) -> int:
    """The lag of the largest value; ties go to the smallest |lag|, then the negative one."""
    order = sorted(range(len(lags)), key=lambda i: (-float(curve[i]), abs(int(lags[i])), int(lags[i])))
    return int(lags[order[0]])


def shuffled_blocks(onsets: torch.Tensor, *, block: int = BLOCK, count: int = NULLS, seed: int = 0) -> list:
    """`count` copies of onsets [F] with its blocks of `block` frames in seeded random orders other than the
    original one (none when there are fewer than 2 blocks)."""
    blocks = list(onsets.split(block))
    if len(blocks) < 2:
        return []
    generator, out = torch.Generator().manual_seed(seed), []
    identity = list(range(len(blocks)))
    while len(out) < count:
        order = torch.randperm(len(blocks), generator=generator).tolist()
        if order != identity:
            out.append(torch.cat([blocks[i] for i in order]))
    return out


def offset_from_signals(motion: torch.Tensor, onsets: torch.Tensor, *, max_shift: int = MAX_SHIFT,
                        others: Sequence[torch.Tensor] = ()) -> Offset:
    """av_offset on precomputed signals: motion [F], onsets [F], others: other sounds' per-frame envelopes [F]."""
    lags = search_lags(motion.numel(), max_shift=max_shift)
    curve = lagged_correlation(motion, onsets, lags=lags)
    null = "others" if len(others) >= MIN_OTHERS else "blocks"
    nulls = list(others) if null == "others" else shuffled_blocks(onsets)
    if not curve.any():  # nothing moves or nothing sounds (or the clip is too short to search)
        return Offset(0, 0.0, lags, curve, null)
    if not nulls:
        return Offset(best_lag(curve, lags=lags), 0.0, lags, curve, null)
    peak = float(curve.max())
    null_peaks = lagged_correlation(motion, torch.stack(nulls), lags=lags).amax(-1)
    spread = float(null_peaks.std()) if null_peaks.numel() > 1 else 0.0
    confidence = (peak - float(null_peaks.mean())) / max(spread, 1e-6)
    return Offset(best_lag(curve, lags=lags), confidence, lags, curve, null)


def av_offset(video: torch.Tensor, audio: torch.Tensor, *, fps: float, sample_rate: int, max_shift: int = MAX_SHIFT,
              others: Sequence[torch.Tensor] = ()) -> Offset:
    """The sound's offset against the picture in video frames (positive: sound late), its cross-correlation curve
    and confidence; `others`: other clips' sounds [T'] (at `sample_rate`) as the null when there are at least
    MIN_OTHERS, else shuffled blocks of this sound (module docstring)."""
    frames = video.shape[1]
    envelopes = [frame_onsets(o, sample_rate=sample_rate, fps=fps, frames=frames) for o in others]
    return offset_from_signals(motion_energy(video), frame_onsets(audio, sample_rate=sample_rate, fps=fps,
                                                                  frames=frames), max_shift=max_shift, others=envelopes)


def match_count(estimates: Sequence[float], references: Sequence[float], *, tolerance: float,
                strict: bool = False) -> int:
    """The most one-to-one pairs with |estimate - reference| <= tolerance (< with `strict`), greedy over both sorted
    lists, which is optimal for points on a line."""
    a, b = sorted(estimates), sorted(references)
    i = j = matched = 0
    while i < len(a) and j < len(b):
        gap = abs(a[i] - b[j])
        if gap < tolerance or (gap == tolerance and not strict):
            matched, i, j = matched + 1, i + 1, j + 1
        elif a[i] < b[j]:
            i += 1
        else:
            j += 1
    return matched


def onset_scores_from_signals(motion: torch.Tensor, onsets: torch.Tensor, *, fps: float,
                              tolerance: int = TOLERANCE) -> dict[str, float]:
    """onset precision / recall / F1 of per-frame signals motion [F] and onsets [F] (module docstring)."""
    heard = pick_peaks(onsets, rate=fps).tolist()
    seen = pick_peaks(motion, rate=fps).tolist()
    matched = match_count(heard, seen, tolerance=tolerance)
    if not heard or not seen:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    precision, recall = matched / len(heard), matched / len(seen)
    f1 = 2 * precision * recall / (precision + recall) if matched else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def onset_scores(video: torch.Tensor, audio: torch.Tensor, *, fps: float, sample_rate: int,
                 tolerance: int = TOLERANCE) -> dict[str, float]:
    """precision, recall and f1 of the sound's onsets against the picture's events, within `tolerance` frames."""
    frames = video.shape[1]
    return onset_scores_from_signals(motion_energy(video), frame_onsets(audio, sample_rate=sample_rate, fps=fps,
                                                                        frames=frames), fps=fps, tolerance=tolerance)


def av_align_from_peaks(audio_times: Sequence[float], video_times: Sequence[float], *, fps: float) -> float:
    """The IoU of audio and video peak times in seconds, hits within (not at) 1 / fps, one-to-one (0 when both are
    empty)."""
    hits = match_count(audio_times, video_times, tolerance=1 / fps, strict=True)
    union = len(audio_times) + len(video_times) - hits
    return hits / union if union else 0.0


def audio_peak_times(audio: torch.Tensor, *, sample_rate: int) -> list[float]:
    """The sound's onset times in seconds: pick_peaks on the spectral flux at the STFT hop."""
    flux, times = onset_envelope(audio, sample_rate=sample_rate)
    if times.numel() < 2:
        return []
    rate = 1 / float(times[1] - times[0])
    return times[pick_peaks(flux, rate=rate)].tolist()


def video_peak_times(motion: torch.Tensor, *, fps: float) -> list[float]:
    """TempoTokens' video peaks in seconds: strict local maxima of the motion trajectory whose first value repeats
    the second (there: the flow of frames 0-1 twice, then of i-1 to i at index i)."""
    trajectory = torch.cat([motion[1:2], motion[1:]]) if motion.numel() > 1 else motion
    return (strict_maxima(trajectory).double() / fps).tolist()


def av_align(video: torch.Tensor, audio: torch.Tensor, *, fps: float, sample_rate: int) -> float:
    """AV-Align of one video and its sound (module docstring)."""
    return av_align_from_peaks(audio_peak_times(audio, sample_rate=sample_rate),
                               video_peak_times(motion_energy(video), fps=fps), fps=fps)


def sync_scores(video: torch.Tensor, audio: torch.Tensor, *, fps: float, sample_rate: int,
                max_shift: int = MAX_SHIFT, tolerance: int = TOLERANCE,
                others: Sequence[torch.Tensor] = ()) -> dict[str, float]:
    """Every weight-free sync metric of one video and its sound, the signals computed once: av_offset (frames,
    positive = sound late), av_offset_confidence, onset_precision / onset_recall / onset_f1, av_align."""
    frames = video.shape[1]
    motion = motion_energy(video)
    onsets = frame_onsets(audio, sample_rate=sample_rate, fps=fps, frames=frames)
    envelopes = [frame_onsets(o, sample_rate=sample_rate, fps=fps, frames=frames) for o in others]
    offset = offset_from_signals(motion, onsets, max_shift=max_shift, others=envelopes)
    onset = onset_scores_from_signals(motion, onsets, fps=fps, tolerance=tolerance)
    align = av_align_from_peaks(audio_peak_times(audio, sample_rate=sample_rate), video_peak_times(motion, fps=fps),
                                fps=fps)
    return {"av_offset": float(offset.frames), "av_offset_confidence": offset.confidence,
            **{f"onset_{k}": v for k, v in onset.items()}, "av_align": align}
