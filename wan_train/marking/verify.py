"""Reading every mark a file carries, ours and other tools': what `python -m wan_train.marking verify` prints.

    report = verify(Path("fox.mp4"), keys=[...], trust_anchors=[Path("ca.pem")])
    report.verdict     # "marked" | "unmarked" | "tampered"

A file is marked when any layer says AI-generated: the metadata record, a C2PA manifest that validates (Valid or
Trusted) with an AI digital source type, or the watermark of one of the keys in the pictures or the sound track.
A C2PA manifest that does not validate (a changed byte) makes it "tampered", whatever else is found. The keys
tried are the ones given plus this installation's (when it has one); each is named by its key_id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from wan_train.marking import watermark as wm
from wan_train.marking.audio_watermark import detect_audio, period_of
from wan_train.marking.keys import installation_key, key_id
from wan_train.marking.manifest import ManifestReport, read_manifest
from wan_train.marking.provenance import read_record

MAX_FRAMES = 241  # frames read for the watermark (the mark is the same in every frame)
AI_SOURCE_TYPES = ("trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia", "algorithmicMedia",
                   "compositeSynthetic")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class Report:
    path: Path
    metadata: dict | None
    c2pa: ManifestReport
    watermarks: dict[str, wm.Detection] = field(default_factory=dict)  # key_id -> detection
    sound: dict[str, wm.Detection] = field(default_factory=dict)  # key_id -> the sound track's (when it has one)

    @property
    def c2pa_says_ai(self) -> bool:
        source = self.c2pa.digital_source_type or ""
        return self.c2pa.state in ("Valid", "Trusted") and source.rsplit("/", 1)[-1] in AI_SOURCE_TYPES

    @property
    def verdict(self) -> str:
        if self.c2pa.state == "Invalid":
            return "tampered"
        found = (bool(self.metadata and self.metadata.get("ai_generated")) or self.c2pa_says_ai
                 or any(d.marked for d in (*self.watermarks.values(), *self.sound.values())))
        return "marked" if found else "unmarked"

    def output_ids(self) -> set[str]:
        records = [self.metadata, self.c2pa.generation]
        return {r["output_id"] for r in records if isinstance(r, dict) and r.get("output_id")}

    def as_dict(self) -> dict:
        return {"path": str(self.path), "verdict": self.verdict, "metadata": self.metadata,
                "c2pa": self.c2pa.as_dict(),
                "watermark": {k: d.as_dict() for k, d in self.watermarks.items()},
                "sound_watermark": {k: d.as_dict() for k, d in self.sound.items()}}

    def text(self) -> str:
        lines = [f"{self.path}: {VERDICTS[self.verdict]}"]
        if self.metadata:
            lines.append(f"  metadata   ai_generated={self.metadata.get('ai_generated')} by "
                         f"{self.metadata.get('generator', '?')} {self.metadata.get('generator_version', '')}".rstrip()
                         + (f", output {self.metadata['output_id']}" if self.metadata.get("output_id") else "")
                         + (f", model {_model(self.metadata['model'])}" if self.metadata.get("model") else ""))
        else:
            lines.append("  metadata   none")
        c2pa = self.c2pa
        if c2pa.state == "absent":
            lines.append("  c2pa       no manifest")
        else:
            trust = {"Trusted": "trusted signer", "Valid": "signer not in the trust anchors",
                     "Invalid": "does NOT validate: " + ", ".join(c2pa.errors[:3])}[c2pa.state]
            source = (c2pa.digital_source_type or "no source type").rsplit("/", 1)[-1]
            lines.append(f"  c2pa       {c2pa.state} ({trust}), signer {c2pa.signer!r}, {source}, made by "
                         f"{c2pa.software_agent}" + (f", time-stamped {c2pa.time}" if c2pa.time else ""))
        if not self.watermarks:
            lines.append("  watermark  no key to look for (pass --key, or generate once on this machine)")
        ids = self.output_ids()
        for kid, d in self.watermarks.items():
            if not d.marked:
                lines.append(f"  watermark  key {kid}: not found (score {d.score:.1f} <= {wm.THRESHOLD}, "
                             f"{d.direct:.1f} <= {wm.DIRECT_THRESHOLD} in place)")
                continue
            payload = (f"payload {d.payload:08x}" + (" (matches the record)" if f"{d.payload:08x}" in ids else
                                                    " (differs from the record)" if ids else "")
                       if d.payload is not None else "payload unreadable (CRC mismatch)")
            size = "" if abs(d.scale - 1) < 1e-3 else f", at {d.scale:.2f}x the marked size"
            score = (f"score {d.score:.1f} > {wm.THRESHOLD}" if d.score > wm.THRESHOLD else
                     f"score in place {d.direct:.1f} > {wm.DIRECT_THRESHOLD}")
            lines.append(f"  watermark  key {kid}: found ({score}{size}), {payload}")
        for kid, d in self.sound.items():
            found = (f"found (score {d.score:.1f}), " + (f"payload {d.payload:08x}" if d.payload is not None else
                                                        "payload unreadable (CRC mismatch)")
                     if d.marked else f"not found (score {d.score:.1f})")
            lines.append(f"  sound      key {kid}: {found}")
        return "\n".join(lines)


def _model(model) -> str:
    """A record's model (generate.py records the checkpoint as {run, dit, size}) as a short name."""
    if isinstance(model, dict):
        return str(model.get("run") or model.get("dit") or model.get("path") or model)
    return str(model)


VERDICTS = {"marked": "AI-generated (marked)", "unmarked": "no AI mark found",
            "tampered": "TAMPERED (its C2PA manifest does not validate)"}


def read_frames(path: Path, max_frames: int = MAX_FRAMES) -> np.ndarray:
    """uint8 [F, H, W, 3] of a video (the first max_frames) or an image ([1, H, W, 3])."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"))[None]
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"{path}: not an image PIL can read ({error})") from None
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: no video stream")
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) == max_frames:
                    break
    except av.error.FFmpegError as error:
        raise ValueError(f"{path}: not a video PyAV can read ({error})") from None
    if not frames:
        raise ValueError(f"{path}: the video has no frames")
    return np.stack(frames)


def read_sound(path: Path) -> tuple[np.ndarray, int] | None:
    """The first sound track as float samples [C, T] and its rate; None without one (or an image)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return None
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            rate = stream.rate
            planar = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=rate)  # any sample format
            chunks = [part.to_ndarray() for frame in container.decode(stream) for part in planar.resample(frame)]
            chunks += [part.to_ndarray() for part in planar.resample(None)]
    except av.error.FFmpegError as error:
        raise ValueError(f"{path}: its sound track cannot be decoded ({error})") from None
    return (np.concatenate(chunks, axis=1), rate) if chunks else None


def verify(path: Path, *, keys=(), trust_anchors=(), threshold: float = wm.THRESHOLD) -> Report:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    own = installation_key(create=False)
    tried = list(dict.fromkeys([*keys, *([own] if own else [])]))
    mean = wm.luma_mean(read_frames(path)) if tried else None
    metadata = None if path.suffix.lower() in IMAGE_SUFFIXES else read_record(path)
    try:
        c2pa = read_manifest(path, trust_anchors=trust_anchors)
    except ValueError:  # a type c2pa does not read
        c2pa = ManifestReport("absent", None, None, None, None, None, ["file type not read by c2pa"])
    sound = read_sound(path) if tried else None
    heard = {}
    if sound is not None and sound[0].shape[1] >= period_of(sound[1]):
        heard = {key_id(k): detect_audio(*sound, k) for k in tried}
    return Report(path=path, metadata=metadata, c2pa=c2pa,
                  watermarks={key_id(k): wm.detect_mean(mean, k, threshold=threshold) for k in tried}, sound=heard)


EXIT = {"marked": 0, "unmarked": 1, "tampered": 2}


def exit_code(reports: list[Report]) -> int:
    """2 when any file is tampered, else 1 when any has no mark, else 0."""
    return max((EXIT[r.verdict] for r in reports), default=1)
