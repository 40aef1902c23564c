"""eval.form on the quickstart's real shapes (data_tools.make_demo renders them): a reference crop letterboxed as
the reference index writes it, and videos that draw the shape, another shape, its colour scattered, or nothing."""

import numpy as np
import pytest
import torch

from data_tools.make_demo import BACKGROUNDS, COLOURS, DemoClip, render
from eval.form import form_scores, largest_component, reference_mask, shape_iou, to_rgb

W, H, FRAMES = 256, 144, 9


def video(shape: str, *, colour: str = "green", background: str = "dark blue", size: str = "small") -> torch.Tensor:
    clip = DemoClip(shape=shape, colour=colour, background=background, direction="from left to right", size=size,
                    offset=0.5, width=W, height=H)
    return torch.from_numpy(render(clip, frames=FRAMES)).permute(3, 0, 1, 2).float() / 127.5 - 1


def reference(shape: str, *, background: str = "beige") -> torch.Tensor:
    """A large `shape` cropped to its box + 20% on another background, letterboxed (black) to 256 x 144."""
    frame = render(DemoClip(shape=shape, colour="green", background=background, direction="from top to bottom",
                            size="large", offset=0.5, width=W, height=H), frames=1)[0]  # top middle
    inside = np.argwhere(np.linalg.norm(frame.astype(float) - BACKGROUNDS[background], axis=-1) > 60)
    (y0, x0), (y1, x1) = inside.min(0), inside.max(0) + 1
    my, mx = (y1 - y0) // 10, (x1 - x0) // 10
    crop = frame[max(y0 - my, 0):y1 + my, max(x0 - mx, 0):x1 + mx]
    scale = H // crop.shape[0]
    crop = crop.repeat(scale, 0).repeat(scale, 1)  # nearest upscaling, as a letterbox fit enlarges a small crop
    out = np.zeros((H, W, 3), np.uint8)
    top, left = (H - crop.shape[0]) // 2, (W - crop.shape[1]) // 2
    out[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
    return torch.from_numpy(out).permute(2, 0, 1).float() / 127.5 - 1


def test_reference_mask_is_the_subject():
    colour, mask = reference_mask(to_rgb(reference("square")))
    assert np.linalg.norm(colour - COLOURS["green"]) < 3
    assert 0.2 < mask.mean() < 0.6  # the square, neither the beige ring nor the black letterbox


def test_same_shape_scores_high_and_other_shapes_lower():
    square = form_scores(video("square"), reference("square"))
    assert square["coherence"] == 1.0 and square["form"] > 0.9
    circle = form_scores(video("circle"), reference("square"))
    triangle = form_scores(video("triangle"), reference("square"))
    assert 0.7 < circle["shape_iou"] < 0.9 and triangle["shape_iou"] < circle["shape_iou"]
    assert form_scores(video("circle", size="large"), reference("circle"))["form"] > 0.9  # size does not matter


def test_scattered_colour_and_empty_frames_score_low():
    empty = video("square", colour="green")
    empty[:] = torch.tensor(BACKGROUNDS["dark blue"]).view(3, 1, 1, 1) / 127.5 - 1
    assert form_scores(empty, reference("square")) == {"coherence": 0.0, "shape_iou": 0.0, "form": 0.0}
    # the square's area of green as 8 x 8 blocks (one latent pixel each) at random places
    scattered = empty.clone()
    rng = np.random.default_rng(0)
    area = int((torch.from_numpy(to_rgb(video("square"))) - torch.tensor(COLOURS["green"])).norm(dim=-1).lt(50)
               .sum() / FRAMES)
    for f in range(FRAMES):
        for _ in range(area // 64):
            y, x = rng.integers(0, H // 8) * 8, rng.integers(0, W // 8) * 8
            scattered[:, f, y:y + 8, x:x + 8] = torch.tensor(COLOURS["green"]).view(3, 1, 1) / 127.5 - 1
    assert form_scores(scattered, reference("square"))["form"] < 0.3
    speck = empty.clone()  # one latent pixel of the colour: coherent, but no shape
    speck[:, :, 64:72, 128:136] = torch.tensor(COLOURS["green"]).view(3, 1, 1, 1) / 127.5 - 1
    assert form_scores(speck, reference("square")) == {"coherence": 1.0, "shape_iou": 0.0, "form": 0.0}
    assert form_scores(speck, reference("square"), min_area=0)["shape_iou"] > 0.5


def test_largest_component_is_8_connected():
    mask = np.zeros((6, 7), bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True  # diagonal: one component of 3
    mask[4:6, 4:7] = True  # 6 pixels
    assert largest_component(mask).sum() == 6
    mask[3, 3] = True  # joins the diagonal to the block
    assert largest_component(mask).sum() == 10
    assert not largest_component(np.zeros((3, 3), bool)).any()


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_shape_iou_is_scale_invariant(scale):
    disc = lambda r: np.add.outer(np.arange(-40, 41) ** 2, np.arange(-40, 41) ** 2) <= r * r  # noqa: E731
    assert shape_iou(disc(8), disc(8 * scale)) > 0.9
    square = np.zeros((81, 81), bool)
    square[30:51, 30:51] = True
    assert 0.7 < shape_iou(disc(12), square) < 0.9
