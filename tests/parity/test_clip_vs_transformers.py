"""Parity with transformers' CLIP vision tower: a random-weight CLIPVisionModelWithProjection, written in the official
open-clip .pth layout (converted here, independently of wan_train) and saved by transformers itself, loads through
load_clip_vision and reproduces its penultimate hidden states (diffusers' Wan i2v ``hidden_states[-2]``)."""

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import randomize_, rel_err
from wan_train.models.encoders.clip import load_clip_vision

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.parity

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 3,
        "patch_size": 14, "image_size": 56, "hidden_act": "gelu", "projection_dim": 32}

# transformers -> official open-clip names of the visual tower (Wan2.1 wan/modules/clip.py VisionTransformer),
# applied as sequential str.replace after dropping "vision_model."
HF_TO_OFFICIAL = [
    ("embeddings.patch_embedding", "patch_embedding"), ("pre_layrnorm", "pre_norm"), ("post_layernorm", "post_norm"),
    ("encoder.layers.", "transformer."), ("layer_norm1", "norm1"), ("layer_norm2", "norm2"),
    ("self_attn.out_proj", "attn.proj"), ("mlp.fc1", "mlp.0"), ("mlp.fc2", "mlp.2"),
]


def official_state(hf_state: dict, num_layers: int) -> dict:
    """The whole open-clip file as Wan ships it: visual.* plus (here a dummy) XLM-R text tower and log_scale."""
    hf = {k.removeprefix("vision_model."): v for k, v in hf_state.items()}
    out = {
        "visual.cls_embedding": hf.pop("embeddings.class_embedding").view(1, 1, -1),
        "visual.pos_embedding": hf.pop("embeddings.position_embedding.weight").unsqueeze(0),
        "visual.head": hf.pop("visual_projection.weight").T.contiguous(),
    }
    for i in range(num_layers):
        for kind in ("weight", "bias"):
            parts = [hf.pop(f"encoder.layers.{i}.self_attn.{c}_proj.{kind}") for c in "qkv"]
            out[f"visual.transformer.{i}.attn.to_qkv.{kind}"] = torch.cat(parts)
    for key, value in hf.items():
        for a, b in HF_TO_OFFICIAL:
            key = key.replace(a, b)
        out["visual." + key] = value
    out["textual.embedding.weight"] = torch.randn(10, 8)
    out["log_scale"] = torch.tensor(2.6593)
    return out


@pytest.fixture(scope="module")
def hf_model():
    config = transformers.CLIPVisionConfig(**TINY)
    return randomize_(transformers.CLIPVisionModelWithProjection(config), seed=1).eval()


def penultimate(model, pixels):
    with torch.no_grad():
        return model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]


@pytest.fixture()
def official_pth(hf_model, tmp_path):
    path = tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    torch.save(official_state(hf_model.state_dict(), TINY["num_hidden_layers"]), path)
    return path


def test_official_pth_matches_transformers(hf_model, official_pth):
    ours = load_clip_vision(official_pth, num_heads=TINY["num_attention_heads"])
    pixels = torch.randn(2, 3, 56, 56)
    ref = penultimate(hf_model, pixels)
    assert ours(pixels).shape == ref.shape == (2, 17, 64)
    assert rel_err(ours(pixels), ref) <= 1e-5
    assert rel_err(ours.head, hf_model.visual_projection.weight.T) == 0


@pytest.mark.parametrize("shard", ["50GB", "40KB"], ids=["single", "sharded"])
def test_transformers_folder_matches(hf_model, tmp_path, shard):
    hf_model.save_pretrained(tmp_path / "image_encoder", max_shard_size=shard)
    assert (tmp_path / "image_encoder" / "model.safetensors.index.json").exists() == (shard == "40KB")
    ours = load_clip_vision(tmp_path / "image_encoder")
    assert ours.config.num_heads == 4 and ours.config.out_dim == 32
    assert torch.equal(ours.head, hf_model.visual_projection.weight.T)  # official head: x @ head
    pixels = torch.randn(2, 3, 56, 56)
    assert rel_err(ours(pixels), penultimate(hf_model, pixels)) <= 1e-5


def test_plain_vision_model_folder_has_no_head(hf_model, tmp_path):
    plain = transformers.CLIPVisionModel(hf_model.config)
    # transformers 5 made CLIPVisionModel the bare tower (and saves it without the "vision_model." prefix)
    getattr(plain, "vision_model", plain).load_state_dict(hf_model.vision_model.state_dict())
    plain.save_pretrained(tmp_path / "plain")
    ours = load_clip_vision(tmp_path / "plain")
    assert ours.config.out_dim is None and not hasattr(ours, "head")
    pixels = torch.randn(1, 3, 56, 56)
    assert rel_err(ours(pixels), penultimate(plain, pixels)) <= 1e-5


def test_full_clip_model_folder_keeps_the_vision_tower(hf_model, tmp_path):
    vision = {k: v for k, v in TINY.items() if k != "projection_dim"}
    text = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 1}
    full = transformers.CLIPModel(transformers.CLIPConfig(vision_config=vision, text_config=text, projection_dim=48))
    randomize_(full, seed=2).eval().save_pretrained(tmp_path / "clip")
    ours = load_clip_vision(tmp_path / "clip")
    assert ours.config.out_dim == 48  # from the projection tensor; vision_config holds a default projection_dim
    pixels = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        ref = full.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    assert rel_err(ours(pixels), ref) <= 1e-5


def test_encode_preprocesses_like_the_official_model(hf_model, official_pth):
    ours = load_clip_vision(official_pth, num_heads=4)
    images = torch.rand(2, 3, 40, 70) * 2 - 1  # neither square nor the model size
    # official CLIPModel.visual: bicubic squash to the model size, [-1, 1] -> [0, 1], OpenAI CLIP mean / std
    x = F.interpolate(images, size=(56, 56), mode="bicubic", align_corners=False) * 0.5 + 0.5
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    assert rel_err(ours.encode(images), penultimate(hf_model, (x - mean) / std)) <= 1e-5
