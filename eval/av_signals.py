"""The two signals audio-visual sync is measured on (eval.sync), both sampled per video frame, and their peaks.
Weight-free: torch only.

- Motion energy [F]: at index i, the mean absolute change of luma (BT.601, in [0, 1]) from frame i - 1 to frame i;
  0 at index 0 (no earlier frame). A visual event at frame k (something appears, jumps, is hit) peaks at k. This is
  a frame difference, not optical flow: a global brightness change counts as motion, and a large object moving
  slowly scores like a small one moving fast.
- Onset envelope: the positive spectral flux of a log-compressed STFT magnitude (Bello et al. 2005; librosa's
  onset_strength without its mel step): log(1 + COMPRESSION |X| / max |X|) (loudness relative to the clip's
  loudest bin, so sound 40 dB under it barely counts), its rise from one STFT frame to the next clipped at 0,
  averaged over frequency bins (per hop). A Hann window of `WINDOW_S` every `HOP_S`, not centred. A frame's flux is
  placed at the time of its newest sample: the flux rises only once new sound has entered the window, so an onset
  at time t lands in [t, t + 2 hops).
- Per video frame [F]: the flux placed in [i / fps, (i + 1) / fps) summed (the interval frame i is on screen).

Videos are [3, F, H, W] in [-1, 1] (as everywhere in eval/), sounds [T] float at `sample_rate` Hz.
"""

from __future__ import annotations

import torch

WINDOW_S = 0.032  # STFT window, seconds (512 samples at 16 kHz)
HOP_S = 0.008  # STFT hop, seconds (128 samples at 16 kHz): the audio onsets' time resolution
COMPRESSION = 100.0  # log(1 + COMPRESSION * magnitude / the clip's largest magnitude): 40 dB of range
LUMA = (0.299, 0.587, 0.114)  # BT.601


def motion_energy(video: torch.Tensor) -> torch.Tensor:
    """video [3, F, H, W] in [-1, 1] -> float64 [F]: mean |luma_i - luma_{i-1}| (luma in [0, 1]) at i >= 1, 0 at i = 0."""
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"video must be [3, F, H, W], got {tuple(video.shape)}")
    weights = torch.tensor(LUMA, dtype=torch.float64).view(3, 1, 1, 1)
    luma = ((video.double().clamp(-1, 1) + 1) / 2 * weights).sum(0)  # [F, H, W]
    change = (luma[1:] - luma[:-1]).abs().mean(dim=(1, 2))
    return torch.cat([change.new_zeros(1), change])


def onset_envelope(audio: torch.Tensor, *, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """audio [T] -> (flux float64 [J], times float64 [J] in seconds): each STFT frame's positive spectral flux
    (log-compressed magnitude, averaged over frequency bins) and the time of its newest sample. Sound shorter than
    one window: empty."""
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono [T], got {tuple(audio.shape)}")
    window, hop = round(WINDOW_S * sample_rate), max(1, round(HOP_S * sample_rate))
    if audio.numel() < window:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    spectrum = torch.stft(audio.double(), n_fft=window, hop_length=hop, window=torch.hann_window(window,
                          dtype=torch.float64), center=False, return_complex=True).abs()  # [bins, J]
    level = torch.log1p(COMPRESSION * spectrum / spectrum.max().clamp_min(1e-12))
    rise = (level[:, 1:] - level[:, :-1]).clamp_min(0).mean(0)
    flux = torch.cat([rise.new_zeros(1), rise])  # the first frame has nothing to rise from
    times = (torch.arange(flux.numel(), dtype=torch.float64) * hop + window - 1) / sample_rate
    return flux, times


def per_frame(values: torch.Tensor, times: torch.Tensor, *, fps: float, frames: int) -> torch.Tensor:
    """Sum `values` [J] placed at `times` [J] (seconds) into the `frames` video-frame intervals
    [i / fps, (i + 1) / fps) -> float64 [frames]; values past the last frame are dropped."""
    index = torch.floor(times * fps + 1e-9).long()
    keep = (index >= 0) & (index < frames)
    return torch.zeros(frames, dtype=torch.float64).index_add_(0, index[keep], values[keep].double())


def frame_onsets(audio: torch.Tensor, *, sample_rate: int, fps: float, frames: int) -> torch.Tensor:
    """The onset envelope per video frame: audio [T] -> float64 [frames] (flux summed per frame interval)."""
    flux, times = onset_envelope(audio, sample_rate=sample_rate)
    return per_frame(flux, times, fps=fps, frames=frames)


def pick_peaks(x: torch.Tensor, *, rate: float, max_s: float = 0.03, avg_s: float = 0.1, delta: float = 0.07,
               wait_s: float = 0.03) -> torch.Tensor:
    """Indices of the peaks of x [N] sampled at `rate` Hz, by librosa.util.peak_pick's rule with onset_detect's
    defaults (times in seconds, windows clipped at the ends): x normalised to [0, 1]; n is a peak when x[n] is
    above every value in the `max_s` before it and at least every value in the `max_s` after it (a plateau gives
    its first sample), at least the mean over +-`avg_s` plus `delta`, and more than `wait_s` after the previous
    peak. Each window is at least one sample. A constant x has no peaks."""
    x = x.double()
    if x.numel() == 0 or x.max() == x.min():
        return torch.zeros(0, dtype=torch.long)
    x = (x - x.min()) / (x.max() - x.min())
    radius, around = max(1, round(max_s * rate)), max(1, round(avg_s * rate))
    wait = round(wait_s * rate)
    peaks: list[int] = []
    for n in range(x.numel()):
        before, after = x[max(0, n - radius):n], x[n + 1:n + 1 + radius]
        if (before.numel() and x[n] <= before.max()) or (after.numel() and x[n] < after.max()):
            continue
        if x[n] < x[max(0, n - around):n + around + 1].mean() + delta:
            continue
        if peaks and n - peaks[-1] <= wait:
            continue
        peaks.append(n)
    return torch.tensor(peaks, dtype=torch.long)


def strict_maxima(x: torch.Tensor) -> torch.Tensor:
    """Indices n with x[n - 1] < x[n] > x[n + 1] (no threshold): TempoTokens' video peaks (`find_local_max_indexes`)."""
    if x.numel() < 3:
        return torch.zeros(0, dtype=torch.long)
    middle = x[1:-1]
    return torch.nonzero((x[:-2] < middle) & (middle > x[2:])).flatten() + 1


def resample(audio: torch.Tensor, *, rate: int, to: int) -> torch.Tensor:
    """audio [T] at `rate` Hz -> [round(T * to / rate)] at `to` Hz, band-limited (the spectrum cut or zero-padded
    at the lower Nyquist frequency; the sound is treated as periodic over its length, so its ends may ring)."""
    if rate == to:
        return audio
    length = max(1, round(audio.numel() * to / rate))
    spectrum = torch.fft.rfft(audio.double())
    bins = length // 2 + 1
    spectrum = spectrum[:bins] if spectrum.numel() >= bins else torch.cat(
        [spectrum, spectrum.new_zeros(bins - spectrum.numel())])
    return torch.fft.irfft(spectrum, n=length) * (length / audio.numel())

