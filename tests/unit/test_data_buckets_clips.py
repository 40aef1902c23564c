"""The bucket table and clip sampling: shapes a batch may have, and which source frames a clip holds."""

import random

import numpy as np
import pytest
import torch

from tests.data_helpers import frame_index, indexed_video
from wan_train.data.buckets import SIZES, Bucket, BucketTable
from wan_train.data.clips import choose_start, frame_indices
from wan_train.data.decode import cover_size, crop_to_bucket, decode_frames
from wan_train.data.errors import SampleError
from wan_train.data.metadata import ClipMeta


def meta(*, fps=30.0, frames=300, width=854, height=480, **kw):
    return ClipMeta(captions=("x",), fps=fps, num_frames=frames, width=width, height=height,
                    duration=frames / fps, source="x.mp4", **kw)


def test_table_sizes_are_valid_for_vae_and_patch_strides():
    for stride in (16, 32):
        table = BucketTable(resolutions=("480p", "720p", "1080p"), durations=(5, 10, 15), spatial_stride=stride)
        assert len(table.buckets) == 3 * 5 * 3
        for bucket in table.buckets:
            assert bucket.width % stride == 0 and bucket.height % stride == 0
            assert (bucket.frames - 1) % 4 == 0
    assert BucketTable(resolutions=("720p",), spatial_stride=32).size("720p", "16:9") == (1280, 704)
    assert BucketTable().size("480p", "16:9") == (832, 480)
    assert BucketTable(durations=(5, 10, 15)).frame_counts == (81, 161, 241)
    assert BucketTable(durations=(5,), fps=24).frame_counts == (121,)
    for sizes in SIZES.values():  # every ratio of a resolution has about the same pixel count
        areas = [w * h for w, h in sizes.values()]
        assert max(areas) / min(areas) < 1.06


def test_assign_picks_ratio_resolution_and_frames():
    table = BucketTable(resolutions=("480p", "720p"), durations=(5, 10))
    assert table.assign(854, 480, 12.0) == Bucket(832, 480, 161)
    assert table.assign(1920, 1080, 7.0) == Bucket(1280, 720, 81)
    assert table.assign(1080, 1920, 7.0) == Bucket(720, 1280, 81)
    assert table.assign(640, 640, 5.1) == Bucket(624, 624, 81)
    assert table.assign(640, 480, 5.1) == Bucket(720, 544, 81)  # no fit without upscaling: smallest resolution
    assert table.assign(854, 480, 5.0) is None  # 81 frames at 16 fps need more than 5 s
    assert table.assign(854, 480, 5.01) == Bucket(832, 480, 81)
    assert Bucket.from_key(Bucket(832, 480, 81).key) == Bucket(832, 480, 81)


def test_bad_table_values_name_the_key():
    with pytest.raises(ValueError, match="resolutions"):
        BucketTable(resolutions=("360p",))
    with pytest.raises(ValueError, match="aspect_ratios"):
        BucketTable(aspect_ratios=("2:1",))
    with pytest.raises(ValueError, match="durations"):
        BucketTable(durations=(0.1,))


@pytest.mark.parametrize("src_fps", [12.0, 16.0, 24.0, 30.0])
def test_decoded_frames_are_those_at_the_intended_timestamps(src_fps):
    frames, fps = 48, 16.0
    video = indexed_video(frames=frames, width=96, height=64, fps=src_fps)
    m = meta(fps=src_fps, frames=frames, width=96, height=64)
    rng = random.Random(0)
    bucket = Bucket(64, 64, 9)
    for _ in range(3):
        start = choose_start(m, frames=9, fps=fps, mode="random", span="window", rng=rng, key="k")
        indices = frame_indices(m, start=start, frames=9, fps=fps)
        # frame shown at t = start + k / fps is floor(t * src_fps)
        assert indices == [int(np.floor((start + k / fps) * src_fps + 1e-6)) for k in range(9)]
        clip = crop_to_bucket(decode_frames(video, indices, size=cover_size(96, 64, bucket), key="k"), bucket,
                              mode="centre", rng=rng)
        assert clip.shape == (9, 64, 64, 3) and clip.dtype == torch.uint8
        assert [frame_index(clip[k].numpy()) for k in range(9)] == indices


def test_videos_decord_cannot_read_are_decoded_with_pyav():
    video = indexed_video(frames=12, width=48, height=64, fps=16.0)  # decord fails on 48 px wide, scaled or not
    indices = [0, 3, 3, 7, 11]
    for size in ((48, 64), (96, 128)):
        frames = decode_frames(video, indices, size=size, key="narrow")
        assert frames.shape == (5, size[1], size[0], 3)
        assert [frame_index(f) for f in frames] == indices
    with pytest.raises(SampleError, match="narrow: needs frame 12, the video has 12") as error:
        decode_frames(video, [0, 12], size=(48, 64), key="narrow")
    assert error.value.reason == "too_short"
    with pytest.raises(SampleError, match="junk: not a readable video") as error:
        decode_frames(b"not a video" * 100, [0], size=(48, 64), key="junk")
    assert error.value.reason == "undecodable"


def test_clip_stays_inside_window_and_shots():
    rng = random.Random(0)
    m = meta(fps=10.0, frames=100, start=2.0, end=6.0, shots=((0.0, 3.0), (3.0, 5.5), (5.5, 10.0)))
    for _ in range(50):
        start = choose_start(m, frames=9, fps=4.0, mode="random", span="shot", rng=rng, key="k")
        end = start + 8 / 4.0
        assert 3.0 <= start and end < 5.5  # the only shot inside [2, 6] long enough for 2 s
        start = choose_start(m, frames=9, fps=4.0, mode="random", span="window", rng=rng, key="k")
        assert 2.0 <= start and start + 2.0 < 6.0
    with pytest.raises(SampleError, match="no span") as error:
        choose_start(m, frames=17, fps=4.0, mode="random", span="window", rng=rng, key="k")
    assert error.value.reason == "too_short"
    centre = choose_start(meta(fps=10.0, frames=100), frames=11, fps=10.0, mode="centre", span="window", rng=rng,
                          key="k")
    assert centre == pytest.approx(4.4)  # starts 0 .. 8.9 s: the middle one, on the frame grid
