"""The CLIP image encoder: official key layout, penultimate-block features, dtype handling and loading errors.
Numerics against transformers are pinned in tests/parity/test_clip_vs_transformers.py."""

import pytest
import torch

from tests.helpers import randomize_, rel_err
from wan_train.models.checkpoint.errors import CheckpointError
from wan_train.models.encoders.clip import VIT_H_14, ClipVisionConfig, ClipVisionEncoder, load_clip_vision

TINY = ClipVisionConfig(image_size=28, patch_size=14, dim=64, mlp_dim=128, num_heads=4, num_layers=3, out_dim=32)


@pytest.fixture()
def tiny():
    return randomize_(ClipVisionEncoder(TINY)).eval()


@pytest.fixture()
def official_pth(tiny, tmp_path):
    """A tiny file in the official open-clip layout: visual.* beside the XLM-R text tower and log_scale."""
    path = tmp_path / "clip.pth"
    state = {f"visual.{k}": v for k, v in tiny.state_dict().items()}
    torch.save({**state, "textual.embedding.weight": torch.randn(10, 8), "log_scale": torch.tensor(2.6593)}, path)
    return path


def test_vit_h_14_shape_facts():
    assert VIT_H_14.num_tokens == 257  # 16 x 16 patches + CLS
    assert VIT_H_14.dim // VIT_H_14.num_heads == 80


def test_state_dict_is_the_official_visual_layout(tiny):
    expected = {"patch_embedding.weight": (64, 3, 14, 14), "cls_embedding": (1, 1, 64), "pos_embedding": (1, 5, 64),
                "pre_norm.weight": (64,), "pre_norm.bias": (64,), "post_norm.weight": (64,), "post_norm.bias": (64,),
                "head": (64, 32)}
    for i in range(3):
        expected |= {f"transformer.{i}.norm1.weight": (64,), f"transformer.{i}.norm1.bias": (64,),
                     f"transformer.{i}.attn.to_qkv.weight": (192, 64), f"transformer.{i}.attn.to_qkv.bias": (192,),
                     f"transformer.{i}.attn.proj.weight": (64, 64), f"transformer.{i}.attn.proj.bias": (64,),
                     f"transformer.{i}.norm2.weight": (64,), f"transformer.{i}.norm2.bias": (64,),
                     f"transformer.{i}.mlp.0.weight": (128, 64), f"transformer.{i}.mlp.0.bias": (128,),
                     f"transformer.{i}.mlp.2.weight": (64, 128), f"transformer.{i}.mlp.2.bias": (64,)}
    assert {k: tuple(v.shape) for k, v in tiny.state_dict().items()} == expected


def test_features_skip_the_last_block(tiny):
    pixels = torch.randn(2, 3, 28, 28)
    before = tiny(pixels)
    assert before.shape == (2, TINY.num_tokens, TINY.dim)
    with torch.no_grad():
        for p in tiny.transformer[-1].parameters():
            p.add_(1.0)
        for p in (tiny.post_norm.weight, tiny.head):
            p.mul_(3.0)
    assert torch.equal(tiny(pixels), before)
    with torch.no_grad():
        tiny.transformer[-2].mlp[2].bias.add_(1.0)  # the block before it does count
    assert not torch.allclose(tiny(pixels), before)


def test_load_official_pth_infers_the_size(tiny, official_pth):
    model = load_clip_vision(official_pth, num_heads=4)
    assert model.config == TINY
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    pixels = torch.randn(1, 3, 28, 28)
    assert torch.equal(model(pixels), tiny(pixels))


def test_default_heads_are_dim_over_80(tmp_path):
    cfg = ClipVisionConfig(image_size=14, patch_size=14, dim=160, mlp_dim=32, num_heads=2, num_layers=2, out_dim=8)
    torch.save({f"visual.{k}": v for k, v in ClipVisionEncoder(cfg).state_dict().items()}, tmp_path / "c.pth")
    assert load_clip_vision(tmp_path / "c.pth").config.num_heads == 2


def test_bf16_weights_give_bf16_features(tiny, official_pth):
    model = load_clip_vision(official_pth, num_heads=4, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    images = torch.rand(2, 3, 30, 50) * 2 - 1
    features = model.encode(images)
    assert features.dtype == torch.bfloat16 and features.shape == (2, TINY.num_tokens, TINY.dim)
    assert rel_err(features, tiny.encode(images)) < 3e-2


def test_encode_needs_no_grad_and_rejects_videos(tiny):
    images = torch.rand(1, 3, 20, 20, requires_grad=True)
    assert not tiny.encode(images).requires_grad
    with pytest.raises(ValueError, match=r"video\[:, :, 0\]"):
        tiny.encode(torch.rand(1, 3, 2, 20, 20))


def test_missing_visual_key_names_the_file_and_key(tiny, tmp_path):
    state = {f"visual.{k}": v for k, v in tiny.state_dict().items() if k != "transformer.1.norm2.bias"}
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"(?s)broken\.pth.*missing.*visual\.transformer\.1\.norm2\.bias"):
        load_clip_vision(tmp_path / "broken.pth", num_heads=4)


def test_unexpected_visual_key_is_refused(tiny, tmp_path):
    state = {f"visual.{k}": v for k, v in tiny.state_dict().items()}
    torch.save({**state, "visual.proj_extra": torch.zeros(3)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"(?s)extra\.pth.*unexpected.*visual\.proj_extra"):
        load_clip_vision(tmp_path / "extra.pth", num_heads=4)


def test_quick_gelu_folder_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                           num_hidden_layers=2, patch_size=14, image_size=28, hidden_act="quick_gelu")
    transformers.CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "openai")
    with pytest.raises(CheckpointError, match=r"openai/config\.json.*hidden_act='quick_gelu'.*'gelu'"):
        load_clip_vision(tmp_path / "openai")
