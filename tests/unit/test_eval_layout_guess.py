"""eval.layout_guess's scores on real make_demo clips: each held-out clip, taken as its own estimate, moves its
coverage the prompted way by about as far as eval.motion measures; played backwards it moves the other way; the
clip's frames averaged over time (a guess that knows where the shape goes but not when) and the background alone
(no shape anywhere) do not move; coverage is the pixel's share of the way from the background to the shape colour."""

import numpy as np
import pytest
import torch

from data_tools.make_demo import make_demo
from eval.layout_guess import coverage, coverage_along, score, summarise, table
from eval.motion import motion_scores, prompted_direction
from eval.prompt_match import held_out

FRAMES = 17


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_val")
    make_demo(root, num_clips=6, seed=1, width=176, height=96, frames=FRAMES, fps=16.0, shard_size=3,
              shape_scale=1.5)
    return held_out([str(root)], 6, frames=FRAMES, stride=16)


def test_each_clip_moves_its_coverage_the_prompted_way_as_far_as_eval_motion_measures(clips):
    for clip in clips:
        row = score(clip["video"], clip)
        measured = motion_scores(clip["video"], clip["reference"], prompted_direction(clip["caption"]))["along"]
        assert row["along"] > 0.2, clip["caption"]
        assert row["along"] == pytest.approx(measured, abs=0.03), clip["caption"]
        assert 0.03 < row["coverage"] < 0.3


def test_backwards_the_clip_moves_the_other_way(clips):
    for clip in clips:
        assert score(clip["video"].flip(1), clip)["along"] == pytest.approx(-score(clip["video"], clip)["along"])


def test_a_guess_the_same_in_every_frame_does_not_move(clips):
    for clip in clips:
        still = clip["video"].mean(dim=1, keepdim=True).expand_as(clip["video"])
        row = score(still, clip)
        assert abs(row["along"]) < 1e-9 and row["coverage"] > 0.03


def test_the_background_alone_covers_nothing_and_has_no_motion(clips):
    clip = clips[0]
    background = torch.from_numpy(clip["background"] / 127.5 - 1).float()
    video = background[:, None, None, None].expand_as(clip["video"]).clone()
    row = score(video, clip)
    assert row["coverage"] == 0.0 and row["along"] is None
    result = summarise([row, score(clip["video"], clip)])
    assert result["clips"] == 2 and result["along_positive"] == 1.0
    assert "| test | +" in table({"test": result})


def test_coverage_is_the_share_of_the_way_from_background_to_colour():
    background, colour = np.array([20.0, 30.0, 85.0]), np.array([220.0, 40.0, 40.0])
    pixels = np.stack([background, (background + colour) / 2, colour, 2 * colour - background])  # [4, 3]
    video = torch.from_numpy(pixels.T[:, None, None, :] / 127.5 - 1).float()  # [3, 1, 1, 4]
    assert coverage(video, background, colour)[0, 0] == pytest.approx([0.0, 0.5, 1.0, 1.0], abs=0.01)


def test_a_quarter_with_no_coverage_gives_no_motion():
    cover = np.zeros((8, 4, 4))
    cover[:2, 1, 1] = 1.0
    assert coverage_along(cover, (1, 0)) is None
    cover[6:, 1, 3] = 1.0
    assert coverage_along(cover, (1, 0)) == pytest.approx(0.5)
    assert coverage_along(cover, (0, 1)) == pytest.approx(0.0)
