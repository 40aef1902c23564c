"""The Wan VAEs: sizes and compression facts, causal streaming, batching, tiling, dtype and the loader's errors."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tests.helpers import randomize_, rel_err
from wan_train.models import CheckpointError, load_vae
from wan_train.models.vae import TINY_VAE_CONFIGS, WAN21_VAE, WAN22_VAE, Tiling, WanVAE
from wan_train.models.vae.tiling import ramps, spans, tiled

VERSIONS = ["wan2.1", "wan2.2"]


@pytest.fixture(scope="module", params=VERSIONS)
def tiny(request):
    return randomize_(WanVAE(TINY_VAE_CONFIGS[request.param]), seed=1).eval()


def video(frames, height, width, *, batch=1, seed=0):
    return torch.rand(batch, 3, frames, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("config,params,z,spatial,latent", [
    # Wan2.1_VAE.pth is a 508 MB float32 file, Wan2.2_VAE.pth 2.82 GB
    (WAN21_VAE, 126_892_531, 16, 8, (16, 21, 60, 104)),
    (WAN22_VAE, 704_688_668, 48, 16, (48, 21, 30, 52)),
])
def test_real_sizes_and_compression(config, params, z, spatial, latent):
    with torch.device("meta"):
        vae = WanVAE(config)
    assert sum(p.numel() for p in vae.parameters()) == params
    assert (vae.z_dim, vae.spatial_compression, vae.temporal_compression) == (z, spatial, 4)
    assert vae.latent_shape(81, 480, 832) == latent  # 480p, 81 frames
    assert vae.latents_mean.shape == vae.latents_std.shape == (1, z, 1, 1, 1)


def test_encoding_is_causal_and_decoding_streams_one_latent_at_a_time(tiny):
    s = tiny.spatial_compression
    x = video(13, s, 2 * s)
    full = tiny.encode(x)
    for k in (0, 1, 2):  # the first 1 + 4k frames give exactly the first 1 + k latents
        assert torch.allclose(tiny.encode(x[:, :, :1 + 4 * k]), full[:, :, :1 + k], atol=1e-5)
    decoded = tiny.decode(full)
    assert decoded.shape == x.shape and decoded.abs().max() <= 1
    assert torch.allclose(tiny.decode(full[:, :, :2]), decoded[:, :, :5], atol=1e-5)


def test_a_batch_encodes_and_decodes_like_its_members(tiny):
    s = tiny.spatial_compression
    x = video(5, s, s, batch=3)
    z = tiny.encode(x)
    for i in range(3):
        assert torch.allclose(tiny.encode(x[i:i + 1]), z[i:i + 1], atol=1e-5)
    assert torch.allclose(tiny.decode(z)[1:2], tiny.decode(z[1:2]), atol=1e-5)


def test_bad_shapes_are_refused_with_the_shape(tiny):
    s = tiny.spatial_compression
    with pytest.raises(ValueError, match=r"F = 1 \+ 4k.*\(1, 3, 4, "):
        tiny.encode(video(4, s, s))
    with pytest.raises(ValueError, match=f"multiples of {s}"):
        tiny.encode(video(5, s + 2, s))
    with pytest.raises(ValueError, match=rf"\[B, {tiny.z_dim}, T, H, W\]"):
        tiny.decode(torch.zeros(1, 4, 2, 2, 2))


# ---------------------------------------------------------------------------------------------------- tiling


@pytest.mark.parametrize("size", [40, 64, 100, 136])
def test_tile_ramps_are_a_partition_of_unity(size):
    axis = spans(size, 32, 24)
    assert axis[0][0] == 0 and axis[-1][1] == size
    total = torch.zeros(size * 2)
    for (s, e), w in zip(axis, ramps(axis, 2), strict=True):
        total[2 * s:2 * e] += w
    assert torch.allclose(total, torch.ones_like(total))


@pytest.mark.parametrize("scale", [1 / 8, 8])
def test_tiling_a_local_map_is_exact(scale):
    """Any map that is local at the tile grid (8x8 average pooling for encode, 8x nearest upsampling for decode)
    comes out of the tiler exactly as from the whole frame: tiles land where they belong and blend to 1."""
    def fn(x):
        b, c, f, h, w = x.shape
        flat = x.transpose(1, 2).reshape(b * f, c, h, w)
        out = F.avg_pool2d(flat, 8) if scale < 1 else F.interpolate(flat, scale_factor=8, mode="nearest")
        return out.reshape(b, f, c, *out.shape[-2:]).transpose(1, 2)
    x = torch.randn(1, 2, 3, 136, 200) if scale < 1 else torch.randn(1, 2, 3, 17, 25)
    tile, overlap = (64, 16) if scale < 1 else (8, 2)
    assert torch.allclose(tiled(fn, x, tile=tile, overlap=overlap, scale=scale), fn(x), atol=1e-6)


def test_vae_tiling_blends_tiles(tiny):
    s = tiny.spatial_compression
    tiny.tiling = Tiling(tile=4 * s, overlap=2 * s)
    try:
        one_tile = video(5, 4 * s, 4 * s)  # fits in one tile: tiling changes nothing
        assert torch.equal(tiny.encode(one_tile, tiled=True), tiny.encode(one_tile, tiled=False))
        x = F.interpolate(video(5, 3, 4), size=(5, 6 * s, 8 * s), mode="trilinear")  # smooth content, 2 x 3 tiles
        z, z_tiled = tiny.encode(x, tiled=False), tiny.encode(x, tiled=True)
        assert z_tiled.shape == z.shape
        # A random-weight network sees far past a 4-latent tile (and its middle attention sees the whole frame),
        # so tiles differ from the whole frame near every seam: a regression bound (measured 0.11-0.23 encode,
        # 0.38-0.55 decode), not a quality claim; exactness of the tiler itself is pinned above.
        assert rel_err(z_tiled, z) < 0.35
        v, v_tiled = tiny.decode(z, tiled=False), tiny.decode(z, tiled=True)
        assert v_tiled.shape == v.shape and rel_err(v_tiled, v) < 0.75
    finally:
        tiny.tiling = Tiling()


def test_tiles_off_the_latent_grid_are_refused(tiny):
    tiny.tiling = Tiling(tile=100, overlap=20)
    try:
        with pytest.raises(ValueError, match=f"multiples of this VAE's spatial compression {tiny.spatial_compression}"):
            tiny.encode(video(1, 4 * tiny.spatial_compression, 4 * tiny.spatial_compression), tiled=True)
    finally:
        tiny.tiling = Tiling()


def test_tiling_turns_on_automatically_from_720p():
    tiling = Tiling()
    assert tiling.use_for((720, 1280), None) and tiling.use_for((1080, 1920), None)
    assert not tiling.use_for((480, 832), None)
    assert tiling.use_for((480, 832), True) and not tiling.use_for((720, 1280), False)


# ---------------------------------------------------------------------------------------------------- loading


@pytest.fixture(params=VERSIONS)
def official_file(request, tmp_path):
    version = request.param
    model = randomize_(WanVAE(TINY_VAE_CONFIGS[version]), seed=2).eval()
    path = tmp_path / f"Wan{version[3:]}_VAE.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_official_pth_loads_frozen_and_equal(official_file):
    model, path = official_file
    loaded = load_vae(path)
    assert loaded.config == model.config and not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    torch.testing.assert_close(loaded.latents_std, model.latents_std)


def test_single_safetensors_file_and_wan_folder_load(official_file, tmp_path):
    model, path = official_file
    save_file(model.state_dict(), tmp_path / "wan_vae.safetensors")  # ComfyUI ships the official names
    x = video(5, model.spatial_compression, model.spatial_compression)
    expected = model.encode(x)
    # (memory-mapped weights may take other CPU kernel paths: equal to float rounding, not bitwise)
    torch.testing.assert_close(load_vae(tmp_path / "wan_vae.safetensors").encode(x), expected)
    torch.testing.assert_close(load_vae(path.parent).encode(x), expected)  # a Wan folder holding the .pth


def test_bf16_weights_give_float32_latents_close_to_fp32(official_file):
    model, path = official_file
    vae = load_vae(path, dtype=torch.bfloat16)
    assert {p.dtype for p in vae.parameters()} == {torch.bfloat16}
    x = video(5, model.spatial_compression, model.spatial_compression)
    z = vae.encode(x)
    assert z.dtype == torch.float32 and rel_err(z, model.encode(x)) < 5e-2
    assert vae.decode(z).dtype == torch.float32


def test_missing_key_names_the_file_and_key(official_file):
    model, path = official_file
    state = model.state_dict()
    state.pop("decoder.head.2.bias")
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=rf"{path.name}.*\n.*missing keys \(1\): decoder.head.2.bias"):
        load_vae(path)


def test_wrong_latent_channels_are_refused(tmp_path):
    state = WanVAE(TINY_VAE_CONFIGS["wan2.1"]).state_dict()
    state["conv2.weight"] = torch.zeros(8, 8, 1, 1, 1)
    torch.save(state, tmp_path / "vae.pth")
    with pytest.raises(CheckpointError, match="16 latent channels.*has 8"):
        load_vae(tmp_path / "vae.pth")


def test_folder_problems_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="no VAE found: expected Wan2.1_VAE.pth or Wan2.2_VAE.pth"):
        load_vae(tmp_path)
    for name in ("Wan2.1_VAE.pth", "Wan2.2_VAE.pth"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(CheckpointError, match="holds both"):
        load_vae(tmp_path)
    (tmp_path / "vae.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="vae.pth: not a readable"):
        load_vae(tmp_path / "vae.pth")


def test_diffusers_config_with_unknown_field_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan", "temporal_tiles": 3}))
    with pytest.raises(CheckpointError, match=r"config.json: unknown AutoencoderKLWan config fields \['temporal"):
        load_vae(tmp_path)
