"""Conditioning images: the output size rule of each image task, the resize, and generate.py's image path."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import write_official_folder
from wan_train.config import compose_generate_config
from wan_train.inference import images
from wan_train.inference.cli import run


def test_best_output_size_is_the_official_ti2v_rule():
    # W22 utils.best_output_size with the TI2V-5B stride 32 and area 1280 x 704
    assert images.best_output_size(1280, 704, multiple=32, area=1280 * 704) == (1280, 704)
    assert images.best_output_size(704, 1280, multiple=32, area=1280 * 704) == (704, 1280)
    # 16:9: rounding the width first gives 1248 x 704 (aspect 1.773, off by 0.3%), closer than 1280 x 704 (2.3%)
    assert images.best_output_size(1920, 1080, multiple=32, area=1280 * 704) == (1248, 704)
    w, h = images.best_output_size(1000, 1000, multiple=32, area=1280 * 704)
    assert w % 32 == h % 32 == 0 and w * h <= 1280 * 704 and abs(w / h - 1) < 0.05


def test_i2v_size_follows_the_image_aspect_at_the_requested_area():
    landscape = Image.new("RGB", (1280, 720))
    assert images.i2v_size(landscape, area=832 * 480, stride=8, patch=2) == (832, 464)
    assert images.i2v_size(landscape, area=1280 * 720, stride=8, patch=2) == (1280, 720)
    portrait = Image.new("RGB", (720, 1280))
    assert images.i2v_size(portrait, area=1280 * 720, stride=8, patch=2) == (720, 1280)


def test_resizes_keep_the_picture():
    array = np.zeros((100, 200, 3), dtype=np.uint8)
    array[:, :100] = (255, 0, 0)  # left half red
    image = Image.fromarray(array)
    squashed = images.i2v_image(image, 64, 32)
    assert squashed.shape == (3, 32, 64) and squashed[0, 16, 10] > 0.9 and squashed[0, 16, 54] < -0.9
    cropped = images.ti2v_image(image, 64, 64)  # cover 64 x 64, centre crop: the red / black edge in the middle
    assert cropped.shape == (3, 64, 64) and cropped[0, 32, 5] > 0.9 and cropped[0, 32, 58] < -0.9


def test_a_missing_or_broken_image_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="image=.*nope.png: no such file"):
        images.read_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png: not a readable image"):
        images.read_image(tmp_path / "bad.png")


def test_generate_i2v_from_an_official_folder(tmp_path):
    folder = tmp_path / "Wan2.1-I2V"
    folder.mkdir()
    write_official_folder(folder, "tiny-i2v")
    Image.fromarray(np.full((60, 100, 3), 200, dtype=np.uint8)).save(tmp_path / "first.png")
    cfg = compose_generate_config([f"ckpt={folder}", "prompt=a cat", f"out={tmp_path / 'out' / 'cat.mp4'}",
                                   "task=i2v", f"image={tmp_path / 'first.png'}", "steps=2", "width=64",
                                   "height=32", "num_frames=5", "preview=gif"])
    saved = run(cfg)
    assert [s.video.name for s in saved] == ["cat.mp4"] and saved[0].preview.suffix == ".gif"
    meta = json.loads(saved[0].metadata.read_text())
    settings = meta["settings"]
    assert (settings["width"], settings["height"]) == (48, 32)  # the image's 5:3 at about 64 x 32 pixels
    assert meta["task"] == "i2v" and meta["image"].endswith("first.png")
    assert settings["negative_prompt"].startswith("色调艳丽")  # the official default
    with pytest.raises(ValueError, match="task=i2v needs image=FILE"):
        run(compose_generate_config([f"ckpt={folder}", "prompt=a cat", "task=i2v", "steps=1"]))
    assert torch.is_tensor(images.to_tensor(Image.open(tmp_path / "first.png")))
