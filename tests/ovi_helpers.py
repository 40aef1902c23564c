"""A tiny random Ovi checkpoint folder in the official layout (ovi_facts.md §1), for loading and generation
tests: the twin-tower DiT in Ovi's key naming, a tiny Wan2.2-TI2V-5B folder (VAE, umT5, tokenizer) and the two
MMAudio files (the VAE's raw state dict; BigVGAN's checkpoint with weight-norm pairs under "generator")."""

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.helpers import randomize_, write_official_folder

# Ovi wraps each block's modulation table in a module (ModulationAdd): blocks.N.modulation.modulation
OVI_MODULATION = re.compile(r"^((?:video|audio)_model\.blocks\.\d+\.modulation)$")


def ovi_official_state(model) -> dict[str, torch.Tensor]:
    return {OVI_MODULATION.sub(r"\1.modulation", k): v.detach().clone().contiguous()
            for k, v in model.state_dict().items()}


def weight_norm_pairs(state: dict[str, torch.Tensor], convs: set[str]) -> dict[str, torch.Tensor]:
    """`<conv>.weight` -> `<conv>.weight_g` (the norm over all but dim 0) and `<conv>.weight_v` (the weight), as
    torch.nn.utils.weight_norm stores a conv it wraps."""
    out = {}
    for key, tensor in state.items():
        conv = key.removesuffix(".weight")
        if conv in convs and key.endswith(".weight"):
            out[f"{conv}.weight_g"] = tensor.flatten(1).norm(dim=1).view(-1, *[1] * (tensor.ndim - 1)).clone()
            out[f"{conv}.weight_v"] = tensor.clone()
        else:
            out[key] = tensor.clone()
    return out


def write_ovi_folder(root: Path, *, seed: int = 0):
    """root/Ovi/model.safetensors, root/Wan2.2-TI2V-5B/..., root/MMAudio/ext_weights/{v1-16.pth, best_netG.pt};
    returns the DiT and the audio autoencoder as written."""
    from wan_train.models import OviConfig, OviDiT, get_size
    from wan_train.models.audio import TINY_AUDIO, AudioAutoencoder

    size = get_size("tiny-ovi")
    dit = randomize_(OviDiT(OviConfig(video=size.dit, audio=size.audio)), seed=seed).eval()
    (root / "Ovi").mkdir(parents=True)
    save_file(ovi_official_state(dit), str(root / "Ovi" / "model.safetensors"))
    (root / "Wan2.2-TI2V-5B").mkdir()
    write_official_folder(root / "Wan2.2-TI2V-5B", size="tiny-ti2v")
    audio = randomize_(AudioAutoencoder(TINY_AUDIO), seed=seed + 1).eval()
    weights = root / "MMAudio" / "ext_weights"
    weights.mkdir(parents=True)
    torch.save({k: v.clone() for k, v in audio.vae.state_dict().items()}, weights / "v1-16.pth")
    convs = {name for name, m in audio.vocoder.named_modules() if isinstance(m, (torch.nn.Conv1d,
                                                                                  torch.nn.ConvTranspose1d))}
    torch.save({"generator": weight_norm_pairs(audio.vocoder.state_dict(), convs)}, weights / "best_netG.pt")
    return dit, audio
