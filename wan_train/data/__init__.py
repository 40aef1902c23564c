"""WebDataset streaming of raw video and cached latents: shards -> buckets -> batches, resumable."""

from wan_train.data.buckets import ASPECT_RATIOS, SIZES, Bucket, BucketTable
from wan_train.data.datamodule import DataConfig, DataMetrics, WanDataModule
from wan_train.data.errors import REASONS, SampleError
from wan_train.data.latents import EMPTY_PROMPT_FILE, LatentSource
from wan_train.data.metadata import ClipMeta, parse_meta
from wan_train.data.probe import VideoInfo, probe_video
from wan_train.data.stream import BucketedStream
from wan_train.data.video import VideoSource

__all__ = [
    "ASPECT_RATIOS", "EMPTY_PROMPT_FILE", "REASONS", "SIZES", "Bucket", "BucketTable", "BucketedStream", "ClipMeta",
    "DataConfig", "DataMetrics", "LatentSource", "SampleError", "VideoInfo", "VideoSource", "WanDataModule",
    "parse_meta", "probe_video",
]
