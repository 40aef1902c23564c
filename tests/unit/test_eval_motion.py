"""eval.motion on the quickstart's real shapes (data_tools.make_demo renders them): a shape moving the prompted way,
the opposite way, across it, standing still, or missing; and the prompt parsing for one and two subjects."""

import numpy as np
import pytest
import torch

from data_tools import make_demo
from data_tools.make_demo import BACKGROUNDS, DemoClip, render
from eval.motion import DIRECTIONS, centroids, motion_scores, prompted_direction

W, H, FRAMES = 256, 144, 17


def video(direction: str, *, frames: int = FRAMES) -> torch.Tensor:
    clip = DemoClip(shape="circle", colour="green", background="dark blue", direction=direction, size="small",
                    offset=0.5, width=W, height=H)
    return torch.from_numpy(render(clip, frames=frames)).permute(3, 0, 1, 2).float() / 127.5 - 1


def reference() -> torch.Tensor:
    """A green disc on beige, letterboxed in black: only its colour matters here."""
    out = np.zeros((H, W, 3), np.uint8)
    out[:, 56:200] = BACKGROUNDS["beige"]
    y, x = np.mgrid[:H, :W]
    out[(y - H / 2) ** 2 + (x - W / 2) ** 2 < 50 ** 2] = (50, 180, 70)
    return torch.from_numpy(out).permute(2, 0, 1).float() / 127.5 - 1


def test_directions_are_the_demo_captions():
    assert DIRECTIONS == make_demo.DIRECTIONS


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_prompted_motion_scores_positive_and_the_reverse_negative(direction):
    scores = motion_scores(video(direction), reference(), DIRECTIONS[direction])
    # the first and last quarters' centroids are 3/4 of the lane apart: most of the frame, minus the margins
    assert 0.3 < scores["along"] < 0.8 and scores["across"] < 0.02
    ux, uy = DIRECTIONS[direction]
    assert motion_scores(video(direction), reference(), (-ux, -uy))["along"] == pytest.approx(-scores["along"])
    crossing = motion_scores(video(direction), reference(), (uy, ux))
    assert abs(crossing["along"]) < 0.02 and crossing["across"] == pytest.approx(scores["along"])


def test_still_and_missing_subjects_do_not_move():
    still = video("from left to right", frames=1).expand(-1, FRAMES, -1, -1)
    assert motion_scores(still, reference(), (1, 0)) == {"along": 0.0, "across": 0.0}
    empty = still.clone()
    empty[:] = torch.tensor(BACKGROUNDS["dark blue"]).view(3, 1, 1, 1) / 127.5 - 1
    assert np.isnan(centroids(empty, np.array([50.0, 180.0, 70.0]))).all()
    assert motion_scores(empty, reference(), (1, 0)) == {"along": 0.0, "across": 0.0}


def test_frames_without_the_subject_are_left_out():
    moving = video("from left to right")
    full = motion_scores(moving, reference(), (1, 0))
    moving[:, 0] = torch.tensor(BACKGROUNDS["dark blue"]).view(3, 1, 1) / 127.5 - 1  # the subject leaves frame 0
    dropped = motion_scores(moving, reference(), (1, 0))
    assert 0 < full["along"] - dropped["along"] < 0.1  # the first quarter's mean starts one frame later


def test_prompted_direction_of_each_subject():
    prompt = "@Video1 moves from left to right and @Video2 moves from bottom to top on a black background"
    assert prompted_direction(prompt, "@Video1") == (1, 0)
    assert prompted_direction(prompt, "@Video2") == (0, -1)
    assert prompted_direction(prompt) == (1, 0)
    assert prompted_direction(prompt, "@Video3") is None
    assert prompted_direction("@Video1 on a black background", "@Video1") is None
