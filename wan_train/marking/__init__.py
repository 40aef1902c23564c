"""Provenance of what wan_train generates (EU AI Act Art. 50(2)): every generated video is marked as AI-generated
in three layers, and `verify` reads them back (ours and other tools'):

1. metadata (provenance.py): a record in the mp4's container tags and the sidecar JSON;
2. C2PA (manifest.py): a signed manifest (c2pa.created, trainedAlgorithmicMedia), hard-bound to the bytes;
3. watermark (watermark.py): an invisible keyed mark in the pixels carrying the output id, which survives
   re-encoding, resizing, cropping and frame drops, when the first two are stripped.

    python -m wan_train.marking verify out/fox.mp4 [--json] [--key KEY] [--trust-anchors CA.pem]

Imports nothing of wan_train above wan_train.fileio.
"""

from wan_train.marking.marker import Marker
from wan_train.marking.provenance import container_tags, provenance_record, read_record

__all__ = ["Marker", "container_tags", "provenance_record", "read_record"]
