"""The pixel-space stand-in for the VAE: lossless at full detail, block means for the quickstart, with the Wan
VAE's shapes and interface."""

import pytest
import torch

from wan_train.models import WanVAE, get_size
from wan_train.models.vae import TINY_VAE_CONFIGS, PixelSpace


def test_round_trip_is_exact_and_shapes_follow_the_vae_strides():
    pixel = PixelSpace()
    video = torch.rand(2, 3, 9, 32, 48) * 2 - 1
    latents = pixel.encode(video)
    assert latents.shape == (2, *pixel.latent_shape(9, 32, 48)) == (2, 768, 3, 4, 6)
    assert torch.equal(pixel.decode(latents), video)
    wan = WanVAE(TINY_VAE_CONFIGS["wan2.1"])  # the same latent grid as the Wan2.1 VAE
    assert pixel.latent_shape(9, 32, 48)[1:] == wan.latent_shape(9, 32, 48)[1:]


def test_each_latent_frame_holds_its_own_pixel_frames():
    pixel = PixelSpace(spatial_compression=2, temporal_compression=4)
    video = torch.zeros(1, 3, 9, 4, 4)
    video[:, :, 5] = 1.0  # pixel frame 5 = second frame of latent frame 2 (frames 1-4 -> 1, 5-8 -> 2)
    latents = pixel.encode(video)
    assert latents[:, :, 2].abs().sum() > 0 and latents[:, :, :2].abs().sum() == 0


def test_block_means_decode_to_blocks_and_encode_back_exactly():
    pixel = PixelSpace(detail=1)
    video = torch.rand(2, 3, 9, 32, 48) * 2 - 1
    latents = pixel.encode(video)
    assert latents.shape == (2, 12, 3, 4, 6)
    torch.testing.assert_close(latents[:, 0, 1, 0, 0] * 0.5, video[:, 0, 1, :8, :8].mean(dim=(-1, -2)))
    blocks = pixel.decode(latents)
    assert blocks.shape == video.shape and torch.equal(blocks[:, :, :, :8, :8], blocks[:, :, :, :1, :1].expand(
        -1, -1, -1, 8, 8))
    torch.testing.assert_close(pixel.encode(blocks), latents)
    half = PixelSpace(detail=4)  # 2 x 2 block means, 4 x 4 of them per latent pixel
    assert half.z_dim == 192 and half.encode(video).shape == (2, 192, 3, 4, 6)


def test_quickstart_size_matches_the_builtin_pixel_space():
    from wan_train.models import builtin_vae

    size = get_size("quickstart")
    assert size.vae == "pixel" and size.dit.in_dim == size.dit.out_dim == builtin_vae().z_dim == 12


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        PixelSpace().encode(torch.zeros(1, 3, 6, 16, 16))
