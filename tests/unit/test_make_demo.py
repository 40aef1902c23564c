"""The demo dataset: real WebDataset shards of real mp4s that the loader's metadata parser and decord accept,
reproducible from the seed, with captions that say what the decoded frames show."""

import colorsys
import io
import json
import subprocess
import sys

import decord
import numpy as np
import pytest
import webdataset as wds

from data_tools.make_demo import BACKGROUNDS, COLOURS, demo_clip, main, make_demo, shot_clips, trajectory
from wan_train.data.metadata import parse_meta
from wan_train.data.probe import probe_video

ARGS = dict(num_clips=8, seed=3, width=96, height=64, frames=17, fps=8.0, shard_size=3)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    output = tmp_path_factory.mktemp("demo")
    return output, make_demo(output, **ARGS)


@pytest.fixture(scope="module")
def samples(demo):
    output, result = demo
    urls = [str(output / f"shard-{i:06d}.tar") for i in range(result["shards"])]
    return list(wds.WebDataset(urls, shardshuffle=False))


def test_same_seed_same_bytes(demo, tmp_path):
    output, result = demo
    assert result["shards"] == 3 and result["clips"] == 8
    again = make_demo(tmp_path, **ARGS)
    names = sorted(p.name for p in output.glob("*.tar"))
    assert names == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == names
    assert all((output / n).read_bytes() == (tmp_path / n).read_bytes() for n in names)
    assert again["bytes"] == result["bytes"]
    make_demo(tmp_path / "other", **(ARGS | {"seed": 4}))
    assert (tmp_path / "other" / names[0]).read_bytes() != (output / names[0]).read_bytes()


def test_shards_hold_loader_ready_samples(samples):
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(8)]
    for index, sample in enumerate(samples):
        meta = parse_meta(sample["json"], key=sample["__key__"])
        info = probe_video(sample["mp4"])
        assert (meta.fps, meta.num_frames, meta.width, meta.height) == (info.fps, info.num_frames, info.width,
                                                                          info.height)
        assert meta.duration == pytest.approx(info.duration) and meta.window == (0.0, meta.duration)
        assert meta.source == f"make_demo:seed=3:index={index}"
        assert meta.captions == (demo_clip(seed=3, index=index, width=96, height=64).caption,)


def test_both_orientations(demo, samples):
    sizes = [(json.loads(s["json"])["width"], json.loads(s["json"])["height"]) for s in samples]
    assert sizes == [(96, 64), (96, 64), (96, 64), (64, 96)] * 2  # every 4th clip is portrait
    assert (demo[1]["landscape"], demo[1]["portrait"]) == (6, 2)


# What the caption words mean, judged from pixels independently of make_demo's palette
HUES = {"red": (-15, 15), "orange": (15, 40), "yellow": (40, 70), "green": (70, 170), "blue": (170, 250),
        "purple": (250, 345)}


def colour_name(rgb: np.ndarray) -> str:
    h, s, v = colorsys.rgb_to_hsv(*(rgb / 255.0))
    if s < 0.2:
        return "white" if v > 0.8 else "grey"
    hue = h * 360 - (360 if h * 360 >= 345 else 0)
    return next(name for name, (lo, hi) in HUES.items() if lo <= hue < hi)


def shape_mask(frame: np.ndarray) -> np.ndarray:
    """Pixels far from the background (the median of the frame's border, which the shape covers little of)."""
    border = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]]).astype(np.float32)
    distance = np.linalg.norm(frame.astype(np.float32) - np.median(border, axis=0), axis=-1)
    return distance > distance.max() / 2


def test_captions_describe_the_decoded_frames(samples):
    for sample in samples:
        caption = json.loads(sample["json"])["caption"]
        frames = decord.VideoReader(io.BytesIO(sample["mp4"])).get_batch(list(range(17))).asnumpy()
        height, width = frames.shape[1:3]
        first, middle, last = (shape_mask(frames[i]) for i in (0, 8, 16))
        # colour: the mean colour of the shape in the middle frame
        assert colour_name(frames[8][middle].mean(axis=0)) in caption.split(), caption
        # direction: where the shape is at the start and at the end
        (y0, x0), (y1, x1) = (np.argwhere(m).mean(axis=0) for m in (first, last))
        expected = {"from left to right": x0 < width / 2 < x1, "from right to left": x1 < width / 2 < x0,
                    "from top to bottom": y0 < height / 2 < y1, "from bottom to top": y1 < height / 2 < y0}
        assert [d for d, holds in expected.items() if holds] == [d for d in expected if d in caption], caption
        # shape: how much of its bounding box it fills (square 1, circle pi / 4, triangle 1 / 2)
        ys, xs = np.nonzero(middle)
        fill = middle.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
        shape = "square" if fill > 0.885 else "circle" if fill > 0.68 else "triangle"
        assert f" {shape} " in caption, (caption, fill)
        # size: the shapes have equal areas, small ~5% and large ~13% of the shorter side squared
        size = "large" if middle.sum() > 0.085 * min(height, width) ** 2 else "small"
        assert caption.startswith(f"a {size} "), (caption, middle.sum())


def test_bad_arguments_name_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--width must be even"):
        make_demo(tmp_path, **(ARGS | {"width": 97}))
    with pytest.raises(SystemExit):
        main(["--output", str(tmp_path), "--height", "30"])


def test_a_fixed_path_offset_leaves_the_caption_to_fix_the_layout(tmp_path):
    """--path-offset 0.5: every shape runs along the frame's middle line (x for vertical paths, y for horizontal
    ones); shape, colour, direction and size are those of the random-offset clip."""
    for index in range(8):
        free = demo_clip(seed=3, index=index, width=176, height=96)
        fixed = demo_clip(seed=3, index=index, width=176, height=96, path_offset=0.5)
        assert (free.shape, free.colour, free.background, free.direction, free.size) == (
            fixed.shape, fixed.colour, fixed.background, fixed.direction, fixed.size)
        cx, cy = trajectory(fixed, frames=17)
        across = cy if fixed.direction in ("from left to right", "from right to left") else cx
        assert np.allclose(across, (fixed.height if across is cy else fixed.width) / 2)
    for bad, why in ((1.5, "within 0..1"), (0.5, "not with --shots")):
        with pytest.raises(ValueError, match=f"--path-offset .*{why}"):
            make_demo(tmp_path / "x", **(ARGS | {"path_offset": bad, "shots": bad == 0.5}))


def test_shape_scale_grows_every_shape_and_keeps_it_in_the_frame(tmp_path):
    """--shape-scale 1.5 (data=demo_large): each clip's shape area grows 1.5^2 times, the captions stay true."""
    plain = demo_clip(seed=3, index=0, width=256, height=144)
    large = demo_clip(seed=3, index=0, width=256, height=144, shape_scale=1.5)
    assert (plain.shape, plain.colour, plain.direction) == (large.shape, large.colour, large.direction)
    from data_tools.make_demo import render

    area = [(render(c, frames=1)[0] != render(c, frames=1)[0][0, 0]).any(axis=-1).sum() for c in (plain, large)]
    assert 2.0 < area[1] / area[0] < 2.5
    make_demo(tmp_path / "large", **(ARGS | {"shape_scale": 1.5}))
    with pytest.raises(ValueError, match=r"--shape-scale must be > 0 and leave a large shape inside a 96x64 frame "
                                         r"\(at most 1\.51\), got 2\.0"):
        make_demo(tmp_path / "huge", **(ARGS | {"shape_scale": 2.0}))


def test_help_runs():
    done = subprocess.run([sys.executable, "-m", "data_tools.make_demo", "--help"], capture_output=True, text=True,
                          check=True)
    assert "--num-clips" in done.stdout and "--shard-size" in done.stdout


def test_character_clips_show_one_subject_named_by_its_trigger(tmp_path):
    """--character: every clip shows the same large pink diamond (a look the plain demo never has), and its
    caption names it by the trigger words only, as character LoRA data is captioned."""
    make_demo(tmp_path, **(ARGS | {"num_clips": 4, "character": "zxq mascot"}))
    samples = list(wds.WebDataset(sorted(str(p) for p in tmp_path.glob("*.tar")), shardshuffle=False))
    assert len(samples) == 4
    for sample in samples:
        caption = json.loads(sample["json"])["caption"]
        assert caption.startswith("zxq mascot moves ") and "pink" not in caption and "diamond" not in caption
        frame = decord.VideoReader(io.BytesIO(sample["mp4"])).get_batch([8]).asnumpy()[0]
        mask = shape_mask(frame)
        h, s, _ = colorsys.rgb_to_hsv(*(frame[mask].mean(axis=0) / 255.0))
        assert 305 < h * 360 < 340 and s > 0.4  # pink (~322 degrees), far from the demo's purple (~274)
        ys, xs = np.nonzero(mask)
        fill = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
        assert 0.4 < fill < 0.6, fill  # a diamond fills half its bounding box


def _frames(sample, indices):
    return decord.VideoReader(io.BytesIO(sample["mp4"])).get_batch(list(indices)).asnumpy()


def _box_px(box, width, height):
    _, x0, y0, x1, y1 = box
    return x0 * width, y0 * height, x1 * width, y1 * height


def test_plain_clips_have_no_subjects(samples):
    assert all("subjects" not in json.loads(s["json"]) for s in samples)


def test_subjects_name_the_caption_phrase_and_box_the_shape_in_every_frame(tmp_path):
    """--subjects: the subject is the caption's phrase for the shape, and its box at frame i (t = i / fps) is the
    shape's bounding box in the decoded frame, to a pixel."""
    make_demo(tmp_path, **(ARGS | {"num_clips": 4, "subjects": True}))
    for sample in wds.WebDataset(sorted(str(p) for p in tmp_path.glob("*.tar")), shardshuffle=False):
        meta = parse_meta(sample["json"], key=sample["__key__"])
        clip = demo_clip(seed=3, index=int(sample["__key__"]), width=96, height=64)
        (subject,) = meta.subjects
        assert subject.name == f"a {clip.size} {clip.colour} {clip.shape}" and subject.name in meta.captions[0]
        assert [b[0] for b in subject.boxes] == pytest.approx([i / 8.0 for i in range(17)])
        for i, frame in zip((0, 8, 16), _frames(sample, (0, 8, 16)), strict=True):
            ys, xs = np.nonzero(shape_mask(frame))
            x0, y0, x1, y1 = _box_px(subject.boxes[i], meta.width, meta.height)
            assert abs(xs.min() - x0) < 1.5 and abs(xs.max() + 1 - x1) < 1.5, (i, xs.min(), xs.max(), x0, x1)
            assert abs(ys.min() - y0) < 1.5 and abs(ys.max() + 1 - y1) < 1.5, (i, ys.min(), ys.max(), y0, y1)
            centre = frame[round((y0 + y1) / 2), round((x0 + x1) / 2)]
            assert colour_name(centre.astype(np.float64)) == clip.colour


def test_multi_clips_show_two_unlike_shapes_each_in_its_box(tmp_path):
    """--multi --subjects: two shapes of different colour and shape moving opposite ways, both named verbatim in
    the caption; each subject's box holds its own colour and the boxes never overlap."""
    assert main(["--output", str(tmp_path), "--num-clips", "4", "--seed", "3", "--width", "96", "--height", "64",
                 "--frames", "17", "--fps", "8", "--multi", "--subjects"]) == 0
    for sample in wds.WebDataset(sorted(str(p) for p in tmp_path.glob("*.tar")), shardshuffle=False):
        meta = parse_meta(sample["json"], key=sample["__key__"])
        clip = demo_clip(seed=3, index=int(sample["__key__"]), width=96, height=64, multi=True)
        first, second = clip.shapes
        assert first.colour != second.colour and first.shape != second.shape
        assert {first.direction, second.direction} in ({"from left to right", "from right to left"},
                                                        {"from top to bottom", "from bottom to top"})
        assert [s.name for s in meta.subjects] == [first.subject, second.subject]
        assert meta.captions[0] == clip.caption and all(s.name in clip.caption for s in meta.subjects)
        for i, frame in zip((0, 8, 16), _frames(sample, (0, 8, 16)), strict=True):
            boxes = [_box_px(s.boxes[i], meta.width, meta.height) for s in meta.subjects]
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes
            assert ax1 <= bx0 + 1 or bx1 <= ax0 + 1 or ay1 <= by0 + 1 or by1 <= ay0 + 1  # apart
            for shape, (x0, y0, x1, y1) in zip(clip.shapes, boxes, strict=True):
                centre = frame[round((y0 + y1) / 2), round((x0 + x1) / 2)].astype(np.float64)
                mine, other = (np.linalg.norm(centre - COLOURS[s.colour]) for s in (shape, *set(clip.shapes) - {shape}))
                assert mine < 40 and mine < other, (shape, centre)


def test_shots_clips_cut_from_a_wide_shot_to_a_close_up(tmp_path):
    """--shots: two shots of one shape and colour, hard cut at frame frames // 2: small on one background, then
    large on another moving another way; the .json records the shots, a caption for each and a global one."""
    assert main(["--output", str(tmp_path), "--num-clips", "4", "--seed", "3", "--width", "96", "--height", "64",
                 "--frames", "17", "--fps", "8", "--shots"]) == 0
    samples = list(wds.WebDataset(sorted(str(p) for p in tmp_path.glob("*.tar")), shardshuffle=False))
    assert len(samples) == 4
    for index, sample in enumerate(samples):
        meta = parse_meta(sample["json"], key=sample["__key__"])
        first, second = shot_clips(seed=3, index=index, width=96, height=64)
        plain = demo_clip(seed=3, index=index, width=96, height=64)
        assert (first.shape, first.colour, first.background, first.direction) == (
            plain.shape, plain.colour, plain.background, plain.direction)
        assert (second.shape, second.colour) == (first.shape, first.colour)
        assert second.background != first.background and second.direction != first.direction
        assert meta.shots == ((0.0, 1.0), (1.0, 17 / 8))  # cut at frame 8, shown from 8 / 8 s
        assert meta.captions == (f"a {first.colour} {first.shape}",)
        assert meta.shot_captions == (
            f"wide — a small {first.colour} {first.shape} moves {first.direction} on a {first.background} background",
            f"close-up — a large {first.colour} {first.shape} moves {second.direction} on a {second.background} "
            "background")
        before, after = _frames(sample, [7, 8])
        for frame, clip in ((before, first), (after, second)):
            mask = shape_mask(frame)
            background = np.median(frame[~mask].astype(np.float64), axis=0)
            assert min(BACKGROUNDS, key=lambda b: np.linalg.norm(background - BACKGROUNDS[b])) == clip.background
            assert colour_name(frame[mask].mean(axis=0)) == clip.colour
        assert shape_mask(after).sum() > 1.8 * shape_mask(before).sum()  # (0.2 / 0.13)^2 = 2.4 times the area
    again = tmp_path / "again"
    make_demo(again, **(ARGS | {"num_clips": 4, "shard_size": 16, "frames": 17, "shots": True}))
    assert (again / "shard-000000.tar").read_bytes() == (tmp_path / "shard-000000.tar").read_bytes()
    with pytest.raises(ValueError, match="--shots cannot be combined"):
        make_demo(tmp_path / "bad", **(ARGS | {"shots": True, "multi": True}))
