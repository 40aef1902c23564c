"""Marker: the three layers applied to one generated video, as configured (marking.* in train.py's and
generate.py's configs; on unless marking.enabled=false).

    marker = Marker.from_config(cfg.marking)
    record = marker.record(metadata)                    # the provenance record (sidecar, tags, C2PA assertion)
    frames = marker.watermark(frames_uint8, record)     # the invisible mark, carrying record["output_id"]
    data = marker.sign(mp4_bytes, record, title="fox.mp4", ingredients=[input_image])

A layer that is off is said so in the record (and logged once per process), never silently missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from wan_train.marking import watermark as wm
from wan_train.marking.audio_watermark import embed_audio
from wan_train.marking.keys import key_id, watermark_key
from wan_train.marking.manifest import ALGS, Signer, installation_signer, readable_by_c2pa, sign_mp4
from wan_train.marking.provenance import provenance_record

log = logging.getLogger(__name__)
METHOD = "wan_train.keyed_luma.v1"
_said: set[str] = set()


def _once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.warning(message)


@dataclass(frozen=True)
class Marker:
    enabled: bool = True
    watermark_enabled: bool = True
    key: str | None = None  # None: the installation's key
    strength: float = wm.STRENGTH
    c2pa_enabled: bool = True
    signer: Signer | None = None  # None: the installation's signer

    @classmethod
    def from_config(cls, cfg: Any) -> Marker:
        """From a `marking` config section (see MarkingConfig); None gives the defaults (everything on)."""
        if cfg is None:
            return cls()
        c2pa, mark = cfg.c2pa, cfg.watermark
        if (c2pa.sign_cert is None) != (c2pa.private_key is None):
            raise ValueError("marking.c2pa.sign_cert and marking.c2pa.private_key go together: give both (your "
                             "certificate chain and its key, PEM) or neither (this installation's own signer)")
        if c2pa.alg not in ALGS:
            raise ValueError(f"marking.c2pa.alg={c2pa.alg!r}: expected one of {', '.join(ALGS)}")
        if not 0 < mark.strength <= 8:
            raise ValueError(f"marking.watermark.strength={mark.strength}: expected a value in (0, 8] (8-bit levels; "
                             f"{wm.STRENGTH} is about 42 dB PSNR)")
        signer = None if c2pa.sign_cert is None else Signer(Path(c2pa.sign_cert), Path(c2pa.private_key),
                                                           alg=c2pa.alg, ta_url=c2pa.ta_url)
        return cls(enabled=cfg.enabled, watermark_enabled=mark.enabled, key=mark.key, strength=mark.strength,
                   c2pa_enabled=c2pa.enabled, signer=signer)

    @cached_property
    def _resolved_key(self) -> str:  # the installation's made or read once per Marker, not per video
        return watermark_key(self.key)

    @cached_property
    def _signer(self) -> Signer:
        return self.signer or installation_signer()

    def record(self, metadata: dict) -> dict:
        if not self.enabled:
            _once("marking.enabled=false: generated videos are NOT marked as AI-generated (no watermark, no C2PA "
                  "manifest, no container tags); the EU AI Act (Art. 50(2)) asks providers to mark them")
            return {"ai_generated": True, "marking": "off (marking.enabled=false)"}
        marking: dict[str, Any] = {}
        if self.watermark_enabled:
            marking["watermark"] = {"method": METHOD, "key_id": key_id(self._resolved_key),
                                    "strength": self.strength, "payload": "output_id"}
        else:
            _once("marking.watermark.enabled=false: generated videos carry no invisible watermark")
            marking["watermark"] = "off (marking.watermark.enabled=false)"
        if self.c2pa_enabled:
            marking["c2pa"] = {"signer": "configured" if self.signer else "installation", "alg": self._signer.alg,
                               "time_stamped": bool(self._signer.ta_url)}
        else:
            _once("marking.c2pa.enabled=false: generated videos carry no signed C2PA manifest")
            marking["c2pa"] = "off (marking.c2pa.enabled=false)"
        return provenance_record(metadata, marking=marking)

    def watermark(self, frames: np.ndarray, record: dict) -> np.ndarray:
        if not (self.enabled and self.watermark_enabled):
            return frames
        return wm.embed(frames, self._resolved_key, int(record["output_id"], 16), strength=self.strength)

    def watermark_sound(self, samples: np.ndarray, rate: int, record: dict) -> np.ndarray:
        """A sound track [C, T] (float in [-1, 1]) with the audio mark carrying the same output id."""
        if not (self.enabled and self.watermark_enabled):
            return samples
        return embed_audio(samples, rate, self._resolved_key, int(record["output_id"], 16))

    def sign(self, data: bytes, record: dict, *, title: str, ingredients=()) -> bytes:
        """The mp4 with its signed manifest; `ingredients` (input files) join its chain where c2pa reads their
        type (a type it does not read is named once in the log and left out)."""
        if not (self.enabled and self.c2pa_enabled):
            return data
        inputs = [Path(p) for p in ingredients if p is not None and Path(p).is_file()]
        for path in [p for p in inputs if not readable_by_c2pa(p)]:
            _once(f"{path}: c2pa does not read {path.suffix or 'this'} files; left out of the C2PA ingredients")
        return sign_mp4(data, signer=self._signer, generation=record, title=title,
                        watermarked=self.watermark_enabled, ingredients=[p for p in inputs if readable_by_c2pa(p)])
