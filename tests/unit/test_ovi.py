"""Ovi's twin-tower DiT: its size against the official model's, the audio tower's time-aligned RoPE, the fusion
between the towers, and its checkpoint in Ovi's own key layout (written here by a key map of the test's own) and
in ours."""

import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import randomize_
from wan_train.models import CheckpointError, get_size
from wan_train.models.checkpoint.ovi_io import load_ovi_dit, save_ovi_dit
from wan_train.models.dit.fusion import OviConfig, OviDiT

# ovi/modules/model.py wraps a block's modulation in a module (ModulationAdd): the only renamed key
OFFICIAL_NAME = (re.compile(r"^((?:video|audio)_model\.blocks\.\d+\.modulation)$"), r"\1.modulation")


def official_state(model: OviDiT) -> dict[str, torch.Tensor]:
    return {OFFICIAL_NAME[0].sub(OFFICIAL_NAME[1], k): v.clone() for k, v in model.state_dict().items()}


def tiny_ovi(seed: int = 0) -> OviDiT:
    size = get_size("tiny-ovi")
    return randomize_(OviDiT(OviConfig(video=size.dit, audio=size.audio)), seed=seed).eval()


def test_the_full_size_has_the_official_tensors_and_parameter_count():
    # counted from Ovi's video.json / audio.json (ovi_facts.md §1): 2073 tensors, 11,660,753,108 parameters
    size = get_size("ovi-11b")
    with torch.device("meta"):
        model = OviDiT(OviConfig(video=size.dit, audio=size.audio))
    official = {OFFICIAL_NAME[0].sub(OFFICIAL_NAME[1], n): tuple(p.shape) for n, p in model.named_parameters()}
    assert len(official) == 2073
    assert model.num_parameters() == 11_660_753_108
    assert official["audio_model.patch_embedding.0.weight"] == (3072, 20, 7)
    assert official["audio_model.patch_embedding.2.w1.weight"] == (8192, 3072, 7)
    assert official["video_model.patch_embedding.weight"] == (3072, 48, 1, 2, 2)
    assert official["video_model.head.head.weight"] == (192, 3072)
    assert official["video_model.blocks.29.modulation.modulation"] == (1, 6, 3072)
    for tower in ("video_model", "audio_model"):
        assert official[f"{tower}.blocks.7.cross_attn.k_fusion.weight"] == (3072, 3072)
        assert official[f"{tower}.blocks.7.cross_attn.pre_attn_norm_fusion.bias"] == (3072,)
        assert official[f"{tower}.blocks.7.cross_attn.norm_k_fusion.weight"] == (3072,)


def test_audio_tokens_and_video_latent_frames_at_the_same_time_share_their_temporal_phase():
    """Ovi 5 s: 121 frames at 24 fps -> 31 latent frames over 121/24 s; audio latents every 512/16000 s. A video
    latent frame j stands for time j * (121/24) / 31 on this axis; audio latent i for i * 512 / 16000."""
    size = get_size("ovi-11b")
    with torch.device("meta"):
        model = OviDiT(OviConfig(video=size.dit, audio=size.audio))
    video_angle = model.video_model.rope.angles(torch.tensor([[j, 0, 0] for j in range(31)]))  # float64 [31, 64]
    audio_angle = model.audio_model.rope.angles(torch.arange(157))  # [157, 64]
    rotated = 22  # the frame axis's pairs for head_dim 128 (44 channels); the audio tower rotates only these
    assert torch.all(audio_angle[:, rotated:] == 0) and torch.all(video_angle[:, :rotated].diff(dim=0) > 0)
    seconds_per_frame, seconds_per_latent = (121 / 24) / 31, 512 / 16000
    omega = video_angle[1, :rotated]  # radians per latent frame
    for i in range(157):  # the video's phase at audio latent i's time, in (fractional) latent frames
        frame = i * seconds_per_latent / seconds_per_frame
        assert torch.allclose(audio_angle[i, :rotated], frame * omega, rtol=2e-4, atol=0), i
    # the RoPE tables handed to attention carry the same angles (float32 cos / sin)
    cos, sin = model.audio_model.rope.for_grid((157,), torch.device("cpu"))
    assert torch.allclose(cos.double(), audio_angle.cos(), atol=1e-6) and torch.allclose(sin.double(),
                                                                                         audio_angle.sin(), atol=1e-6)


def test_each_tower_reads_the_other_through_the_fusion_attention():
    model = tiny_ovi()
    g = torch.Generator().manual_seed(1)
    video, audio = torch.randn(1, 48, 3, 4, 6, generator=g), torch.randn(1, 20, 19, generator=g)
    context = torch.randn(1, 5, 4096, generator=g)
    t = torch.tensor([700.0])
    with torch.no_grad():
        v0, a0 = model(video, audio, t, t, context)
        v1, _ = model(video, audio + torch.randn_like(audio), t, t, context)  # other audio only
        _, a2 = model(video + torch.randn_like(video), audio, t, t, context)  # other video only
        assert not torch.allclose(v0, v1) and not torch.allclose(a0, a2)
        for tower in (model.video_model, model.audio_model):  # cut the fusion values: the towers stop talking
            for block in tower.blocks:
                block.cross_attn.v_fusion.weight.zero_()
                block.cross_attn.v_fusion.bias.zero_()
        v3, _ = model(video, audio, t, t, context)
        v4, _ = model(video, audio + torch.randn_like(audio), t, t, context)
        _, a3 = model(video, audio, t, t, context)
        _, a4 = model(video + torch.randn_like(video), audio, t, t, context)
    assert torch.equal(v3, v4) and torch.equal(a3, a4)


def test_skipping_a_block_changes_both_towers_and_per_token_timesteps_are_accepted():
    model = tiny_ovi()
    g = torch.Generator().manual_seed(2)
    video, audio = torch.randn(2, 48, 3, 4, 6, generator=g), torch.randn(2, 20, 11, generator=g)
    context = torch.randn(2, 4, 4096, generator=g)
    t_video = torch.full((2, 3 * 2 * 3), 500.0)
    t_video[:, :6] = 0  # TI2V: the first latent frame is clean
    with torch.no_grad():
        v, a = model(video, audio, t_video, torch.tensor([500.0, 500.0]), context)
        vs, as_ = model(video, audio, t_video, torch.tensor([500.0, 500.0]), context, skip_blocks=(1,))
    assert v.shape == video.shape and a.shape == audio.shape
    assert not torch.allclose(v, vs) and not torch.allclose(a, as_)


def test_bad_inputs_are_refused_naming_the_tensor():
    model = tiny_ovi()
    t = torch.tensor([1.0])
    with pytest.raises(ValueError, match=r"AudioDiT input: x has shape \(1, 19, 8\)"):
        model(torch.zeros(1, 48, 1, 2, 2), torch.zeros(1, 19, 8), t, t, torch.zeros(1, 3, 4096))
    with pytest.raises(ValueError, match="video batch 1 != audio batch 2"):
        model(torch.zeros(1, 48, 1, 2, 2), torch.zeros(2, 20, 8), t, torch.ones(2), torch.zeros(1, 3, 4096),
              audio_context=torch.zeros(2, 3, 4096))


# ----------------------------------------------------------------------------------------------- checkpoints

def test_an_official_file_loads_saves_in_both_layouts_and_loads_back_bit_for_bit(tmp_path):
    model = tiny_ovi(seed=3)
    official = official_state(model)
    save_file(official, str(tmp_path / "model.safetensors"))

    loaded = load_ovi_dit(tmp_path / "model.safetensors")
    assert loaded.ovi_config == model.ovi_config
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name

    save_ovi_dit(loaded, tmp_path / "again.safetensors", layout="official")
    written = load_file(str(tmp_path / "again.safetensors"))
    assert written.keys() == official.keys()
    assert all(torch.equal(written[k], official[k]) for k in official)

    save_ovi_dit(loaded, tmp_path / "ours", layout="wan_train", max_shard_size="1MB")
    assert (tmp_path / "ours" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    back = load_ovi_dit(tmp_path / "ours")
    assert back.ovi_config == model.ovi_config
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())

    half = load_ovi_dit(tmp_path / "model.safetensors", dtype=torch.bfloat16)
    assert half.video_model.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    assert half.audio_model.blocks[0].cross_attn.norm_k_fusion.weight.dtype == torch.float32
    assert half.video_model.blocks[0].modulation.dtype == torch.float32


def test_ovis_float8_file_loads_in_bf16_with_its_float32_islands(tmp_path):
    """model_fp8_e4m3fn.safetensors: every floating tensor float8_e4m3fn, no scales; Ovi computes it in bf16."""
    model = tiny_ovi(seed=3)
    official = {k: v.to(torch.float8_e4m3fn) for k, v in official_state(model).items()}
    save_file(official, str(tmp_path / "model_fp8_e4m3fn.safetensors"))
    loaded = load_ovi_dit(tmp_path / "model_fp8_e4m3fn.safetensors")
    assert loaded.quantization == f"float8 ({len(official)} tensors, unscaled) in model_fp8_e4m3fn.safetensors"
    weight = loaded.video_model.blocks[0].ffn[0].weight
    assert weight.dtype == torch.bfloat16
    assert torch.equal(weight, official["video_model.blocks.0.ffn.0.weight"].to(torch.bfloat16))
    assert loaded.video_model.blocks[0].modulation.dtype == torch.float32
    assert load_ovi_dit(tmp_path / "model_fp8_e4m3fn.safetensors", dtype=torch.float32).video_model.blocks[0] \
        .ffn[0].weight.dtype == torch.float32


def test_a_missing_or_misnamed_key_is_refused_naming_it(tmp_path):
    official = official_state(tiny_ovi())
    missing = dict(official)
    del missing["audio_model.blocks.1.cross_attn.norm_k_fusion.weight"]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): audio_model\.blocks\.1\.cross_attn\.norm_k_fusion"):
        load_ovi_dit(tmp_path / "missing.safetensors")

    misnamed = dict(official)
    misnamed["video_model.blocks.0.cross_attn.k_fusions.weight"] = misnamed.pop(
        "video_model.blocks.0.cross_attn.k_fusion.weight")
    save_file(misnamed, str(tmp_path / "misnamed.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load_ovi_dit(tmp_path / "misnamed.safetensors")
    assert "missing keys (1): video_model.blocks.0.cross_attn.k_fusion.weight" in str(e.value)
    assert "unexpected keys (1): video_model.blocks.0.cross_attn.k_fusions.weight" in str(e.value)

    wrong = dict(official)
    wrong["video_model.blocks.1.modulation.modulation"] = torch.zeros(1, 6, 8)
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(CheckpointError, match=r"video_model\.blocks\.1\.modulation\.modulation: expected \[1, 6, 256\]"):
        load_ovi_dit(tmp_path / "wrong.safetensors")

    save_file({"blocks.0.ffn.0.weight": torch.zeros(2, 2)}, str(tmp_path / "wan.safetensors"))
    with pytest.raises(CheckpointError, match="not an Ovi twin-tower checkpoint: missing video_model"):
        load_ovi_dit(tmp_path / "wan.safetensors")


def test_a_wan_dit_given_an_audio_tower_keeps_its_video_output_until_trained():
    from wan_train.models import WanDiT

    base = randomize_(WanDiT(get_size("tiny-ti2v").dit), seed=11).eval()
    g = torch.Generator().manual_seed(4)
    video, audio = torch.randn(2, 48, 3, 4, 6, generator=g), torch.randn(2, 20, 13, generator=g)
    context = torch.randn(2, 6, 4096, generator=g)
    t = torch.tensor([900.0, 150.0])
    with torch.no_grad():
        expected = base(video, t, context)
    twin = OviDiT.with_audio_tower(base, get_size("tiny-ovi").audio).eval()
    assert twin.video_model is base  # taken, not copied
    with torch.no_grad():
        got_video, got_audio = twin(video, audio, t, t, context)
        other_sound, _ = twin(video, torch.randn_like(audio), t, t, context)
    assert torch.equal(got_video, expected) and torch.equal(other_sound, expected)
    assert got_audio.shape == audio.shape
    # the audio tower (freshly initialised: its head is zero, as Wan's; random here) hears the picture from the
    # start; once the video tower's fusion values move, so does the picture
    randomize_(twin.audio_model, seed=12)
    with torch.no_grad():
        _, got_audio = twin(video, audio, t, t, context)
        _, audio_other_video = twin(torch.randn_like(video), audio, t, t, context)
        assert not torch.allclose(audio_other_video, got_audio)
        twin.video_model.blocks[0].cross_attn.v_fusion.weight.normal_()
        assert not torch.allclose(twin(video, audio, t, t, context)[0], expected)
    with pytest.raises(ValueError, match="fusion needs them equal"):
        OviDiT.with_audio_tower(randomize_(WanDiT(get_size("tiny-ti2v").dit.replace(num_layers=3))),
                                get_size("tiny-ovi").audio)
