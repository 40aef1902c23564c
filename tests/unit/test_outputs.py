"""Generated videos on disk: the mp4 decodes (decord, as the data path reads it) with the right frames, size and
colours at any size, the previews open with the right size and content, the metadata round-trips, every file
appears whole or not at all."""

import io
import json

import decord
import numpy as np
import pytest
import torch
from PIL import Image

from wan_train.inference import outputs
from wan_train.marking import Marker
from wan_train.marking.verify import read_frames
from wan_train.inference.outputs import (
    SavedVideo, contact_sheet, encode_mp4, pad_to_even, save_video, to_uint8, write_gif, write_mp4,
)

COLOURS = np.array([(220, 40, 40), (40, 200, 60), (50, 90, 230), (240, 220, 40), (200, 60, 210), (30, 30, 30),
                    (230, 230, 230), (30, 200, 200)], np.uint8)
UNMARKED = Marker(enabled=False)  # the exact pixels (the watermark changes them by a few levels)
METADATA = {"prompt": "a red fox in the snow", "seed": 7, "settings": {"steps": 4, "guidance": 5.0,
                                                                        "lora": [["client/fox.safetensors", 0.8]]}}


def solid_video(frames: int, height: int, width: int) -> torch.Tensor:
    """[3, F, H, W] in [-1, 1]; frame i is the solid colour COLOURS[i % 8]."""
    pixels = torch.from_numpy(COLOURS[np.arange(frames) % len(COLOURS)]).float()  # [F, 3]
    video = pixels.T[:, :, None, None].expand(3, frames, height, width)
    return video / 127.5 - 1


def decode(path) -> np.ndarray:
    # decord's frame copy fails on a few widths (16, 24, 48, 72 px: see wan_train/data/decode.py), so the videos
    # decoded here are 32 or 64 (63 + 1 padded) wide
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy(), reader.get_avg_fps()


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_to_uint8_rounds_clamps_and_moves_channels_last():
    video = torch.tensor([-1.5, -1.0, 0.0, 1 / 127.5 - 1, 1.0, 2.0]).reshape(1, 1, 1, 6).expand(3, 2, 1, 6)
    frames = to_uint8(video.to(torch.bfloat16).float())
    assert frames.dtype == np.uint8 and frames.shape == (2, 1, 6, 3)
    assert frames[0, 0, :, 0].tolist() == [0, 0, 128, 1, 255, 255]
    rgb = torch.stack([torch.full((4, 5, 7), v) for v in (-1.0, 0.0, 1.0)])
    assert to_uint8(rgb)[2, 3, 6].tolist() == [0, 128, 255]  # channel c of frame f, pixel (h, w) -> [f, h, w, c]


def test_to_uint8_rejects_a_batch_with_a_hint():
    with pytest.raises(ValueError, match=r"video\[i\]"):
        to_uint8(torch.zeros(1, 3, 2, 4, 4))


def test_pad_to_even_repeats_the_last_row_and_column():
    frames = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    padded = pad_to_even(frames)
    assert padded.shape == (2, 6, 8, 3)
    np.testing.assert_array_equal(padded[:, :5, :7], frames)
    np.testing.assert_array_equal(padded[:, 5, :7], frames[:, 4])
    np.testing.assert_array_equal(padded[:, :5, 7], frames[:, :, 6])
    even = frames[:, :4, :6]
    assert pad_to_even(even) is even


@pytest.mark.parametrize("height, width", [(48, 64), (33, 63)])
def test_save_video_writes_a_decodable_mp4_with_the_right_frames(tmp_path, height, width):
    saved = save_video(tmp_path / "out" / "fox.mp4", solid_video(10, height, width), fps=16, metadata=METADATA)
    assert saved == SavedVideo(video=tmp_path / "out/fox.mp4", preview=tmp_path / "out/fox.png",
                               metadata=tmp_path / "out/fox.json")
    frames, fps = decode(saved.video)
    # odd sizes: the mp4 alone gets one repeated row / column (yuv420p needs even sizes)
    assert frames.shape == (10, height + height % 2, width + width % 2, 3)
    assert fps == pytest.approx(16)
    mean = frames.reshape(10, -1, 3).mean(1)
    np.testing.assert_allclose(mean, COLOURS[np.arange(10) % 8], atol=6)  # H.264 at crf 18: a few levels


def cells_of(sheet: np.ndarray, height: int, width: int, rows: int, cols: int) -> list[np.ndarray]:
    gap, label = outputs.SHEET_GAP, outputs.SHEET_LABEL
    return [sheet[gap + r * (height + label + gap):][:height, gap + c * (width + gap):][:, :width]
            for r in range(rows) for c in range(cols)]


def test_png_preview_is_a_contact_sheet_of_the_exact_frames(tmp_path):
    video = solid_video(10, 33, 47)
    saved = save_video(tmp_path / "fox.mp4", video, fps=16, metadata=METADATA, marker=UNMARKED)
    gap, label = outputs.SHEET_GAP, outputs.SHEET_LABEL
    with Image.open(saved.preview) as image:  # 10 frames in 4 columns, apart, each over its index
        assert image.format == "PNG"
        assert image.size == (gap + 4 * (47 + gap), gap + 3 * (33 + label + gap))
        sheet = np.asarray(image.convert("RGB"))
    cells = cells_of(sheet, 33, 47, 3, 4)
    for i in range(10):
        assert (cells[i] == COLOURS[i % 8]).all()
    background = np.array(outputs.SHEET_BACKGROUND)
    assert (cells[10] == background).all() and (cells[11] == background).all()
    assert (sheet[:gap] == background).all() and (sheet[:, gap + 47:2 * gap + 47] == background).all()  # gaps
    strip = sheet[gap + 33:gap + 33 + label, gap:gap + 47]
    assert (strip != background).any(axis=-1).sum() > 10  # the frame index is written under the frame


def test_contact_sheet_spreads_frames_evenly_over_the_video():
    frames = to_uint8(solid_video(40, 8, 6))
    sheet = np.asarray(contact_sheet(frames, columns=5, max_frames=10))
    gap, label = outputs.SHEET_GAP, outputs.SHEET_LABEL
    assert sheet.shape == (gap + 2 * (8 + label + gap), gap + 5 * (6 + gap), 3)
    picked = [cell[0, 0] for cell in cells_of(sheet, 8, 6, 2, 5)]
    expected = np.linspace(0, 39, 10).round().astype(int)
    assert expected[0] == 0 and expected[-1] == 39
    np.testing.assert_array_equal(picked, COLOURS[expected % 8])
    assert contact_sheet(frames[:3], columns=4).size == (gap + 3 * (6 + gap), gap + 8 + label + gap)  # one short row


def test_gif_preview_animates_every_frame(tmp_path):
    saved = save_video(tmp_path / "fox.mp4", solid_video(6, 33, 47), fps=10, metadata=METADATA, preview="gif")
    assert saved.preview == tmp_path / "fox.gif"
    with Image.open(saved.preview) as gif:
        assert gif.format == "GIF" and gif.size == (47, 33) and gif.n_frames == 6
        assert gif.info["duration"] == 100 and gif.info["loop"] == 0
        for i in range(6):
            gif.seek(i)
            np.testing.assert_allclose(np.asarray(gif.convert("RGB")).reshape(-1, 3).mean(0), COLOURS[i], atol=4)


def test_write_gif_is_atomic_on_its_own(tmp_path):
    path = write_gif(tmp_path / "a" / "b.gif", to_uint8(solid_video(3, 4, 4)), fps=8)
    assert listing(path.parent) == ["b.gif"]


def test_no_preview(tmp_path):
    saved = save_video(tmp_path / "fox.mp4", solid_video(3, 16, 16), fps=8, metadata=METADATA, preview="none")
    assert saved.preview is None
    assert listing(tmp_path) == ["fox.json", "fox.mp4"]


def test_metadata_round_trips_as_sorted_indented_json_with_its_provenance(tmp_path):
    saved = save_video(tmp_path / "fox.mp4", solid_video(3, 16, 16), fps=8, metadata=METADATA)
    text = saved.metadata.read_text()
    record = json.loads(text).pop("provenance")
    assert {k: v for k, v in json.loads(text).items() if k != "provenance"} == METADATA
    assert text == json.dumps({**METADATA, "provenance": record}, indent=2, sort_keys=True) + "\n"
    assert record["ai_generated"] is True and record["seed"] == 7 and len(record["output_id"]) == 8
    assert "a red fox" not in json.dumps(record)  # the prompt stays in the sidecar, out of the video's record
    unmarked = save_video(tmp_path / "off.mp4", solid_video(3, 16, 16), fps=8, metadata=METADATA, marker=UNMARKED)
    assert json.loads(unmarked.metadata.read_text())["provenance"] == {
        "ai_generated": True, "marking": "off (marking.enabled=false)"}


def test_same_video_gives_the_same_media(tmp_path):
    """The same pixels give the same video stream and preview; the C2PA signature differs between signings (ECDSA
    draws a nonce), so a marked file's bytes do, and an unmarked file's bytes are the same."""
    video = solid_video(12, 33, 47) + 0.05 * torch.randn(3, 12, 33, 47)  # texture for the encoder to work on
    first = save_video(tmp_path / "a.mp4", video, fps=16, metadata=METADATA)
    second = save_video(tmp_path / "b.mp4", video, fps=16, metadata=METADATA)
    np.testing.assert_array_equal(read_frames(first.video), read_frames(second.video))
    assert first.preview.read_bytes() == second.preview.read_bytes()
    plain = [save_video(tmp_path / f"{n}.mp4", video, fps=16, metadata=METADATA, marker=UNMARKED) for n in "cd"]
    assert plain[0].video.read_bytes() == plain[1].video.read_bytes()


def test_existing_files_are_replaced_and_no_temporary_files_remain(tmp_path):
    for frames in (4, 6):
        save_video(tmp_path / "fox.mp4", solid_video(frames, 32, 32), fps=8, metadata={"frames": frames})
    assert listing(tmp_path) == ["fox.json", "fox.mp4", "fox.png"]
    assert len(decode(tmp_path / "fox.mp4")[0]) == 6
    assert json.loads((tmp_path / "fox.json").read_text())["frames"] == 6


def test_a_failing_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(outputs, "contact_sheet", broken)
    with pytest.raises(OSError, match="disk full"):
        save_video(tmp_path / "fox.mp4", solid_video(3, 16, 16), fps=8, metadata=METADATA)
    assert listing(tmp_path) == ["fox.mp4"]  # written whole before the preview failed; no .tmp anywhere


def test_bad_arguments_fail_before_anything_is_written(tmp_path):
    video = solid_video(3, 16, 16)
    with pytest.raises(ValueError, match="'png', 'gif', 'none'"):
        save_video(tmp_path / "fox.mp4", video, fps=8, metadata=METADATA, preview="webp")
    with pytest.raises(ValueError, match="JSON"):
        save_video(tmp_path / "fox.mp4", video, fps=8, metadata={"seed": object()})
    with pytest.raises(ValueError, match=r"\.mp4"):
        save_video(tmp_path / "fox.webm", video, fps=8, metadata=METADATA)
    assert listing(tmp_path) == []


def test_write_mp4_matches_encode_mp4(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (5, 16, 24, 3), dtype=np.uint8)
    path = write_mp4(tmp_path / "x.mp4", frames, fps=12, gop=4, reproducible=True)
    assert path.read_bytes() == encode_mp4(frames, fps=12, gop=4, reproducible=True)
    assert listing(tmp_path) == ["x.mp4"]
    assert len(decord.VideoReader(io.BytesIO(path.read_bytes()))) == 5
