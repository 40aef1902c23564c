"""The invisible watermark: a keyed, weight-free pattern in the luma that survives H.264, resizing, cropping and
frame drops, carrying a 32-bit id (the output's id, recoverable from the video alone).

Embedding. A key (any string) seeds PATTERNS random patterns on a TILE x TILE (128 px) tile: random phases over
the band of periods BAND (8-32 px: H.264 keeps them, and a copy resized to half still has them), so each tiles
seamlessly, made exactly orthonormal. Pattern 0 marks presence (PRESENCE_SHARE of the energy). The 32 id bits and
a CRC-8 of them are sent as 10 symbols of 4 bits, symbol i as one of patterns 1 + 16 i ... 16 + 16 i: 16-ary
orthogonal signalling gives each symbol twice the amplitude that 40 antipodal bit patterns would get each, so far
fewer errors at the same strength. The weighted sum, scaled to a standard deviation of `strength` (in 8-bit
levels: 2.0 is about 42 dB PSNR), is added to R, G and B of every frame alike (a change of luma only), then
clipped to [0, 255].

Detection needs the key, not the original. The luma of the frames is averaged over time (the pattern is the same
in every frame; moving content averages out) and high-passed (the mean minus its BLUR-px box blur). For each
candidate scale (the video's size over the marked size: a resized copy) every pixel is binned at its place in the
tile (folded), and the folded tile's spectrum is divided by the square root of its magnitude (whitening: the
content's strong low frequencies no longer drown the rest). A circular FFT correlation with the presence pattern
scores every shift of the tile (a cropped copy), as z-scores against that scale's shifts. The best of all shifts
and scales is the presence score (over THRESHOLD: marked). The score at the marked size and place is a single
hypothesis, searched for nowhere, so it counts over the lower DIRECT_THRESHOLD: an untouched or re-encoded small
video is found at a weaker mark. At the scale and shift found, each symbol is the pattern of its 16 that
correlates best (its margin over the runner-up says how sure); the id counts as read when the CRC-8 matches.

Band-limited random patterns rather than +-1 cells: a tile has about 1400 degrees of freedom in the band instead of
256 cells, so the mark's correlation with itself at other shifts (which caps the score on clean content) is lower,
and another key's mark spreads evenly over the shifts instead of lining up with a shared cell grid.

Not a secure watermark against an informed adversary: averaging many outputs of one key estimates the pattern.
Rotation and aspect changes break the alignment.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

TILE = 128  # pixels per side of the tile the patterns repeat on
BAND = (8.0, 32.0)  # the patterns' periods in pixels at the marked size (H.264 keeps these; resizing to half too)
BLUR = 7  # the detector's high-pass: the image minus its BLUR-px box blur
ID_BITS = 32
CRC_BITS = 8
SYMBOL_BITS = 4  # the payload is sent 4 bits at a time: one of 16 orthogonal patterns per symbol
SYMBOLS = (ID_BITS + CRC_BITS) // SYMBOL_BITS
PATTERNS = 1 + SYMBOLS * 2**SYMBOL_BITS
PRESENCE_SHARE = 0.4  # of the mark's energy, for finding it (scale and shift); the rest carries the bits
STRENGTH = 2.0  # standard deviation of the mark in 8-bit levels (PSNR about 20 log10(255 / 2.0) = 42 dB)
THRESHOLD = 6.5  # presence z-score (best of every shift and scale) above which a video counts as marked
DIRECT_THRESHOLD = 4.5  # the same at the marked size and place (one hypothesis: an untouched or re-encoded video)
SCALE_RANGE = (0.45, 1.35)  # the video's size over the marked size, searched
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Detection:
    score: float  # presence z-score (best shift and scale among all)
    marked: bool  # score > threshold, or direct > DIRECT_THRESHOLD
    scale: float  # the video's size over the marked size where it was found
    shift: tuple[int, int]  # (dy, dx) of the tile at the marked size
    bits: list[int] = field(default_factory=list)  # the 40 payload bits read (id then CRC), 0/1
    confidence: list[float] = field(default_factory=list)  # per symbol: its pattern's z minus the runner-up's
    payload: int | None = None  # the 32-bit id when the CRC matches, else None
    direct: float = float("nan")  # presence z-score at scale 1, shift (0, 0)

    def as_dict(self) -> dict:
        return {"score": round(self.score, 2), "direct": round(self.direct, 2), "marked": self.marked,
                "scale": round(self.scale, 4),
                "shift": list(self.shift), "payload": None if self.payload is None else f"{self.payload:08x}",
                "crc_ok": self.payload is not None,
                "min_symbol_margin": round(min(self.confidence), 2) if self.confidence else None}


# --------------------------------------------------------------------------------------------------- patterns

@lru_cache(maxsize=8)
def tile_patterns(key: str) -> np.ndarray:
    """The key's PATTERNS tiles [PATTERNS, TILE, TILE] (float32, unit standard deviation): random phases over the
    band of periods BAND (pixels) of the tile's Fourier grid, so each tiles seamlessly; then made exactly
    orthonormal (QR)."""
    if not key:
        raise ValueError("the watermark key is empty")
    seed = np.frombuffer(hashlib.sha256(("wan_train.watermark:" + key).encode()).digest(), dtype=np.uint32)
    rng = np.random.Generator(np.random.PCG64(seed))
    fy, fx = np.fft.fftfreq(TILE)[:, None], np.fft.rfftfreq(TILE)[None]
    radius = np.sqrt(fx**2 + fy**2)
    band = (radius >= 1 / BAND[1]) & (radius <= 1 / BAND[0])
    phases = rng.uniform(0, 2 * np.pi, (PATTERNS, *band.shape))
    tiles = np.fft.irfft2(band * np.exp(1j * phases), s=(TILE, TILE)).reshape(PATTERNS, -1)
    q, _ = np.linalg.qr(tiles.T)  # orthonormal columns spanning the same band-limited patterns
    return (q.T * np.sqrt(TILE * TILE)).reshape(PATTERNS, TILE, TILE).astype(np.float32)


def _box(images: np.ndarray, size: int, *, circular: bool) -> np.ndarray:
    """Box blur of [..., H, W] over the last two axes (circular: wrapped; else edges replicated)."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    shape = x.shape
    x = x.reshape(-1, 1, *shape[-2:])
    pad = (size // 2, size - 1 - size // 2)
    x = torch.nn.functional.pad(x, (*pad, *pad), mode="circular" if circular else "replicate")
    kernel = torch.full((1, 1, size, size), 1.0 / size**2)
    return torch.nn.functional.conv2d(x, kernel).reshape(shape).numpy()


def crc8(data: bytes) -> int:
    """CRC-8 (polynomial 0x07, initial value 0, no reflection: CRC-8/SMBUS)."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def symbols_of(bits: np.ndarray) -> np.ndarray:
    return bits.reshape(SYMBOLS, SYMBOL_BITS) @ (1 << np.arange(SYMBOL_BITS - 1, -1, -1))


def payload_bits(payload: int) -> np.ndarray:
    if not 0 <= payload < 1 << ID_BITS:
        raise ValueError(f"the watermark payload must be a {ID_BITS}-bit id, got {payload}")
    word = (payload << CRC_BITS) | crc8(payload.to_bytes(ID_BITS // 8, "big"))
    return np.array([(word >> (ID_BITS + CRC_BITS - 1 - i)) & 1 for i in range(ID_BITS + CRC_BITS)], dtype=np.int64)


# ------------------------------------------------------------------------------------------------------ embed

def combine(patterns: np.ndarray, payload: int) -> np.ndarray:
    """The presence pattern plus each symbol's pattern for `payload`, weighted by PRESENCE_SHARE (any shape of
    pattern: the video's tiles, the sound's periods)."""
    rows = 1 + np.arange(SYMBOLS) * 2**SYMBOL_BITS + symbols_of(payload_bits(payload))
    return np.sqrt(PRESENCE_SHARE) * patterns[0] + np.sqrt((1 - PRESENCE_SHARE) / SYMBOLS) * patterns[rows].sum(axis=0)


def mark_tile(key: str, payload: int, strength: float = STRENGTH) -> np.ndarray:
    """The [TILE, TILE] float32 mark the frames get (tiled), standard deviation `strength`."""
    mark = combine(tile_patterns(key), payload)
    return (mark * (strength / mark.std())).astype(np.float32)


def embed(frames: np.ndarray, key: str, payload: int, *, strength: float = STRENGTH) -> np.ndarray:
    """uint8 frames [F, H, W, 3] -> the same frames with the mark (a new array)."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    height, width = frames.shape[1:3]
    tile = mark_tile(key, payload, strength)
    reps = (-(-height // TILE), -(-width // TILE))
    mark = np.tile(tile, reps)[:height, :width, None]
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):  # frame by frame: a float copy of one frame at a time
        out[i] = np.clip(np.rint(frame + mark), 0, 255)
    return out


# ----------------------------------------------------------------------------------------------------- detect

def luma_mean(frames: np.ndarray) -> np.ndarray:
    """uint8 [F, H, W, 3] -> the temporal mean of the luma [H, W] (float32)."""
    total = np.zeros(frames.shape[1:3], dtype=np.float64)
    for frame in frames:
        total += frame.astype(np.float32) @ LUMA
    return (total / len(frames)).astype(np.float32)


def scales_for(height: int, width: int) -> np.ndarray:
    """Candidate scales (the video's size over the marked size): 1 first, then a geometric grid whose step keeps
    the drift across the longer side, at the halfway point between two scales, under 1.5 px."""
    step = 1 + 3.0 / max(height, width)
    low, high = SCALE_RANGE
    grid = np.exp(np.arange(np.log(low), np.log(high), np.log(step)))
    return np.concatenate([[1.0], grid[np.abs(grid - 1) > 1e-3]])


def _folded(high: np.ndarray, scale: float) -> np.ndarray:
    """The high-passed mean image, each pixel binned at its place in the tile at the marked size (its
    coordinates / scale, modulo TILE), as a spectrum divided by the square root of its magnitude (half-way to
    phase only, which measured weaker: it also flattens the bins where the mark is strong). Binning instead of
    resampling: one pass over the pixels per scale."""
    height, width = high.shape
    rows = (np.floor((np.arange(height) + 0.5) / scale).astype(np.int64) % TILE) * TILE
    cols = np.floor((np.arange(width) + 0.5) / scale).astype(np.int64) % TILE
    index = (rows[:, None] + cols[None]).ravel()
    sums = np.bincount(index, weights=high.ravel(), minlength=TILE * TILE)
    counts = np.bincount(index, minlength=TILE * TILE)
    folded = (sums / np.maximum(counts, 1) * np.sqrt(counts)).reshape(TILE, TILE)  # weighed by pixels averaged
    spectrum = np.fft.rfft2(folded)
    return spectrum / (np.sqrt(np.abs(spectrum)) + 1e-9)  # half-whitened: content flattened, the mark's bins kept


@lru_cache(maxsize=8)
def _references(key: str) -> np.ndarray:
    """The patterns as the detector sees them (high-passed like the image), unit norm, in the FFT domain."""
    tiles = tile_patterns(key)
    high = tiles - _box(tiles, BLUR, circular=True)
    high /= np.linalg.norm(high.reshape(PATTERNS, -1), axis=1)[:, None, None]
    return np.conj(np.fft.rfft2(high))


def detect_mean(mean_luma: np.ndarray, key: str, *, threshold: float = THRESHOLD,
                scales: np.ndarray | None = None) -> Detection:
    """Detection on the temporal mean of a video's luma [H, W]."""
    references = _references(key)
    high = (mean_luma - _box(mean_luma, BLUR, circular=False)).astype(np.float64)
    scales = scales_for(*mean_luma.shape) if scales is None else scales
    spectra = [_folded(high, float(scale)) for scale in scales]
    surfaces = np.stack([np.fft.irfft2(spectrum * references[0], s=(TILE, TILE)) for spectrum in spectra])
    # each scale against its own shifts: near the marked size a mark (ours or another key's) folds coherently and
    # spreads the surface wider than at other scales, so one spread for all would inflate the scores there
    noise = surfaces.std(axis=(1, 2), keepdims=True) + 1e-12
    z = (surfaces - surfaces.mean(axis=(1, 2), keepdims=True)) / noise
    index, *shift = (int(i) for i in np.unravel_index(int(np.argmax(z)), z.shape))
    score, direct = float(z[index, shift[0], shift[1]]), float(z[0, 0, 0]) if scales[0] == 1.0 else float("nan")
    if direct > DIRECT_THRESHOLD and (score <= threshold or direct >= score - 1):  # untouched geometry, the likely
        index, shift = 0, [0, 0]  # case (a neighbouring scale can score a little higher by chance)
    marked = score > threshold or direct > DIRECT_THRESHOLD
    # each symbol's 16 rows at the presence row's shift, in units of the presence row's spread at that scale
    rows = np.fft.irfft2(spectra[index][None] * references[1:], s=(TILE, TILE))[:, shift[0], shift[1]] / noise[index]
    return Detection(score=score, marked=marked, scale=float(scales[index]), shift=(shift[0], shift[1]),
                     direct=direct, **read_symbols(rows, marked=marked))


def read_symbols(rows: np.ndarray, *, marked: bool) -> dict:
    """The payload from the correlations of the PATTERNS - 1 payload patterns (z-scores, at the shift found):
    Detection's bits, confidence and payload (the id when its CRC-8 matches and the mark was found)."""
    by_symbol = rows.reshape(SYMBOLS, 2**SYMBOL_BITS)
    ranked = np.sort(by_symbol, axis=1)
    bits = [int(b) for symbol in by_symbol.argmax(axis=1) for b in f"{symbol:0{SYMBOL_BITS}b}"]
    word = int("".join(map(str, bits)), 2)
    payload = word >> CRC_BITS
    read = payload if crc8(payload.to_bytes(ID_BITS // 8, "big")) == word & 0xFF and marked else None
    return {"bits": bits, "confidence": [float(m) for m in ranked[:, -1] - ranked[:, -2]], "payload": read}


def detect(frames: np.ndarray, key: str, *, threshold: float = THRESHOLD) -> Detection:
    """uint8 frames [F, H, W, 3] of a video (any size, any number of frames) -> Detection for `key`."""
    return detect_mean(luma_mean(frames), key, threshold=threshold)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
