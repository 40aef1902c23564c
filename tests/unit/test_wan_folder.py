"""One call loads a whole Wan checkpoint folder: DiT, VAE, text encoder + tokenizer, and CLIP for i2v models;
tiny random components written in the official file names and formats stand in for the downloads."""

import json
import shutil

import pytest
import torch
from transformers import UMT5Config, UMT5EncoderModel

from tests.helpers import randomize_, write_official_folder, write_tiny_tokenizer
from wan_train.models import CheckpointError, WanDiT, WanVAE, find_wan_files, get_size, load_wan, save_dit
from wan_train.models.vae import TINY_VAE_CONFIGS

TEXT_DIM = get_size("tiny").dit.text_dim


@pytest.fixture(scope="module")
def t2v_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("Wan2.1-T2V-tiny")
    write_official_folder(root)
    return root


def test_one_call_loads_every_component(t2v_folder):
    wan = load_wan(t2v_folder)
    assert wan.files.layout == "official" and wan.clip is None  # a t2v model does not use CLIP
    assert wan.dit.config == get_size("tiny").dit
    assert wan.vae.z_dim == wan.dit.config.out_dim == 16
    context, lengths = wan.text_encoder.encode(["a red fox", "rain over a neon city at night"])
    assert context.shape == (2, 512, TEXT_DIM) and lengths.tolist()[0] < lengths.tolist()[1]
    video = wan.vae.decode(torch.zeros(1, 16, 2, 2, 2))
    assert video.shape == (1, 3, 5, 16, 16)


def test_components_can_be_picked(t2v_folder):
    wan = load_wan(t2v_folder, components=("vae",))
    assert wan.vae is not None and wan.dit is None and wan.text_encoder is None
    with pytest.raises(ValueError, match="unknown \\['unet'\\]"):
        load_wan(t2v_folder, components=("unet",))


def test_i2v_folder_loads_clip_and_names_it_when_missing(tmp_path):
    dit = write_official_folder(tmp_path, "tiny-i2v")
    wan = load_wan(tmp_path, components=("dit", "clip"))
    assert wan.clip.config.dim == dit.config.image_dim
    assert wan.clip.encode(torch.zeros(1, 3, 40, 60)).shape == (1, 5, dit.config.image_dim)
    (tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth").unlink()
    with pytest.raises(CheckpointError, match="missing models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"):
        load_wan(tmp_path, components=("dit", "clip"))


@pytest.mark.parametrize("name", ["Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl"])
def test_a_missing_file_is_named(t2v_folder, tmp_path, name):
    copy = tmp_path / "Wan2.1-T2V-tiny"
    shutil.copytree(t2v_folder, copy)
    target = copy / name
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(CheckpointError, match=f"{copy}: missing {name}"):
        load_wan(copy)
    assert load_wan(copy, components=("dit",)).dit is not None  # what is there still loads


def test_both_vae_files_are_told_apart_by_the_dit(t2v_folder, tmp_path):
    copy = tmp_path / "both"
    shutil.copytree(t2v_folder, copy)
    torch.save(WanVAE(TINY_VAE_CONFIGS["wan2.2"]).state_dict(), copy / "Wan2.2_VAE.pth")
    assert find_wan_files(copy).vae.name == "Wan2.1_VAE.pth"  # the DiT has 16 latent channels


def test_not_a_wan_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no DiT found"):
        find_wan_files(tmp_path)


def test_diffusers_pipeline_folder(tmp_path):
    """A -Diffusers folder: transformer/, vae/, text_encoder/, tokenizer/ and model_index.json."""
    diffusers = pytest.importorskip("diffusers")  # writes the vae/ folder in its own format
    dit = randomize_(WanDiT(get_size("tiny").dit))
    save_dit(dit, tmp_path / "transformer", layout="diffusers")
    vae = randomize_(diffusers.AutoencoderKLWan(base_dim=8, z_dim=16))
    vae.save_pretrained(tmp_path / "vae")
    t5 = randomize_(UMT5EncoderModel(UMT5Config(vocab_size=64, d_model=TEXT_DIM, num_heads=4, d_kv=8, d_ff=48,
                                                num_layers=1)))
    t5.save_pretrained(tmp_path / "text_encoder")
    write_tiny_tokenizer(tmp_path / "tokenizer")
    (tmp_path / "model_index.json").write_text(json.dumps({
        "_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"], "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"]}))
    wan = load_wan(tmp_path)
    assert wan.files.layout == "diffusers" and wan.clip is None
    for k, v in dit.state_dict().items():
        assert torch.equal(wan.dit.state_dict()[k], v), k
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        mu = vae.encode(x).latent_dist.mode()
    torch.testing.assert_close(wan.vae.encode(x) * wan.vae.latents_std + wan.vae.latents_mean, mu)
    assert wan.text_encoder.encode("a red fox")[0].shape == (1, 512, TEXT_DIM)
    (tmp_path / "vae" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="vae: no VAE found"):
        load_wan(tmp_path, components=("vae",))
