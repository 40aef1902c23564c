"""WebDataset streaming of raw video and cached latents: shards -> buckets -> batches, resumable.

The Lightning pieces (DataConfig, DataMetrics, WanDataModule) load on first use, so the offline data tools,
which only need the schema, buckets and decoding, start without importing Lightning."""

from wan_train.data.buckets import ASPECT_RATIOS, SIZES, Bucket, BucketTable
from wan_train.data.errors import REASONS, SampleError
from wan_train.data.latents import EMPTY_PROMPT_FILE, LatentSource
from wan_train.data.metadata import ClipMeta, Subject, parse_meta
from wan_train.data.multishot import MultiShotSource
from wan_train.data.probe import VideoInfo, probe_video
from wan_train.data.references import MAX_REFERENCES, ReferenceSource, tag_caption
from wan_train.data.stream import BucketedStream
from wan_train.data.video import VideoSource

_LIGHTNING = ("DataConfig", "DataMetrics", "WanDataModule")

__all__ = [
    "ASPECT_RATIOS", "EMPTY_PROMPT_FILE", "MAX_REFERENCES", "REASONS", "SIZES", "Bucket", "BucketTable",
    "BucketedStream", "ClipMeta", "LatentSource", "MultiShotSource", "ReferenceSource", "SampleError", "Subject",
    "VideoInfo", "VideoSource", "parse_meta", "probe_video", "tag_caption", *_LIGHTNING,
]


def __getattr__(name: str):
    if name in _LIGHTNING:
        from wan_train.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'wan_train.data' has no attribute {name!r}")
