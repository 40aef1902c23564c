"""The metadata layer: a record saying the video is AI-generated, by what, from which model and settings, kept in
the mp4's container tags and in the sidecar JSON (and, signed, in the C2PA manifest).

    record = provenance_record(metadata, marking={...})   # {"ai_generated": true, "generator": "wan_train", ...}
    tags = container_tags(record)                          # {"comment": JSON, "description": one line}
    read_record(Path("fox.mp4"))                           # the record back from the tags, or None

The record names the model (the checkpoint the caller recorded) and adapters, the seed, and a SHA-256 of the
generation settings (the caller's metadata without timings); the first 32 bits of that hash are the output id the
watermark carries, so a video found without its files leads back to its settings. No prompt text: the record goes
wherever the video goes (the prompt stays in the sidecar JSON beside it). FFmpeg's mp4 muxer keeps `comment` and
`description` (custom keys need a muxer flag and get lost); either is lost when a platform re-encodes, as C2PA is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import av

from wan_train.marking.manifest import software_version

VOLATILE = ("seconds_per_video", "scores")  # timings and scores: not settings
TAG = "comment"


def settings_hash(metadata: dict) -> str:
    settings = {k: v for k, v in metadata.items() if k not in VOLATILE}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def provenance_record(metadata: dict, *, marking: dict) -> dict:
    digest = settings_hash(metadata)
    lora = metadata.get("lora") or []
    return {"ai_generated": True, "generator": "wan_train", "generator_version": software_version(),
            "model": metadata.get("checkpoint", metadata.get("ckpt")),
            "adapters": [a.get("source", a) if isinstance(a, dict) else a for a in lora],
            "seed": metadata.get("seed"), "settings_sha256": digest, "output_id": digest[:8], "marking": marking}


def container_tags(record: dict) -> dict[str, str]:
    summary = (f"AI-generated video ({record['generator']} {record['generator_version']}, output "
               f"{record['output_id']})")
    return {TAG: json.dumps(record, sort_keys=True, default=str), "description": summary}


def read_record(path: Path) -> dict | None:
    """The provenance record of a file's container tags (ours, or a JSON comment saying ai_generated that another
    tool wrote); None when there is none. A file PyAV cannot open raises ValueError naming it."""
    try:
        with av.open(str(path)) as container:
            tags = dict(container.metadata)
    except av.error.FFmpegError as error:
        raise ValueError(f"{path}: not a video or image file PyAV can read ({error})") from None
    try:
        record = json.loads(tags.get(TAG, ""))
    except ValueError:
        return None
    return record if isinstance(record, dict) and "ai_generated" in record else None
