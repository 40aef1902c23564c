"""How robust and how invisible the built-in watermark is (wan_train.marking.watermark): detection rate and payload
bit accuracy after what platforms do to a video, false positives on unmarked videos, PSNR / SSIM of the marked
frames. Prints a markdown table (the README's) and writes it, with every clip's numbers, to --out as JSON.

    python benchmarks/watermark.py                                    # 50 clips per row, 200 unmarked, 832x480x33
    python benchmarks/watermark.py --clips 10 --unmarked 40 --width 256 --height 144
    python benchmarks/watermark.py --table-from benchmarks/watermark.json    # the table again, at today's thresholds
    python benchmarks/watermark.py --sound --out benchmarks/watermark_sound.json   # the sound track's mark

Marked clips (--clips, half of each kind): the demo renderer's clips (data_tools.make_demo: a shape moving over a
plain background, what the quickstart model learns to draw) and pans over images with natural-image statistics
(1/f^2 spectra, std 50 levels; no natural photos are bundled), each marked with its own random 32-bit id at the
default strength. Rows: H.264 (libx264 veryfast) at crf 23 / 28 / 35; 0.5x resize then crf 28; every other
frame dropped (half the frame rate) then crf 28; brightness x1.1 and x0.9 then crf 28; a 10% crop (5% off each
side) then crf 28. Unmarked clips (--unmarked): demo clips, pans, per-frame noise, static gradients, each encoded at
crf 23 and read with the same key. A clip counts as detected when verify would say marked (the searched score over
THRESHOLD or the in-place score over DIRECT_THRESHOLD); bit accuracy compares the 40 bits read (id and CRC) with the
ones embedded; "id read" counts clips whose CRC-checked id is the embedded one.

--sound: the sound track's mark (wan_train.marking.audio_watermark) instead, on 5 s tracks at 16 kHz (the rate of
MMAudio's VAE; --rate for others): speech-like (a gliding harmonic voice in syllables), music-like (decaying
chords) and noise, marked at the default strength, then AAC at 64 and 128 kbit/s, and the unmarked tracks through
AAC 64 kbit/s read with the same key.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_tools.make_demo import demo_clip, render  # noqa: E402
from wan_train.inference.outputs import encode_mp4  # noqa: E402
from wan_train.marking import watermark as wm  # noqa: E402
from wan_train.marking.audio_watermark import THRESHOLD as SOUND_THRESHOLD  # noqa: E402
from wan_train.marking.audio_watermark import detect_audio, embed_audio  # noqa: E402

KEY = "benchmark key"


def decode(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def h264(frames: np.ndarray, crf: int, fps: float = 16) -> np.ndarray:
    return decode(encode_mp4(frames, fps=fps, crf=crf))


def even(n: int) -> int:
    return n - n % 2


def resize(frames: np.ndarray, factor: float) -> np.ndarray:
    size = (even(round(frames.shape[1] * factor)), even(round(frames.shape[2] * factor)))
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def crop(frames: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    height, width = frames.shape[1:3]
    top, left = even(round(height * fraction / 2)), even(round(width * fraction / 2))
    return frames[:, top:top + even(round(height * (1 - fraction))), left:left + even(round(width * (1 - fraction)))]


def brightness(frames: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(np.rint(frames * factor), 0, 255).astype(np.uint8)


ROWS = {
    "H.264 crf 23": lambda v: h264(v, 23),
    "H.264 crf 28": lambda v: h264(v, 28),
    "H.264 crf 35": lambda v: h264(v, 35),
    "0.5x resize, crf 28": lambda v: h264(resize(v, 0.5), 28),
    "every other frame dropped, crf 28": lambda v: h264(v[::2], 28, fps=8),
    "brightness +10%, crf 28": lambda v: h264(brightness(v, 1.1), 28),
    "brightness -10%, crf 28": lambda v: h264(brightness(v, 0.9), 28),
    "10% crop, crf 28": lambda v: h264(crop(v), 28),
}


def fractal(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1
    shape = (3, height, width // 2 + 1)
    spectrum = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / f
    image = np.fft.irfft2(spectrum, s=(height, width)).transpose(1, 2, 0)
    return np.clip((image - image.mean()) / image.std() * 50 + 120, 0, 255)


def pan(rng, height, width, frames) -> np.ndarray:
    speed = rng.uniform(0.5, 3.0)
    big = fractal(rng, height, width + int(speed * frames) + 1)
    return np.stack([big[:, int(i * speed):int(i * speed) + width] for i in range(frames)]).astype(np.uint8)


def demo(index, height, width, frames) -> np.ndarray:
    clip = render(demo_clip(seed=11, index=index, width=max(width, height), height=min(width, height)), frames=frames)
    return clip if clip.shape[1] == height else clip.transpose(0, 2, 1, 3).copy()  # portrait demo clips turned


def noise(rng, height, width, frames) -> np.ndarray:
    return rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def gradient(rng, height, width, frames) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    a, b = rng.uniform(0, 255, 3), rng.uniform(-200, 200, (2, 3))
    image = np.clip(a + x[..., None] * b[0] + y[..., None] * b[1], 0, 255).astype(np.uint8)
    return np.broadcast_to(image, (frames, height, width, 3)).copy()


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of the luma (8x8 box windows, the usual constants), over the frames."""
    def box(x):
        return torch.nn.functional.avg_pool2d(x, 8, stride=4)
    x = torch.from_numpy(a.astype(np.float32) @ wm.LUMA)[:, None]
    y = torch.from_numpy(b.astype(np.float32) @ wm.LUMA)[:, None]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = box(x), box(y)
    vx, vy, cov = box(x * x) - mx**2, box(y * y) - my**2, box(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def detected(score: float, direct: float) -> bool:
    """What verify decides (wm.detect_mean): over THRESHOLD searched, or over DIRECT_THRESHOLD in place."""
    return score > wm.THRESHOLD or direct > wm.DIRECT_THRESHOLD


def rows_of(title: str, results: dict, hit) -> list[str]:
    """A table's header and one line per transform: detected (hit(clip)), bit accuracy, id read."""
    lines = [f"| {title} | detected | bit accuracy (mean / min) | id read |", "|---|---|---|---|"]
    for name, clips in results.items():
        bits = [r["bits"] for r in clips]
        lines.append(f"| {name} | {np.mean([hit(r) for r in clips]):.0%} | {np.mean(bits):.3f} / {min(bits):.3f} | "
                     f"{np.mean([r['id'] for r in clips]):.0%} |")
    return lines


def table(run: dict) -> str:
    """The markdown table of a run's results (its JSON), each clip decided at the current thresholds."""
    args, results, unmarked = run["args"], run["marked"], run["unmarked"]
    lines = rows_of(f"{args['width']}x{args['height']}x{args['frames']}, {args['clips']} clips per row", results,
                    lambda r: detected(r["score"], r["direct"]))
    false = sum(detected(r["score"], r["direct"]) for r in unmarked)
    lines.append(f"| unmarked ({len(unmarked)}: demo, pans, noise, gradients), crf 23 | {false} false positives "
                 f"(max score {max(r['score'] for r in unmarked):.1f} / {wm.THRESHOLD}, in place "
                 f"{max(r['direct'] for r in unmarked):.1f} / {wm.DIRECT_THRESHOLD}) | | |")
    psnrs, ssims = zip(*run["quality"])
    lines.append(f"| marked vs unmarked frames | PSNR {np.mean(psnrs):.1f} dB (min {min(psnrs):.1f}) | SSIM "
                 f"{np.mean(ssims):.4f} (min {min(ssims):.4f}) | |")
    return "\n".join(lines)


def aac(sound: np.ndarray, rate: int, bit_rate: int) -> np.ndarray:
    """A mono track [1, T] through AAC at `bit_rate` in an mp4, decoded back (with the encoder's delay)."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.bit_rate, stream.layout = bit_rate, "mono"
        chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(sound, dtype=np.float32), format="fltp", layout="mono")
        chunk.sample_rate = rate
        container.mux(stream.encode(chunk))
        container.mux(stream.encode(None))
    with av.open(io.BytesIO(buffer.getvalue())) as container:
        return np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)


def voice(rng, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    pitch = rng.uniform(90, 220) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    harmonics = sum(np.sin(k * phase) / k**rng.uniform(0.8, 1.5) for k in range(1, 30) if k * pitch.max() < rate / 2)
    gate = (np.sin(2 * np.pi * rng.uniform(2, 5) * t) > -0.3) * 1.0
    syllables = np.convolve(gate, np.ones(rate // 40) / (rate // 40), mode="same")
    return _level(harmonics * syllables + 0.02 * rng.standard_normal(t.size), rng)


def chords(rng, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    beat = rng.uniform(0.3, 0.8)
    notes = rng.uniform(110, 1760, 4)
    return _level(sum(np.sin(2 * np.pi * f * t) for f in notes) * np.exp(-(t % beat) * rng.uniform(2, 6)), rng)


def hiss(rng, rate: int, seconds: float) -> np.ndarray:
    return _level(rng.standard_normal(int(rate * seconds)), rng)


def _level(x: np.ndarray, rng) -> np.ndarray:
    return (rng.uniform(0.05, 0.4) * x / np.abs(x).max())[None]


def sound_rows(args) -> dict:
    rng = np.random.default_rng(1)
    makers, kinds = (voice, chords, hiss), ("voice", "chords", "noise")
    rows = {"AAC 64 kbit/s": [], "AAC 128 kbit/s": []}
    unmarked, quality = [], []
    for i in range(args.clips):
        sound = makers[i % 3](rng, args.rate, 5.0)
        payload = int(rng.integers(0, 2**32))
        marked = embed_audio(sound, args.rate, KEY, payload)
        quality.append(float(10 * np.log10((sound**2).sum() / ((marked - sound) ** 2).sum())))
        want = wm.payload_bits(payload)
        for name, bit_rate in (("AAC 64 kbit/s", 64000), ("AAC 128 kbit/s", 128000)):
            d = detect_audio(aac(marked, args.rate, bit_rate), args.rate, KEY)
            rows[name].append({"kind": kinds[i % 3], "score": d.score, "bits": float(np.mean(np.array(d.bits) == want)),
                               "id": d.payload == payload})
    for j in range(args.unmarked):
        d = detect_audio(aac(makers[j % 3](rng, args.rate, 5.0), args.rate, 64000), args.rate, KEY)
        unmarked.append({"kind": kinds[j % 3], "score": d.score})
    return {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "sound": rows,
            "unmarked": unmarked, "snr_db": quality}


def sound_table(run: dict) -> str:
    args, rows, unmarked = run["args"], run["sound"], run["unmarked"]
    lines = rows_of(f"sound, 5 s at {args['rate']} Hz, {args['clips']} tracks per row", rows,
                    lambda r: r["score"] > SOUND_THRESHOLD)
    false = sum(r["score"] > SOUND_THRESHOLD for r in unmarked)
    lines.append(f"| unmarked ({len(unmarked)}: voice, chords, noise), AAC 64 kbit/s | {false} false positives (max "
                 f"score {max(r['score'] for r in unmarked):.1f} / {SOUND_THRESHOLD}) | | |")
    lines.append(f"| mark below the sound | {np.mean(run['snr_db']):.1f} dB (min {min(run['snr_db']):.1f}) | | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=50)
    parser.add_argument("--unmarked", type=int, default=200)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/watermark.json"))
    parser.add_argument("--table-from", type=Path, help="print the table of an earlier run's JSON and stop")
    parser.add_argument("--sound", action="store_true", help="the sound track's mark instead of the pictures'")
    parser.add_argument("--rate", type=int, default=16000, help="--sound: the tracks' sample rate")
    args = parser.parse_args(argv)
    if args.table_from:
        run = json.loads(args.table_from.read_text())
        print(sound_table(run) if "sound" in run else table(run))
        return 0
    if args.sound:
        run = sound_rows(args)
        print(sound_table(run))
        args.out.write_text(json.dumps(run, indent=1) + "\n")
        return 0
    rng = np.random.default_rng(0)
    shape = (args.height, args.width, args.frames)
    began = time.time()
    results = {name: [] for name in ROWS}
    quality = []
    for i in range(args.clips):
        clip = demo(i, *shape) if i % 2 == 0 else pan(rng, *shape)
        payload = int(rng.integers(0, 2**32))
        marked = wm.embed(clip, KEY, payload)
        quality.append((wm.psnr(clip, marked), ssim(clip, marked)))
        want = wm.payload_bits(payload)
        for name, transform in ROWS.items():
            d = wm.detect(transform(marked), KEY)
            results[name].append({"kind": "demo" if i % 2 == 0 else "pan", "score": d.score,
                                  "direct": d.direct, "bits": float(np.mean(np.array(d.bits) == want)),
                                  "id": d.payload == payload})
        print(f"clip {i + 1}/{args.clips} ({time.time() - began:.0f} s)", file=sys.stderr, flush=True)
    unmarked = []
    makers = (lambda j: demo(1000 + j, *shape), lambda j: pan(rng, *shape), lambda j: noise(rng, *shape),
              lambda j: gradient(rng, *shape))
    kinds = ("demo", "pan", "noise", "gradient")
    for j in range(args.unmarked):
        d = wm.detect(h264(makers[j % 4](j), 23), KEY)
        unmarked.append({"kind": kinds[j % 4], "score": d.score, "direct": d.direct})
    run = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "marked": results,
           "unmarked": unmarked, "quality": quality}
    print(table(run))
    args.out.write_text(json.dumps(run, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
