"""The invisible watermark of a sound track: the video watermark's design (wan_train.marking.watermark) in one
dimension, carrying the same 32-bit id, robust to AAC re-encoding.

Embedding. The key seeds PATTERNS random patterns one PERIOD (1 s at the track's rate) long: random phases over the
band BAND (Hz: where AAC at 64 kbit/s and up keeps the signal and speech and music mask it), made exactly
orthonormal, repeated over the track. Pattern 0 marks presence; the id and its CRC-8 are 10 symbols of 4 bits, each
one of 16 patterns (as in the video). The sum follows the sound's loudness: it is scaled, sample by sample, to
`strength` times the track's short-time RMS (ENVELOPE samples), so it sits STRENGTH below the sound (0.1: -20 dB)
and is silent where the sound is; it is added to every channel alike.

Detection needs the key and the track (any length over a period; the encoder's delay is a shift, found). The mono
mix is divided by its short-time RMS (loud and quiet passages count alike), band-passed to BAND, and folded modulo
the period; a circular FFT correlation with the presence pattern scores every shift, as z-scores against all
shifts, and the best over THRESHOLD marks the track. At that shift each symbol is the best of its 16 patterns and
the id counts as read when the CRC-8 matches. Resampling the track (another rate) is not searched for.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from wan_train.marking.watermark import PATTERNS, Detection, combine, read_symbols

PERIOD = 1.0  # seconds the patterns repeat over
BAND = (500.0, 4000.0)  # Hz
STRENGTH = 0.1  # the mark's RMS over the sound's short-time RMS (-20 dB)
ENVELOPE = 2048  # samples of the short-time RMS window
THRESHOLD = 6.0  # presence z-score (the best of every shift) above which a track counts as marked


def period_of(rate: int) -> int:
    return int(round(rate * PERIOD))


@lru_cache(maxsize=8)
def patterns(key: str, rate: int) -> np.ndarray:
    """The key's PATTERNS periods [PATTERNS, period] at `rate` (float64, unit RMS, orthonormal)."""
    if not key:
        raise ValueError("the watermark key is empty")
    length = period_of(rate)
    if BAND[1] >= rate / 2:
        raise ValueError(f"a sound track at {rate} Hz cannot carry the watermark's band up to {BAND[1]:.0f} Hz")
    seed = np.frombuffer(hashlib.sha256(("wan_train.audio_watermark:" + key).encode()).digest(), dtype=np.uint32)
    rng = np.random.Generator(np.random.PCG64(seed))
    freqs = np.fft.rfftfreq(length, 1 / rate)
    band = (freqs >= BAND[0]) & (freqs <= BAND[1])
    phases = rng.uniform(0, 2 * np.pi, (PATTERNS, freqs.size))
    signals = np.fft.irfft(band * np.exp(1j * phases), n=length)
    q, _ = np.linalg.qr(signals.T)
    return q.T * np.sqrt(length)


def _envelope(mono: np.ndarray) -> np.ndarray:
    """Short-time RMS (a moving average of the power over ENVELOPE samples)."""
    kernel = np.ones(ENVELOPE) / ENVELOPE
    return np.sqrt(np.convolve(mono.astype(np.float64) ** 2, kernel, mode="same"))


def embed_audio(samples: np.ndarray, rate: int, key: str, payload: int, *, strength: float = STRENGTH) -> np.ndarray:
    """float samples [C, T] in [-1, 1] -> the same with the mark (float32, clipped to [-1, 1])."""
    if samples.ndim != 2:
        raise ValueError(f"samples must be [channels, time], got shape {tuple(samples.shape)}")
    period = combine(patterns(key, rate), payload)
    length = samples.shape[1]
    mark = np.tile(period, -(-length // period.size))[:length] * strength * _envelope(samples.mean(axis=0))
    return np.clip(samples + mark[None], -1, 1).astype(np.float32)


def detect_audio(samples: np.ndarray, rate: int, key: str, *, threshold: float = THRESHOLD) -> Detection:
    """Detection for `key` in float samples [C, T] of a track at `rate` (scale is always 1; shift is (0, samples))."""
    mono = samples.astype(np.float64).mean(axis=0)
    length = period_of(rate)
    if mono.size < length:
        raise ValueError(f"a sound track of {mono.size / rate:.2f} s is shorter than the watermark's period "
                         f"({PERIOD} s)")
    flat = mono / (_envelope(mono) + 1e-4)
    spectrum = np.fft.rfft(flat)
    freqs = np.fft.rfftfreq(flat.size, 1 / rate)
    flat = np.fft.irfft(spectrum * ((freqs >= BAND[0]) & (freqs <= BAND[1])), n=flat.size)
    whole = flat.size // length * length
    folded = flat[:whole].reshape(-1, length).sum(axis=0)
    folded[: flat.size - whole] += flat[whole:]
    references = np.conj(np.fft.rfft(patterns(key, rate), axis=1))
    seen = np.fft.rfft(folded)
    surface = np.fft.irfft(seen * references[0], n=length)
    noise = surface.std() + 1e-12
    z = (surface - surface.mean()) / noise
    shift = int(np.argmax(z))
    score = float(z[shift])
    marked = score > threshold
    rows = np.fft.irfft(seen[None] * references[1:], n=length, axis=1)[:, shift] / noise
    return Detection(score=score, marked=marked, scale=1.0, shift=(0, shift), **read_symbols(rows, marked=marked))
