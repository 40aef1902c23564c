"""The standard file names of a downloaded Wan checkpoint folder, in one place (wan_arch.md §1.2).

Official folders (``Wan2.1-T2V-1.3B/``, ``Wan2.2-TI2V-5B/``, ``Wan2.2-T2V-A14B/``, ...) hold the DiT at the root
(or in ``high_noise_model/`` + ``low_noise_model/``) and the frozen encoders as single files; diffusers pipeline
folders (the ``-Diffusers`` repos) hold one subfolder per component.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from wan_train.models.checkpoint.errors import CheckpointError

OFFICIAL_VAE_FILES = {"wan2.1": "Wan2.1_VAE.pth", "wan2.2": "Wan2.2_VAE.pth"}
OFFICIAL_T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
OFFICIAL_TOKENIZER_DIR = "google/umt5-xxl"
OFFICIAL_CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
OFFICIAL_EXPERT_DIRS = ("high_noise_model", "low_noise_model")
# diffusers pipeline subfolders (model_index.json names them)
PIPELINE_DIRS = {"vae": "vae", "text_encoder": "text_encoder", "tokenizer": "tokenizer", "clip": "image_encoder"}


@dataclass(frozen=True)
class WanFiles:
    """Where each component of a Wan checkpoint folder is expected; ``require`` checks that it is there, so a
    folder missing a component still serves the others."""

    root: Path
    layout: str  # "official" | "diffusers"
    dit: Path  # what load_dit reads (it resolves the expert subfolders itself)
    vae: Path
    text_encoder: Path
    tokenizer: Path
    clip: Path  # only the Wan2.1 image-to-video models have (and need) it

    def has(self, component: str) -> bool:
        return getattr(self, component).exists()

    def require(self, component: str) -> Path:
        path = getattr(self, component)
        if not path.exists():
            raise CheckpointError(f"{self.root}: missing {path.relative_to(self.root)} (the "
                                  f"{component.replace('_', ' ')} of a {self.layout} Wan checkpoint folder)")
        return path


def find_wan_files(folder: str | Path) -> WanFiles:
    """The component paths of a Wan checkpoint folder (official or diffusers pipeline).

    When an official folder holds both VAE files, the DiT's latent channels (``out_dim`` in its config.json:
    48 for Wan2.2 TI2V, 16 otherwise) pick one.
    """
    root = Path(folder)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a folder (expected a Wan checkpoint folder such as Wan2.1-T2V-1.3B/)")
    if (root / "model_index.json").is_file():
        return WanFiles(root, "diffusers", root, **{name: root / sub for name, sub in PIPELINE_DIRS.items()})
    if not ((root / "config.json").is_file() or all((root / d).is_dir() for d in OFFICIAL_EXPERT_DIRS)):
        raise CheckpointError(f"{root}: no DiT found: expected config.json (official folder), "
                              f"{' and '.join(d + '/' for d in OFFICIAL_EXPERT_DIRS)} (Wan2.2 A14B) or "
                              "model_index.json (diffusers pipeline)")
    version = _vae_version_of_dit(root)
    present = [root / name for name in OFFICIAL_VAE_FILES.values() if (root / name).is_file()]
    vae = present[0] if len(present) == 1 else root / OFFICIAL_VAE_FILES[version or "wan2.1"]
    return WanFiles(root, "official", root, vae=vae, text_encoder=root / OFFICIAL_T5_FILE,
                    tokenizer=root / OFFICIAL_TOKENIZER_DIR, clip=root / OFFICIAL_CLIP_FILE)


def find_vae_file(folder: Path, *, version: str | None = None) -> Path:
    """The official VAE file in a Wan folder: the only one present, or the one for ``version`` when both are."""
    present = [folder / name for name in OFFICIAL_VAE_FILES.values() if (folder / name).is_file()]
    if len(present) == 1:
        return present[0]
    if present and version is not None:
        return folder / OFFICIAL_VAE_FILES[version]
    if present:
        raise CheckpointError(f"{folder}: holds both {' and '.join(p.name for p in present)}; pass the file "
                              "you want")
    raise CheckpointError(f"{folder}: no VAE found: expected {' or '.join(OFFICIAL_VAE_FILES.values())}, or a "
                          "diffusers config.json / model_index.json")


def _vae_version_of_dit(root: Path) -> str | None:
    config = next((p for p in (root / "config.json", *(root / d / "config.json" for d in OFFICIAL_EXPERT_DIRS))
                   if p.is_file()), None)
    try:
        out_dim = json.loads(config.read_text()).get("out_dim") if config else None
    except json.JSONDecodeError:
        return None  # load_dit reports the broken file
    return {48: "wan2.2", 16: "wan2.1"}.get(out_dim)
