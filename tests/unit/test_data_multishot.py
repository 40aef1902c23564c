"""Multi-shot samples over real shards of real mp4s: k shots of 1 + 4m frames each from inside their own shot
(checked on make_demo's per-shot backgrounds and on frames that say which frame they are), the prompts, caption
dropout, collation and the stream, the skip reasons and the config errors."""

import json
import random

import numpy as np
import pytest
import webdataset as wds

from data_tools.make_demo import BACKGROUNDS, make_demo, shot_clips
from tests.data_helpers import frame_index, video_sample
from wan_train.data.buckets import BucketTable
from wan_train.data.clips import frame_indices
from wan_train.data.datamodule import DataConfig, make_source
from wan_train.data.errors import SampleError
from wan_train.data.metadata import ClipMeta, parse_meta
from wan_train.data.multishot import MultiShotSource, frames_per_shot
from wan_train.data.stream import BucketedStream

TABLE = BucketTable(resolutions=("144p",), durations=(3.0,), fps=8.0)  # 25-frame buckets at 8 fps
F = 9  # frames per shot of a 2-shot sample in a 25-frame bucket: 1 + 4 * floor((25 // 2 - 1) / 4)
DEMO = dict(seed=3, width=96, height=64, frames=25, fps=8.0, shard_size=4)  # 3.125 s, cut at frame 12 (1.5 s)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("multishot_demo")
    make_demo(root / "shots", num_clips=4, shots=True, **DEMO)
    make_demo(root / "plain", num_clips=1, **DEMO)
    return {name: sorted(str(p) for p in (root / name).glob("*.tar")) for name in ("shots", "plain")}


def samples(urls):
    return list(wds.WebDataset(urls, shardshuffle=False))


def load(source, sample, seed=0):
    planned = source.plan(sample, rng=random.Random(seed))
    return planned, source.load(planned, rng=random.Random(seed))


def background(frame) -> str:
    """The BACKGROUNDS name nearest the frame's per-channel median (the shape covers well under half of it)."""
    median = np.median(np.asarray(frame, dtype=np.float64).reshape(-1, 3), axis=0)
    return min(BACKGROUNDS, key=lambda name: np.linalg.norm(median - BACKGROUNDS[name]))


def test_frames_per_shot_is_one_plus_stride_multiple():
    assert [frames_per_shot(n, shots=2, temporal_stride=4) for n in (5, 9, 25, 33, 81)] == [1, 1, 9, 13, 37]
    assert frames_per_shot(81, shots=3, temporal_stride=4) == 25


@pytest.mark.parametrize("clip_start", ["random", "centre"])
def test_demo_sample_is_two_shots_from_either_side_of_the_cut(demo, clip_start):
    source = MultiShotSource(TABLE, shots=2, clip_start=clip_start)
    for seed, sample in enumerate(samples(demo["shots"])[:3]):
        planned, item = load(source, sample, seed)
        meta = parse_meta(sample["json"], key="demo")
        assert planned.bucket.frames == 25 and item["shot_frames"] == [F, F]
        assert item["video"].shape == (2 * F, planned.bucket.height, planned.bucket.width, 3)
        assert item["prompt"] == meta.captions[0] and item["shot_prompts"] == list(meta.shot_captions)
        first, second = shot_clips(seed=3, index=int(sample["__key__"]), width=96, height=64)
        assert [background(f) for f in item["video"]] == [first.background] * F + [second.background] * F
        cut = meta.shots[0][1]
        (s1, s2) = item["shot_starts"]
        assert item["start"] == s1 and 0 <= s1 and s1 + (F - 1) / 8.0 < cut <= s2
        assert s2 + (F - 1) / 8.0 < meta.duration


def test_shots_come_from_a_run_that_holds_them_and_never_cross_a_cut():
    """Three shots; the first too short for its share, so the run is always shots 1-2; decoded frames say their
    index, which lies in the shot the frames are for."""
    shots = ((0.0, 0.25), (0.25, 3.0), (3.0, 6.0))
    key, members = video_sample("s", frames=48, width=64, height=64, fps=8.0, captions=("all",), shots=shots,
                                shot_captions=("one", "two", "three"))
    sample = {**members, "__key__": key, "__url__": "mem"}
    meta = parse_meta(members["json"], key=key)
    for seed in range(4):
        planned, item = load(MultiShotSource(TABLE, shots=2), sample, seed)
        assert item["shot_prompts"] == ["two", "three"] and item["shot_frames"] == [F, F]
        for n, ((a, b), start) in enumerate(zip(shots[1:], item["shot_starts"], strict=True)):
            got = [frame_index(f) for f in item["video"][n * F:(n + 1) * F]]
            assert got == frame_indices(meta, start=start, frames=F, fps=8.0)
            assert a * 8.0 <= got[0] and got[-1] < b * 8.0


def test_caption_dropout_blanks_every_caption_together(demo):
    sample = samples(demo["shots"])[0]
    _, item = load(MultiShotSource(TABLE, shots=2, caption_dropout=1.0), sample)
    assert item["prompt"] == "" and item["shot_prompts"] == ["", ""]
    _, kept = load(MultiShotSource(TABLE, shots=2, caption_dropout=0.0), sample)
    assert kept["prompt"] and all(kept["shot_prompts"])


def test_collate_and_stream(demo):
    source = MultiShotSource(TABLE, shots=2)
    items = [load(source, sample)[1] for sample in samples(demo["shots"])[:2]]  # both landscape: one bucket
    batch = source.collate(items)
    assert batch["video"].shape == (2, 2 * F, *items[0]["video"].shape[1:])
    assert batch["shot_frames"] == [F, F] and batch["shot_prompts"] == [i["shot_prompts"] for i in items]
    assert batch["prompt"] == [i["prompt"] for i in items] and len(batch["shot_starts"]) == 2
    with pytest.raises(ValueError, match="mixes shot layouts"):
        source.collate([items[0], {**items[1], "shot_frames": [5, 5]}])
    stream = BucketedStream(demo["shots"], source, batch_size=2, seed=0, shuffle_buffer=1, epochs=1, rank=0,
                            world_size=1)
    batches = list(stream)
    assert sum(len(b["key"]) for b in batches) == 4
    assert all(b["video"].shape[1] == sum(b["shot_frames"]) == 2 * F for b in batches)


def test_skips(demo):
    source = MultiShotSource(TABLE, shots=2)
    plain = samples(demo["plain"])[0]
    with pytest.raises(SampleError, match="shot_captions") as error:
        source.plan(plain, rng=random.Random(0))
    assert error.value.reason == "no_shots"
    with pytest.raises(SampleError) as error:  # two recorded shots, three asked for
        MultiShotSource(TABLE, shots=3).plan(samples(demo["shots"])[0], rng=random.Random(0))
    assert error.value.reason == "no_shots"
    key, members = video_sample("short", frames=48, width=64, height=64, fps=8.0, shots=((0.0, 0.25), (0.25, 6.0)),
                                shot_captions=("a", "b"))
    with pytest.raises(SampleError, match="shot 0") as error:
        source.plan({**members, "__key__": key, "__url__": "mem"}, rng=random.Random(0))
    assert error.value.reason == "too_short"


def test_shot_captions_metadata():
    meta = ClipMeta(captions=("all",), fps=8.0, num_frames=16, width=64, height=64, duration=2.0, source="x",
                    shots=((0.0, 1.0), (1.0, 2.0)), shot_captions=("one", "two"))
    assert parse_meta(meta.to_json(), key="k") == meta
    plain = ClipMeta(captions=("all",), fps=8.0, num_frames=16, width=64, height=64, duration=2.0, source="x")
    assert "shot_captions" not in plain.to_json()
    for bad in ({"shot_captions": ["one", "two"]}, {"shots": [[0, 1]], "shot_captions": ["one", "two"]},
                {"shots": [[0, 1], [1, 2]], "shot_captions": "one"},
                {"shots": [[0, 1], [1, 2]], "shot_captions": ["one", 2]}):
        raw = json.dumps(plain.to_json() | bad)
        with pytest.raises(SampleError, match="sample-7") as error:
            parse_meta(raw, key="sample-7")
        assert error.value.reason == "bad_metadata"


def test_config():
    assert isinstance(make_source(DataConfig(shots=2), []), MultiShotSource)
    assert make_source(DataConfig(shots=3), []).shots == 3
    for shots in (1, -1):
        with pytest.raises(ValueError, match="data.shots"):
            DataConfig(shots=shots)
    with pytest.raises(ValueError, match="kind"):
        DataConfig(shots=2, kind="latents")
    with pytest.raises(ValueError, match="not supported together yet"):
        DataConfig(shots=2, references=1)
    with pytest.raises(ValueError, match="at least 2"):
        MultiShotSource(TABLE, shots=0)
