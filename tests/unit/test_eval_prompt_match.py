"""eval.prompt_match on real make_demo clips: the held-out clips themselves match their captions on every count, and
a video with another background or the shape moving the other way fails that count and only that one; the shape in
another colour, or no shape, fails colour, form and motion (they follow the prompted shape)."""

import dataclasses

import numpy as np
import pytest
import torch

from data_tools.make_demo import BACKGROUNDS, COLOURS, DIRECTIONS, demo_clip, make_demo, render
from eval.prompt_match import held_out, palette, score_held_out, score_video, summarise, table

FRAMES = 17


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_val")
    make_demo(root, num_clips=6, seed=1, width=256, height=144, frames=FRAMES, fps=16.0, shard_size=3)
    return held_out([str(root)], 6, frames=FRAMES, stride=16)


@pytest.fixture(scope="module")
def themselves(clips):
    return score_held_out(clips)


def pixels(clip) -> torch.Tensor:
    return torch.from_numpy(render(clip, frames=FRAMES)).permute(3, 0, 1, 2).float() / 127.5 - 1


def test_the_held_out_clips_match_their_own_captions(clips, themselves):
    result = themselves
    assert result["clips"] == 6 and [c["caption"] for c in result["per_clip"]] == [c["caption"] for c in clips]
    assert result["background"] == result["colour"] == result["both"] == 1.0
    assert result["form"] > 0.8 and result["along_positive"] == 1.0 and result["along"] > 0.4
    assert {c["width"] for c in clips} >= {256}  # sizes as made (clip 3 is portrait)


def name_of(rgb: np.ndarray, table: dict) -> str:
    """The make_demo name of a colour read back from a clip (H.264 moves flat colours by a few levels)."""
    return min(table, key=lambda name: np.linalg.norm(np.subtract(table[name], rgb)))


def test_each_wrong_part_fails_its_own_count(clips):
    backgrounds, shapes = palette([c["background"] for c in clips]), palette([c["shape"] for c in clips])
    index = next(i for i, c in enumerate(clips) if c["width"] == 256)
    clip, truth = clips[index], demo_clip(seed=1, index=index, width=256, height=144)
    assert truth.caption == clip["caption"]
    # another shape colour and another background that the held-out clips have, each still far from the other part
    colour = next(name_of(c["shape"], COLOURS) for c in clips if np.linalg.norm(c["shape"] - clip["shape"]) > 60
                  and np.linalg.norm(c["shape"] - clip["background"]) > 150)
    background = next(name_of(c["background"], BACKGROUNDS) for c in clips
                      if np.linalg.norm(c["background"] - clip["background"]) > 60
                      and np.linalg.norm(c["background"] - clip["shape"]) > 150)
    opposite = next(d for d, v in DIRECTIONS.items() if v == tuple(-x for x in DIRECTIONS[truth.direction]))
    cases = {"itself": truth, "colour": dataclasses.replace(truth, colour=colour),
             "background": dataclasses.replace(truth, background=background),
             "direction": dataclasses.replace(truth, direction=opposite)}
    for name, drawn in cases.items():
        row = score_video(pixels(drawn), clip=clip, backgrounds=backgrounds, shapes=shapes)
        assert row["background"] == (name != "background"), name
        assert row["colour"] == (name != "colour"), name
        if name == "colour":  # form and motion follow the prompted shape: in another colour it is not there
            assert row["form"] == row["along"] == 0.0
        else:
            assert row["form"] > 0.8 and (row["along"] > 0.3) == (name != "direction"), name
            assert (row["along"] < -0.3) == (name == "direction"), name
    # no shape at all: the background alone
    empty = pixels(truth)[:, :, :1, :1].expand(3, FRAMES, 144, 256)
    row = score_video(empty, clip=clip, backgrounds=backgrounds, shapes=shapes)
    assert row["background"] and not row["colour"] and row["form"] == 0.0 and row["along"] == 0.0


def test_the_summary_and_its_table(themselves):
    rows = [{"background": True, "colour": True, "form": 0.9, "along": 0.5},
            {"background": True, "colour": False, "form": 0.1, "along": -0.2},
            {"background": False, "colour": True, "form": 0.0, "along": None}]
    summary = summarise(rows)
    assert summary == {"clips": 3, "background": pytest.approx(2 / 3), "colour": pytest.approx(2 / 3),
                       "both": pytest.approx(1 / 3), "form": pytest.approx(1 / 3), "along": pytest.approx(0.15),
                       "along_positive": 0.5}
    text = table({"held-out clips": themselves, "run": {**summary}})
    assert text.splitlines()[0].startswith("| run | background | shape colour | both | form |")
    assert "| run | 0.67 | 0.67 | 0.33 | 0.33 | +0.15 | 0.50 | 3 |" in text
