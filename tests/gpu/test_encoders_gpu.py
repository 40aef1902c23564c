"""The frozen encoders on CUDA in bf16 (skipped without a GPU): results track the float32 CPU run."""

import pytest
import torch

from tests.helpers import randomize_, rel_err
from wan_train.models import load_vae
from wan_train.models.encoders import ClipVisionConfig, ClipVisionEncoder, load_clip_vision
from wan_train.models.vae import TINY_VAE_CONFIGS, WanVAE

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("version", ["wan2.1", "wan2.2"])
@pytest.mark.parametrize("tiled", [False, True])
def test_vae_bf16_on_cuda_tracks_float32(tmp_path, version, tiled):
    model = randomize_(WanVAE(TINY_VAE_CONFIGS[version])).eval()
    torch.save(model.state_dict(), tmp_path / "vae.pth")
    vae = load_vae(tmp_path / "vae.pth", dtype=torch.bfloat16, device="cuda")
    assert all(p.device.type == "cuda" and p.dtype == torch.bfloat16 for p in vae.parameters())
    s = model.spatial_compression
    x = torch.rand(1, 3, 9, 4 * s, 6 * s) * 2 - 1
    z = vae.encode(x.cuda(), tiled=tiled)
    assert z.dtype == torch.float32 and z.device.type == "cuda"
    assert rel_err(z.cpu(), model.encode(x, tiled=tiled)) < 5e-2
    assert rel_err(vae.decode(z, tiled=tiled).cpu(), model.decode(z.cpu(), tiled=tiled)) < 5e-2


def test_clip_bf16_on_cuda_tracks_float32(tmp_path):
    model = randomize_(ClipVisionEncoder(ClipVisionConfig(image_size=28, dim=64, mlp_dim=128, num_heads=4,
                                                          num_layers=3))).eval()
    torch.save({f"visual.{k}": v for k, v in model.state_dict().items()}, tmp_path / "clip.pth")
    clip = load_clip_vision(tmp_path / "clip.pth", dtype=torch.bfloat16, device="cuda", num_heads=4)
    images = torch.rand(2, 3, 40, 60) * 2 - 1
    assert rel_err(clip.encode(images.cuda()).float().cpu(), model.encode(images)) < 3e-2
