"""Reference files at inference (wan_train.inference.references.read_reference): a clip gives consecutive frames at
the output's fps from reference_start, as training takes them (wan_train.data.clips.frame_indices); an image one
frame; a clip too short, or a file that is no picture, is refused naming the file."""

import numpy as np
import pytest
from PIL import Image

from wan_train.data import ClipMeta
from wan_train.data.clips import frame_indices
from wan_train.inference.outputs import write_mp4
from wan_train.inference.references import read_reference, reference_indices

W, H = 64, 48


def meta(count: int, fps: float) -> ClipMeta:
    return ClipMeta(captions=("a clip",), fps=fps, num_frames=count, width=W, height=H, duration=count / fps,
                    source="c.mp4")


def counting_clip(path, *, count: int, fps: float):
    """An mp4 whose frame i is grey level 4 * i (i < 60): each frame read back says which it was."""
    frames = np.stack([np.full((H, W, 3), 4 * i, np.uint8) for i in range(count)])
    return write_mp4(path, frames, fps=fps, crf=0)


def shown(reference) -> list[int]:
    """The frame numbers of a read reference [3, f, H, W] (its grey levels / 4)."""
    grey = (reference.mean(dim=(0, 2, 3)) + 1) * 127.5
    return [round(float(g) / 4) for g in grey]


@pytest.mark.parametrize("source_fps", [16.0, 24.0, 30.0])
def test_clip_frames_are_consecutive_at_the_output_fps_as_in_training(tmp_path, source_fps):
    clip = counting_clip(tmp_path / "c.mp4", count=48, fps=source_fps)
    got = read_reference(clip, width=W, height=H, frames=5, fps=16.0, start=0.5)
    assert shown(got) == frame_indices(meta(48, source_fps), start=0.5, frames=5, fps=16.0)
    assert got.shape == (3, 5, H, W)


def test_an_image_is_one_frame(tmp_path):
    Image.new("RGB", (W * 2, H), (200, 0, 0)).save(tmp_path / "a.png")
    got = read_reference(tmp_path / "a.png", width=W, height=H, frames=5)
    assert got.shape == (3, 1, H, W)
    assert got[:, 0, 0].abs().sum() > 0 and (got[:, 0, 0, 0] == -1).all()  # letterboxed: black bars above


def test_a_clip_too_short_and_a_file_that_is_no_picture_are_refused(tmp_path):
    clip = counting_clip(tmp_path / "short.mp4", count=8, fps=16.0)
    assert shown(read_reference(clip, width=W, height=H, frames=5, fps=16.0, start=0.1875)) == [3, 4, 5, 6, 7]
    with pytest.raises(ValueError, match=r"short\.mp4: 8 frames at 16 fps \(0\.50 s\) do not hold 5 frames"):
        read_reference(clip, width=W, height=H, frames=5, fps=16.0, start=0.25)  # frame 8 is past the end
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(ValueError, match=r"notes\.mp4: not a readable image or video"):
        read_reference(tmp_path / "notes.mp4", width=W, height=H)
    with pytest.raises(FileNotFoundError, match=r"refs: .*gone\.png: no such file"):
        read_reference(tmp_path / "gone.png", width=W, height=H)


def test_reference_indices_match_the_training_sampler_everywhere():
    for count, source_fps, fps, start in [(100, 30.0, 16.0, 0.0), (100, 25.0, 16.0, 1.3), (40, 8.0, 16.0, 0.7)]:
        assert reference_indices(count, source_fps, frames=5, fps=fps, start=start) == \
            frame_indices(meta(count, source_fps), start=start, frames=5, fps=fps)
