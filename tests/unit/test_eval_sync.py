"""The weight-free audio-visual sync metrics (eval.sync, eval.av_signals) on synthetic clips: a white square on black
jumps to a new place at random frames and each jump is a 20 ms 1 kHz tone burst in the sound (under faint noise).
Sound shifted by -3..+5 frames gives exactly that offset (positive = late) at 25, 24 and 16 fps; the clip's own
sound is confident, another clip's sound is not; onsets and AV-Align score the matched clip 1 and mismatched ones
low; and the signals themselves are checked against hand-computed values."""

import math

import pytest
import torch

from eval.av_signals import frame_onsets, motion_energy, onset_envelope, per_frame, pick_peaks, resample, strict_maxima
from eval.sync import (
    av_align,
    av_align_from_peaks,
    av_offset,
    match_count,
    offset_from_signals,
    onset_scores,
    shuffled_blocks,
    sync_scores,
)

RATE = 16000


def synthetic(seed: int, *, frames: int = 100, fps: float = 25, shift: int = 0, events: int = 10, size: int = 32,
              sounded: slice = slice(None)):
    """(video [3, F, size, size] in [-1, 1], sound [T], event frames): the square jumps at each event frame; the
    sound's bursts start `shift` frames after their events (those in `sounded` only)."""
    g = torch.Generator().manual_seed(seed)
    slots = torch.randperm((frames - 4) // 4, generator=g)[:events]  # at least 3 frames between events
    jumps = sorted((slots * 4 + 2 + torch.randint(0, 2, (events,), generator=g)).tolist())
    video = torch.full((3, frames, size, size), -1.0)
    y = x = 0
    for f in range(frames):
        if f in jumps:  # to another quarter of the frame: the square never stays where it was
            y, x = (y + 16) % 32, (x + 16 * (f % 2)) % 32
        video[:, f, y:y + 8, x:x + 8] = 1.0
    samples = round(frames / fps * RATE)
    sound = 0.001 * torch.randn(samples, generator=g)
    t = torch.arange(round(0.02 * RATE)) / RATE
    burst = 0.5 * torch.sin(2 * math.pi * 1000 * t) * torch.exp(-t / 0.005)
    for k in jumps[sounded]:
        start = round((k + shift) / fps * RATE)
        if 0 <= start < samples:
            end = min(samples, start + burst.numel())
            sound[start:end] += burst[:end - start]
    return video, sound, jumps


@pytest.mark.parametrize("fps", [25, 24, 16])
def test_offset_recovers_injected_shifts_exactly(fps):
    for shift in range(-3, 6):
        video, sound, _ = synthetic(shift + 10, fps=fps, shift=shift)
        found = av_offset(video, sound, fps=fps, sample_rate=RATE)
        assert found.frames == shift, (fps, shift, found.curve)
        assert found.null == "blocks" and found.confidence > 3
        assert found.lags.tolist() == list(range(-15, 16)) and found.curve.shape == (31,)
        assert int(found.lags[found.curve.argmax()]) == shift


def test_the_clips_own_sound_is_confident_and_another_clips_is_not():
    for seed in range(4):
        video, sound, _ = synthetic(seed)
        _, other, _ = synthetic(seed + 100)
        assert av_offset(video, sound, fps=25, sample_rate=RATE).confidence > 5
        assert av_offset(video, other, fps=25, sample_rate=RATE).confidence < 3
    # a batch: each video against the other clips' sounds as the null
    clips = [synthetic(seed) for seed in range(5)]
    sounds = [s for _, s, _ in clips]
    for i, (video, sound, _) in enumerate(clips):
        matched = av_offset(video, sound, fps=25, sample_rate=RATE, others=sounds[:i] + sounds[i + 1:])
        assert matched.null == "others" and matched.frames == 0 and matched.confidence > 3
        j = (i + 1) % 5
        wrong = av_offset(video, sounds[j], fps=25, sample_rate=RATE, others=[s for k, s in enumerate(sounds) if k != i])
        assert wrong.confidence < 2


def test_nothing_moving_or_nothing_sounding_gives_offset_zero_with_no_confidence():
    video, sound, _ = synthetic(0)
    still = video[:, :1].expand_as(video)
    for v, s in ((still, sound), (video, torch.zeros_like(sound)), (video[:, :1], sound[:640])):
        found = av_offset(v, s, fps=25, sample_rate=RATE)
        assert found.frames == 0 and found.confidence == 0.0
    scores = sync_scores(still, torch.zeros_like(sound), fps=25, sample_rate=RATE)
    assert all(math.isfinite(v) for v in scores.values()) and scores["av_align"] == 0.0


def test_the_search_is_limited_to_half_the_clip():
    video, sound, _ = synthetic(3, frames=17, events=3)
    assert av_offset(video, sound, fps=25, sample_rate=RATE).lags.tolist() == list(range(-8, 9))
    assert av_offset(video, sound, fps=25, sample_rate=RATE, max_shift=2).lags.tolist() == [-2, -1, 0, 1, 2]


def test_shuffled_blocks_never_keep_the_original_order():
    onsets = torch.arange(12.0)
    nulls = shuffled_blocks(onsets, block=4, count=20)
    assert len(nulls) == 20 and all(not torch.equal(n, onsets) for n in nulls)
    assert all(sorted(n.tolist()) == onsets.tolist() for n in nulls)
    assert shuffled_blocks(onsets, block=12) == []
    # too few other sounds: the shuffled-block null instead
    assert offset_from_signals(onsets, onsets, others=[onsets.flip(0)]).null == "blocks"


def test_onset_scores_count_heard_events_within_the_tolerance():
    video, sound, _ = synthetic(1)
    assert onset_scores(video, sound, fps=25, sample_rate=RATE) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    late, late_sound, _ = synthetic(1, shift=1)
    assert onset_scores(late, late_sound, fps=25, sample_rate=RATE)["f1"] == 1.0  # within +-1 frame
    assert onset_scores(late, late_sound, fps=25, sample_rate=RATE, tolerance=0)["f1"] < 0.3
    half, half_sound, _ = synthetic(1, sounded=slice(0, None, 2))  # every other jump is silent
    assert onset_scores(half, half_sound, fps=25, sample_rate=RATE) == {"precision": 1.0, "recall": 0.5,
                                                                         "f1": pytest.approx(2 / 3)}
    _, other, _ = synthetic(101)  # chance: 10 of 24 four-frame slots each, so about 4 of 10 within +-1 frame
    assert onset_scores(video, other, fps=25, sample_rate=RATE)["f1"] <= 0.5
    assert onset_scores(video, torch.zeros_like(sound), fps=25, sample_rate=RATE) == {"precision": 0.0,
                                                                                      "recall": 0.0, "f1": 0.0}


def test_matching_is_one_to_one_and_the_most_possible():
    assert match_count([1, 2], [2], tolerance=1) == 1
    assert match_count([1, 3], [2, 4], tolerance=1) == 2  # 1-2 and 3-4, not 3-2 first
    assert match_count([0, 10], [1.0], tolerance=1, strict=True) == 0
    assert match_count([], [1], tolerance=1) == 0


def test_av_align_is_the_iou_of_audio_and_video_peaks():
    video, sound, _ = synthetic(2)
    assert av_align(video, sound, fps=25, sample_rate=RATE) == 1.0
    _, other, _ = synthetic(102)
    assert av_align(video, other, fps=25, sample_rate=RATE) < 0.35
    # by hand: peaks at 0.10 s and 0.50 s; onsets at 0.13 (a hit within 1/25 s), 0.30 and 0.54 (not within)
    assert av_align_from_peaks([0.13, 0.30, 0.54], [0.10, 0.50], fps=25) == pytest.approx(1 / 4)
    assert av_align_from_peaks([0.10, 0.11], [0.10], fps=25) == pytest.approx(1 / 2)  # one hit per video peak
    assert av_align_from_peaks([], [], fps=25) == 0.0


def test_motion_energy_is_the_mean_absolute_luma_change():
    video = torch.full((3, 3, 4, 4), -1.0)
    video[0, 1, :2] = 1.0  # red over half the frame: luma 0.299 there
    video[:, 2] = 1.0  # then all white
    energy = motion_energy(video)
    assert energy.dtype == torch.float64
    assert energy.tolist() == pytest.approx([0.0, 0.299 / 2, (0.701 + 1.0) / 2])
    assert strict_maxima(torch.tensor([0.0, 2, 1, 1, 3, 0])).tolist() == [1, 4]


def test_an_onset_lands_in_the_frame_it_starts_in():
    for fps in (25, 24, 16):
        sound = torch.zeros(RATE)
        start = round(7 / fps * RATE)
        sound[start:start + 160] = 0.5 * torch.sin(torch.arange(160) * 0.4)
        onsets = frame_onsets(sound, sample_rate=RATE, fps=fps, frames=math.floor(fps))
        assert int(onsets.argmax()) == 7 and onsets[:7].sum() == 0
    flux, times = onset_envelope(torch.zeros(100), sample_rate=RATE)  # shorter than one window
    assert flux.numel() == 0 and times.numel() == 0
    sums = per_frame(torch.tensor([1.0, 2, 4, 8]), torch.tensor([0.0, 0.039, 0.04, 9.0]), fps=25, frames=3)
    assert sums.tolist() == [3.0, 4.0, 0.0]


def test_peaks_follow_the_peak_pick_rule():
    x = torch.tensor([0.0, 1, 0, 0, 5, 5, 0, 0, 0.3, 0])
    # normalised by 5: the plateau gives its first sample; 0.06 is under its +-2 frames' mean (0.015) + 0.07
    assert pick_peaks(x, rate=25).tolist() == [1, 4]
    assert pick_peaks(x, rate=25, delta=0.0).tolist() == [1, 4, 8]
    assert pick_peaks(torch.ones(5), rate=25).tolist() == []


def test_resampling_keeps_a_tones_pitch():
    t = torch.arange(48000) / 48000
    down = resample(torch.sin(2 * math.pi * 440 * t), rate=48000, to=RATE)
    assert down.numel() == RATE
    assert int(torch.fft.rfft(down).abs().argmax()) == 440  # 1 s: bin = Hz
