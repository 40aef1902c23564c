"""Conditioning images: reading them, and the output size and resize each image task uses (wan_arch.md §5).

Wan2.1 I2V / FLF2V (and Wan2.2 I2V-A14B, the same code path): the latent grid follows the image's aspect at the
requested area, lat = round(sqrt(area * aspect) // stride // patch * patch), and the image is resized to it
bicubic, without cropping (W21 image2video.py). Wan2.2 TI2V: `best_output_size` picks a size whose sides are
multiples of the stride with area <= the requested one and the aspect closest to the image's, which is covered
by a LANCZOS resize and centre-cropped (W22 textimage2video.py, utils.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def read_image(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image={path}: no such file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:
        raise ValueError(f"image={path}: not a readable image ({error})") from None


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> [3, H, W] float32 in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous() * 2.0 - 1.0


def i2v_size(image: Image.Image, *, area: int, stride: int, patch: int) -> tuple[int, int]:
    """(width, height) of the Wan2.1 I2V rule for `image` at about `area` pixels; stride = VAE spatial stride,
    patch = the DiT's spatial patch."""
    aspect = image.height / image.width
    lat_h = round(math.sqrt(area * aspect) // stride // patch * patch)
    lat_w = round(math.sqrt(area / aspect) // stride // patch * patch)
    if lat_h < patch or lat_w < patch:
        raise ValueError(f"image {image.width}x{image.height}: too narrow for an output of about {area} pixels")
    return lat_w * stride, lat_h * stride


def i2v_image(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """The image squashed bicubic to height x width (the official torch resize of the [-1, 1] tensor)."""
    x = to_tensor(image)[None]
    return F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False)[0]


def best_output_size(width: int, height: int, *, multiple: int, area: int) -> tuple[int, int]:
    """W22 utils.best_output_size: of (width first, height first) roundings down to `multiple` within `area`, the
    one whose aspect ratio is closer to width / height."""
    ratio = width / height
    ow, oh = math.sqrt(area * ratio), math.sqrt(area / ratio)
    ow1 = int(ow // multiple * multiple)
    oh1 = int(area / ow1 // multiple * multiple)
    oh2 = int(oh // multiple * multiple)
    ow2 = int(area / oh2 // multiple * multiple)
    if min(ow1, oh1, ow2, oh2) < multiple:
        raise ValueError(f"image {width}x{height}: no output of at most {area} pixels in multiples of {multiple}")
    r1, r2 = ow1 / oh1, ow2 / oh2
    return (ow1, oh1) if max(ratio / r1, r1 / ratio) < max(ratio / r2, r2 / ratio) else (ow2, oh2)


def ti2v_image(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """Resize (LANCZOS) to cover width x height, centre-crop to it; [3, height, width] in [-1, 1]."""
    scale = max(width / image.width, height / image.height)
    resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    x1, y1 = (resized.width - width) // 2, (resized.height - height) // 2
    return to_tensor(resized.crop((x1, y1, x1 + width, y1 + height)))
