"""``load_wan``: every component of a downloaded Wan checkpoint folder with one call."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from wan_train.models.checkpoint.dit_io import load_dit
from wan_train.models.checkpoint.errors import CheckpointError
from wan_train.models.checkpoint.vae_io import load_vae
from wan_train.models.checkpoint.wan_files import WanFiles, find_wan_files
from wan_train.models.dit.model import WanDiT
from wan_train.models.encoders.clip import ClipVisionEncoder, load_clip_vision
from wan_train.models.encoders.t5 import WanTextEncoder, load_text_encoder
from wan_train.models.vae.model import WanVAE

COMPONENTS = ("dit", "vae", "text_encoder", "clip")


@dataclass
class WanComponents:
    files: WanFiles
    dit: WanDiT | None = None
    vae: WanVAE | None = None
    text_encoder: WanTextEncoder | None = None
    clip: ClipVisionEncoder | None = None  # only for DiTs with the CLIP image branch (Wan2.1 i2v / flf2v)


def load_wan(folder: str | Path, *, expert: str | None = None, dtype: torch.dtype | None = None,
             device: torch.device | str | None = None, components: tuple[str, ...] = COMPONENTS) -> WanComponents:
    """Load the named ``components`` of a Wan checkpoint folder (official or diffusers, see ``find_wan_files``).

    expert: which Wan2.2 A14B expert the DiT is ("high_noise" | "low_noise"). dtype: cast every component's
    weights (None keeps the stored dtypes). The CLIP encoder is loaded when the DiT has an image branch (without
    the DiT: when the folder has one) and skipped for models that do not use it. A requested component whose
    file is missing is named in the error; the others load regardless.
    """
    unknown = set(components) - set(COMPONENTS)
    if unknown:
        raise ValueError(f"components={components}: unknown {sorted(unknown)}; choose from {COMPONENTS}")
    files = find_wan_files(folder)
    out = WanComponents(files)
    if "dit" in components:
        out.dit = load_dit(files.dit, expert=expert, dtype=dtype, device=device)
    if "vae" in components:
        out.vae = load_vae(files.require("vae"), dtype=dtype, device=device)
    if "text_encoder" in components:
        out.text_encoder = load_text_encoder(files.require("text_encoder"), files.require("tokenizer"),
                                             dtype=dtype, device=device)
    if "clip" in components and (out.dit.config.has_image_branch if out.dit is not None else files.has("clip")):
        out.clip = load_clip_vision(files.require("clip"), dtype=dtype, device=device)
        if out.dit is not None and out.clip.config.dim != out.dit.config.image_dim:
            raise CheckpointError(f"{files.clip}: CLIP width {out.clip.config.dim} does not match the DiT's "
                                  f"image_dim {out.dit.config.image_dim}")
    return out
