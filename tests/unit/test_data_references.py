"""Reference-to-video samples over real shards of real mp4s: references come from other moments than the clip
(checked on decoded frames that say which frame they are), crops show the subject (checked on make_demo's known
colours), tags and slots agree with the pixels, dropout and padding, the DataModule's conversion, the errors, and
data_tools.reference_index."""

import json
import random
from collections import Counter

import numpy as np
import pytest
import torch
import webdataset as wds

from data_tools import reference_index
from data_tools.make_demo import BACKGROUNDS, COLOURS, demo_clip, make_demo
from tests.data_helpers import frame_index, video_sample, write_shard
from wan_train.data.buckets import BucketTable
from wan_train.data.clips import frame_indices
from wan_train.data.datamodule import DataConfig, WanDataModule
from wan_train.data.errors import SampleError
from wan_train.data.metadata import ClipMeta, Subject, parse_meta
from wan_train.data.references import PAD_VALUE, ReferenceSource, tag_caption
from wan_train.data.stream import BucketedStream

TABLE = BucketTable(resolutions=("144p",), durations=(1.0,), fps=8.0)  # 9-frame clips at 8 fps
DEMO = dict(seed=3, width=96, height=64, frames=25, fps=8.0, shard_size=4)  # 3.1 s clips


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """make_demo shards: one shape with --subjects, two shapes with --subjects, one shape without subjects."""
    root = tmp_path_factory.mktemp("r2v_demo")
    make_demo(root / "single", num_clips=4, subjects=True, **DEMO)
    make_demo(root / "multi", num_clips=4, subjects=True, multi=True, **DEMO)
    make_demo(root / "plain", num_clips=2, **DEMO)
    return {name: sorted(str(p) for p in (root / name).glob("*.tar")) for name in ("single", "multi", "plain")}


def samples(urls):
    return list(wds.WebDataset(urls, shardshuffle=False))


def load(source, sample, seed):
    planned = source.plan(sample, rng=random.Random(seed))
    return planned, source.load(planned, rng=random.Random(seed))


def centre_colour(frame) -> np.ndarray:
    """Mean RGB of the middle sixth (each way) of a [H, W, 3] frame."""
    h, w = frame.shape[:2]
    return np.asarray(frame[h * 5 // 12:h * 7 // 12, w * 5 // 12:w * 7 // 12], dtype=np.float64).reshape(-1, 3).mean(0)


def distance(a, b) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=np.float64)))


def demo_shapes(sample, multi):
    clip = demo_clip(seed=3, index=int(sample["__key__"]), width=96, height=64, multi=multi)
    return clip, {shape.subject: shape for shape in clip.shapes}


# --- moments ------------------------------------------------------------------------------------------------------

ONE_SUBJECT = (Subject("a subject"),)


def indexed(key, *, frames=48, captions=("a clip of a subject",), subjects=ONE_SUBJECT, **fields):
    """A 64x64 video at 8 fps whose frames say their index, with one subject (no boxes: whole-frame references)."""
    return video_sample(key, frames=frames, width=64, height=64, fps=8.0, captions=captions, subjects=subjects,
                        **fields)


def as_sample(key_members):
    key, members = key_members
    return {**members, "__key__": key, "__url__": "mem"}


def shown(indices, src_fps=8.0):
    """The display interval (seconds) of consecutive source frames."""
    return indices[0] / src_fps, (indices[-1] + 1) / src_fps


def test_references_never_overlap_the_clip_and_keep_the_gap():
    source = ReferenceSource(TABLE, references=1, reference_frames=5, reference_gap=0.5)
    sample = as_sample(indexed("k"))
    sides = Counter()
    for seed in range(16):
        planned, item = load(source, sample, seed)
        video = [frame_index(f.numpy()) for f in item["video"]]
        assert video == frame_indices(planned.choice["source_meta"], start=item["start"], frames=9, fps=8.0)
        (ref,), (start,) = item["refs"], item["ref_starts"]
        got = [frame_index(f.numpy()) for f in ref]  # the decoded reference frames, read back from their pixels
        assert got == frame_indices(planned.choice["source_meta"], start=start, frames=5, fps=8.0)
        (c0, c1), (r0, r1) = shown(video), shown(got)
        assert r1 + 0.5 <= c0 + 1e-9 or r0 >= c1 + 0.5 - 1e-9, (video, got)
        sides["before" if r1 <= c0 else "after"] += 1
    assert set(sides) == {"before", "after"}


def test_a_reference_comes_from_another_shot_when_the_video_has_shots():
    source = ReferenceSource(TABLE, references=1, reference_gap=0.5)
    sample = as_sample(indexed("k", frames=32, shots=((0.0, 1.5), (1.5, 4.0))))
    shots = Counter()
    for seed in range(12):
        _, item = load(source, sample, seed)
        clip = item["start"] < 1.5
        shots[clip] += 1
        assert (item["ref_starts"][0] < 1.5) != clip  # the other shot, at any moment of it (no gap needed)
    assert shots[True] and shots[False]


def test_the_clip_is_placed_where_a_reference_fits_else_the_sample_is_skipped():
    source = ReferenceSource(TABLE, references=1, reference_gap=0.5)
    tight = as_sample(indexed("k", frames=16))  # 2 s: a 1.125 s clip leaves room on one side only
    for seed in range(12):
        planned, item = load(source, tight, seed)
        indices = frame_indices(planned.choice["source_meta"], start=item["start"], frames=9, fps=8.0)
        (c0, c1), r0 = shown(indices), item["ref_starts"][0]
        assert r0 + 1 / 8 + 0.5 <= c0 + 1e-9 or r0 >= c1 + 0.5 - 1e-9
    short = as_sample(indexed("k", frames=12))  # 1.5 s: a clip fits, a clip and a reference 0.5 s away do not
    with pytest.raises(SampleError, match="no span holds") as error:
        source.plan(short, rng=random.Random(0))
    assert error.value.reason == "no_reference_moment"


# --- crops --------------------------------------------------------------------------------------------------------

def test_subject_crops_show_the_subject_and_frame_crops_the_whole_frame(demo):
    subject = ReferenceSource(TABLE, references=1, reference_crop="subject")
    frame = ReferenceSource(TABLE, references=1, reference_crop="frame")
    for sample in samples(demo["single"]):
        clip, _ = demo_shapes(sample, multi=False)
        colour, background = COLOURS[clip.colour], BACKGROUNDS[clip.background]
        _, item = load(subject, sample, 0)
        ref = item["refs"][0, 0].numpy()
        assert ref.shape == item["video"].shape[1:]  # the target's H x W
        assert distance(centre_colour(ref), colour) < 40, (clip, centre_colour(ref))
        # letterboxed: the crop around the shape is about square, the bucket is not: black bars on its long sides
        bars = ref[:, :8] if ref.shape[1] > ref.shape[0] else ref[:8]
        assert (bars == PAD_VALUE).all()
        _, item = load(frame, sample, 0)
        whole = item["refs"][0, 0].numpy().reshape(-1, 3).astype(np.float64)
        near_background = np.linalg.norm(whole - background, axis=1) < 40
        assert near_background.mean() > 0.6, (clip, near_background.mean())


# --- tags and slots -----------------------------------------------------------------------------------------------

def test_tags_replace_the_names_and_slot_k_shows_the_subject_tagged_at_video_k_plus_1(demo):
    source = ReferenceSource(TABLE, references=3)  # the clips have two subjects: both, in random slots
    orders = Counter()
    for sample in samples(demo["multi"]):
        clip, shapes = demo_shapes(sample, multi=True)
        for seed in range(4):
            _, item = load(source, sample, seed)
            names, prompt = item["ref_names"], item["prompt"]
            assert sorted(names) == sorted(shapes) and item["refs"].shape[0] == 2
            assert "@Video1" in prompt and "@Video2" in prompt and not any(n in prompt for n in names)
            untagged = prompt.replace("@Video1", names[0]).replace("@Video2", names[1])
            assert untagged == clip.caption
            for k, name in enumerate(names):  # ref k is the subject named in slot k, not the other one
                seen = centre_colour(item["refs"][k, 0].numpy())
                other = next(n for n in names if n != name)
                assert distance(seen, COLOURS[shapes[name].colour]) < distance(seen, COLOURS[shapes[other].colour])
                assert distance(seen, COLOURS[shapes[name].colour]) < 40
            orders[names[0] == clip.subject] += 1
    assert orders[True] and orders[False]  # slot order varies with the rng


def test_fewer_slots_than_subjects_pick_a_random_subset_and_tag_only_them(demo):
    source = ReferenceSource(TABLE, references=1)
    chosen = Counter()
    for sample in samples(demo["multi"]):
        clip, _ = demo_shapes(sample, multi=True)
        for seed in range(4):
            planned = source.plan(sample, rng=random.Random(seed))
            (subject,) = planned.choice["subjects"]
            other = next(s.subject for s in clip.shapes if s.subject != subject.name)
            assert planned.choice["prompt"] == clip.caption.replace(subject.name, "@Video1")
            assert other in planned.choice["prompt"] and "@Video2" not in planned.choice["prompt"]
            chosen[subject.name == clip.subject] += 1
    assert chosen[True] and chosen[False]


def test_tagging_takes_the_first_occurrence_and_longer_names_first():
    assert tag_caption("a dog and a hot dog and a dog", ["a dog", "hot dog"], key="k") == \
        "@Video1 and a @Video2 and a dog"
    assert tag_caption("a hot dog and a dog", ["dog", "a hot dog"], key="k") == "@Video2 and a @Video1"
    with pytest.raises(SampleError, match="'A dog' is not in the caption") as error:
        tag_caption("a dog runs", ["A dog"], key="k")  # case-sensitive
    assert error.value.reason == "subject_not_in_caption"


def test_dropped_captions_stay_empty_and_the_rest_keep_their_tags(demo):
    source = ReferenceSource(TABLE, references=2, caption_dropout=0.5)
    prompts = [source.plan(s, rng=random.Random(seed)).choice["prompt"] for s in samples(demo["multi"])
               for seed in range(8)]
    assert "" in prompts and all(p == "" or "@Video1" in p for p in prompts)


# --- dropout, collate, the DataModule ---------------------------------------------------------------------------

def test_reference_dropout_marks_every_reference_absent_and_keeps_the_tags(demo):
    dropped = ReferenceSource(TABLE, references=2, reference_dropout=1.0)
    _, item = load(dropped, samples(demo["multi"])[0], 0)
    assert item["ref_mask"].tolist() == [False, False] and not item["refs"].any()
    assert "@Video1" in item["prompt"] and "@Video2" in item["prompt"]
    rate = ReferenceSource(TABLE, references=2, reference_dropout=0.3)
    sample = samples(demo["multi"])[0]
    hits = sum(rate.plan(sample, rng=random.Random(seed)).choice["dropped"] for seed in range(1000))
    assert abs(hits / 1000 - 0.3) < 0.05


def test_collate_pads_to_the_most_references_of_the_batch(demo):
    two, one = ReferenceSource(TABLE, references=2), ReferenceSource(TABLE, references=1)
    first, second = samples(demo["multi"])[:2]  # both landscape: one bucket
    items = [load(two, first, 0)[1], load(one, second, 0)[1]]
    batch = two.collate(items)
    assert batch["refs"].shape == (2, 2, 1, *items[0]["video"].shape[1:]) and batch["refs"].dtype == torch.uint8
    assert batch["ref_mask"].tolist() == [[True, True], [True, False]]
    assert torch.equal(batch["refs"][1, 0], items[1]["refs"][0]) and not batch["refs"][1, 1].any()
    assert batch["video"].shape[0] == 2 and len(batch["ref_names"][1]) == 1


def test_the_datamodule_streams_references_and_converts_them_to_model_space(demo):
    config = DataConfig(shards=demo["multi"], batch_size=2, num_workers=0, shuffle_buffer=1, resolutions=["144p"],
                        durations=[1.0], fps=8.0, references=2, reference_frames=5, reference_dropout=0.0)
    dm = WanDataModule(config)
    batch = dm.on_before_batch_transfer(next(iter(dm.train_dataloader(rank=0, world_size=1))))
    raw = batch["refs"].clone()
    assert raw.dtype == torch.uint8 and raw.shape[:3] == (2, 2, 5)
    batch = dm.on_after_batch_transfer(batch)
    refs, video = batch["refs"], batch["video"]
    b, r, f, h, w, _ = raw.shape
    assert refs.shape == (b, r, 3, f, h, w) and refs.dtype == torch.float32
    assert video.shape[-2:] == (h, w) and -1 <= refs.min() and refs.max() <= 1
    assert torch.allclose(refs[1, 0, :, 2], raw[1, 0, 2].permute(2, 0, 1).float() / 127.5 - 1)
    assert batch["ref_mask"].dtype == torch.bool and batch["ref_mask"].all()


def test_samples_without_subjects_or_with_untagged_captions_are_skipped_and_counted(demo, tmp_path):
    untagged = indexed("000009", captions=("a clip of something else",))
    urls = demo["plain"] + [str(write_shard(tmp_path / "untagged.tar", [untagged]))] + demo["multi"]
    source = ReferenceSource(TABLE, references=2)
    batches = list(BucketedStream(urls, source, batch_size=1, seed=0, shuffle_buffer=1, epochs=1))
    assert sorted(k for b in batches for k in b["key"]) == [f"{i:09d}" for i in range(4)]
    assert batches[-1]["_position"]["state"]["skipped"] == {"no_subjects": 2, "subject_not_in_caption": 1}
    with pytest.raises(SampleError, match="names no 'subjects'"):
        source.plan({**samples(demo["plain"])[0], "__url__": "u"}, rng=random.Random(0))


# --- errors -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "message"), [
    ({"references": 4}, r"data\.references=4: .*@Video1\.\.@Video3"),
    ({"references": 1, "kind": "latents"}, r"data\.references=1 with data\.kind='latents'.*raw video"),
    ({"reference_frames": 2}, r"data\.reference_frames=2: must be 1 .* or 1 \+ 4k"),
    ({"reference_gap": -0.1}, r"data\.reference_gap=-0\.1"),
    ({"reference_crop": "face"}, r"data\.reference_crop='face': expected one of \['subject', 'frame'\]"),
    ({"reference_dropout": 1.5}, r"data\.reference_dropout=1\.5"),
])
def test_bad_reference_options_are_refused_naming_the_key(options, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(shards=["x"], **options)


def test_references_off_keeps_the_plain_video_source():
    from wan_train.data.datamodule import make_source
    from wan_train.data.video import VideoSource

    assert type(make_source(DataConfig(shards=["x"]), ["x"])) is VideoSource
    assert isinstance(make_source(DataConfig(shards=["x"], references=2), ["x"]), ReferenceSource)


def _meta_json(**fields):
    return ClipMeta(captions=("a red ball",), fps=8.0, num_frames=16, width=64, height=64, duration=2.0,
                    source="s").to_json() | fields


@pytest.mark.parametrize(("subjects", "message"), [
    ({"name": "a red ball"}, "'subjects' must be a list"),
    ([{"boxes": []}], r"subjects\[0\] must be an object with 'name'"),
    ([{"name": "a red ball", "box": []}], r"subjects\[0\] must be an object"),
    ([{"name": ""}], r"subjects\[0\]\.name must be a non-empty string"),
    ([{"name": "a red ball", "boxes": [[0, 0.1, 0.1, 0.5]]}], r"subjects\[0\]\.boxes\[0\] must be \[t, x0"),
    ([{"name": "a red ball", "boxes": [[0, 0.5, 0.1, 0.4, 0.5]]}], r"0 <= x0 < x1 <= 1"),
    ([{"name": "a red ball", "boxes": [[0, 0.1, 0.1, 1.5, 0.5]]}], r"0 <= x0 < x1 <= 1"),
    ([{"name": "a red ball", "boxes": [[0, "a", 0.1, 0.4, 0.5]]}], "five finite numbers"),
    ([{"name": "a red ball", "boxes": [[9.0, 0.1, 0.1, 0.4, 0.5]]}], r"after the video's end"),
    ([{"name": "a red ball"}, {"name": "a red ball"}], "names must be distinct"),
])
def test_malformed_subjects_are_bad_metadata_naming_the_sample(subjects, message):
    with pytest.raises(SampleError, match=f"shard.tar:000042: .*{message}") as error:
        parse_meta(json.dumps(_meta_json(subjects=subjects)), key="shard.tar:000042")
    assert error.value.reason == "bad_metadata"


def test_subjects_round_trip_and_samples_without_them_are_unchanged():
    boxes = [[0.0, 0.1, 0.2, 0.3, 0.4], [1.0, 0.5, 0.2, 0.7, 0.4]]
    meta = parse_meta(json.dumps(_meta_json(subjects=[{"name": "a red ball", "boxes": boxes}, {"name": "x"}])),
                      key="k")
    assert meta.subjects == (Subject("a red ball", tuple(tuple(b) for b in boxes)), Subject("x"))
    assert parse_meta(meta.to_json(), key="k") == meta
    assert meta.subjects[0].box_at(0.4) == (0.1, 0.2, 0.3, 0.4) and meta.subjects[0].box_at(0.6)[0] == 0.5
    plain = _meta_json()
    assert "subjects" not in plain and parse_meta(plain, key="k").to_json() == plain


# --- data_tools.reference_index --------------------------------------------------------------------------------

def test_reference_index_counts_the_samples_that_serve_and_why_the_others_do_not(tmp_path):
    two = (Subject("a red ball"), Subject("a blue box"))
    rows = [
        indexed("000000", captions=("a red ball and a blue box",), subjects=two),  # ok
        indexed("000001", frames=24, captions=("a red ball",), subjects=(Subject("a red ball"),),
                shots=((0.0, 1.5), (1.5, 3.0))),  # ok: each shot holds the other's reference
        indexed("000002", subjects=()),  # no subjects
        indexed("000003", captions=("a red ball and a blue box", "only a red ball"), subjects=two),  # one caption
        indexed("000004", frames=12, captions=("a red ball",), subjects=(Subject("a red ball"),)),  # 1.5 s
    ]
    bad_key, bad = indexed("000005")
    bad["json"] = json.dumps(json.loads(bad["json"]) | {"subjects": [{"name": 3}]}).encode()
    urls = [str(write_shard(tmp_path / "shard-000000.tar", rows)), str(write_shard(tmp_path / "shard-000001.tar",
                                                                                     [(bad_key, bad)]))]
    out = tmp_path / "refs.json"
    assert reference_index.main([*urls, "--frames", "9", "--fps", "8", "--gap", "0.5", "--output", str(out)]) == 0
    index = json.loads(out.read_text())
    assert index["samples"] == 6 and index["settings"]["frames"] == 9
    assert index["counts"] == {"ok": 2, "no_subjects": 1, "subject_not_in_caption": 1, "no_reference_moment": 1,
                               "bad_metadata": 1}
    entries = {e["key"]: e for e in index["entries"]}
    assert entries["000000"]["ok"] and entries["000000"]["subjects"] == ["a red ball", "a blue box"]
    assert entries["000000"]["shard"] == "shard-000000.tar" and entries["000000"]["bucket"].endswith("x9")
    assert entries["000001"]["target_spans"] == [[0.0, 1.5], [1.5, 3.0]]
    assert entries["000003"]["tagged_captions"] == [0] and "1 of 2 captions" in entries["000003"]["message"]
    assert entries["000004"]["reason"] == "no_reference_moment" and entries["000004"]["reference_spans"]
    assert entries["000005"]["reason"] == "bad_metadata" and "000005" in entries["000005"]["message"]
    with pytest.raises(SystemExit):
        reference_index.main([*urls, "--frames", "8", "--output", str(out)])  # not 1 + 4k
