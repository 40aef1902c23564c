"""Parity of the Wan VAEs with diffusers' AutoencoderKLWan, both versions, from a diffusers folder and from the
official key layout (written here with an independent rename table): the normalised posterior mean and the
decoded video agree, and chunked causal encoding of 1 + 4k frames matches for several k."""

import re

import pytest
import torch

from tests.helpers import randomize_, rel_err
from wan_train.models import load_vae
from wan_train.models.vae.config import WAN22_MEAN, WAN22_STD

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.parity

TINY = {  # small widths, the real block structure and latent channels
    "wan2.1": dict(base_dim=8, z_dim=16),
    "wan2.2": dict(base_dim=8, decoder_base_dim=12, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
                   patch_size=2, scale_factor_spatial=16, latents_mean=list(WAN22_MEAN), latents_std=list(WAN22_STD)),
}
RESIDUAL = [(r"\.norm1\.", ".residual.0."), (r"\.conv1\.", ".residual.2."), (r"\.norm2\.", ".residual.3."),
            (r"\.conv2\.", ".residual.6."), (r"\.conv_shortcut\.", ".shortcut.")]


def official_key(key: str, version: str) -> str:
    """diffusers -> official Wan key (the published conversion, inverted by hand)."""
    if ".resnets." in key or (version == "wan2.1" and key.startswith("encoder.down_blocks.")):  # residual blocks
        for pat, rep in RESIDUAL:
            key = re.sub(pat, rep, key)
    key = re.sub(r"^quant_conv\.", "conv1.", key)
    key = re.sub(r"^post_quant_conv\.", "conv2.", key)
    key = re.sub(r"\.conv_in\.", ".conv1.", key)
    key = re.sub(r"\.norm_out\.", ".head.0.", key)
    key = re.sub(r"\.conv_out\.", ".head.2.", key)
    key = re.sub(r"mid_block\.resnets\.0\.", "middle.0.", key)
    key = re.sub(r"mid_block\.attentions\.0\.", "middle.1.", key)
    key = re.sub(r"mid_block\.resnets\.1\.", "middle.2.", key)
    if version == "wan2.1":
        key = re.sub(r"^encoder\.down_blocks\.", "encoder.downsamples.", key)
        # decoder: stage i holds 3 resnets then its upsampler, numbered in one flat list of 4 per stage
        key = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                     lambda m: f"decoder.upsamples.{4 * int(m[1]) + int(m[2])}.", key)
        key = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"decoder.upsamples.{4 * int(m[1]) + 3}.", key)
    else:
        key = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.downsamples.\1.downsamples.\2.", key)
        key = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsampler\.", r"encoder.downsamples.\1.downsamples.2.", key)
        key = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", r"decoder.upsamples.\1.upsamples.\2.", key)
        key = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsampler\.", r"decoder.upsamples.\1.upsamples.3.", key)
    return key


@pytest.fixture(scope="module", params=["wan2.1", "wan2.2"])
def reference(request, tmp_path_factory):
    """(version, diffusers model, its folder, the same weights as an official .pth)."""
    version = request.param
    model = randomize_(diffusers.AutoencoderKLWan(**TINY[version]), seed=3).eval()
    root = tmp_path_factory.mktemp(version)
    model.save_pretrained(root / "vae")
    official = {official_key(k, version): v.clone() for k, v in model.state_dict().items()}
    assert len(official) == len(model.state_dict())
    torch.save(official, root / f"Wan{version[3:]}_VAE.pth")
    return version, model, root


def video(frames, height, width, seed=0):
    return torch.rand(2, 3, frames, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def normalised(model, mu):
    c = model.config
    mean = torch.tensor(c.latents_mean).view(1, -1, 1, 1, 1)
    return (mu - mean) / torch.tensor(c.latents_std).view(1, -1, 1, 1, 1)


@pytest.mark.parametrize("source", ["diffusers folder", "official pth"])
def test_encode_and_decode_match_diffusers(reference, source):
    version, ref, root = reference
    ours = load_vae(root / "vae" if source == "diffusers folder" else root / f"Wan{version[3:]}_VAE.pth")
    assert ours.config.version == version
    s = ours.spatial_compression
    x = video(9, 2 * s, 3 * s)
    with torch.no_grad():
        mu = ref.encode(x).latent_dist.mode()
        expected_video = ref.decode(mu).sample
    latents = ours.encode(x)
    assert latents.shape == mu.shape == (2, ours.z_dim, 3, 2, 3)
    assert rel_err(latents, normalised(ref, mu)) <= 1e-4
    decoded = ours.decode(latents)
    assert decoded.shape == x.shape
    assert rel_err(decoded, expected_video) <= 1e-4


@pytest.mark.parametrize("k", [0, 1, 3])
def test_chunked_causal_encoding_of_1_plus_4k_frames(reference, k):
    version, ref, root = reference
    ours = load_vae(root / "vae")
    s = ours.spatial_compression
    x = video(1 + 4 * k, s, 2 * s, seed=k)
    with torch.no_grad():
        mu = ref.encode(x).latent_dist.mode()
    latents = ours.encode(x)
    assert latents.shape[2] == 1 + k
    assert rel_err(latents, normalised(ref, mu)) <= 1e-4
