"""CLIP score and image-embedding metrics (eval.md §3.1, §3.2, §4.2) on tiny random CLIP / DINOv2 / DINO-ViT
folders saved with save_pretrained, as a user's local copy of openai/clip-vit-base-patch32 or a DINO would be."""

import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from data_tools.make_eval_models import write_clip, write_dinov2
from eval.clip_score import ClipScorer
from eval.identity import (
    ImageEmbedder,
    PixelTransform,
    frame_indices,
    identity_similarity,
    pooled_output,
    subject_consistency,
    temporal_flickering,
)
from tests.helpers import randomize_

PROMPTS = ["a red fox jumps over the lazy dog", "rain over a neon city at night"]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory):
    return write_dinov2(tmp_path_factory.mktemp("dinov2"))


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("dino_vit")
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=37)
    randomize_(ViTModel(config, add_pooling_layer=False)).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)  # squash to 32x32, bilinear
    return folder


@pytest.fixture(scope="module")
def scorer(clip_folder):
    return ClipScorer(clip_folder)


@pytest.fixture(params=["clip", "dinov2", "vit"])
def embedder(request):
    return ImageEmbedder(request.getfixturevalue(f"{request.param}_folder"))


def videos(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def smooth_image(height, width):
    """uint8 [H, W, 3] with only low frequencies, so PIL's and torch's resamplers agree closely."""
    y, x = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    rgb = np.stack([np.sin(3 * x + 1), np.cos(2 * y), np.sin(2 * x + 3 * y)], axis=-1)
    return np.round((rgb + 1) * 127.5).astype(np.uint8)


def as_pixels(image_uint8):
    """[H, W, 3] uint8 -> [1, 3, H, W] in [-1, 1], the way a decoded frame enters the metrics."""
    return torch.from_numpy(image_uint8).permute(2, 0, 1)[None].float() / 127.5 - 1


# ------------------------------------------------------------------------------------------ preprocessing

@pytest.mark.parametrize("name", ["clip", "dinov2", "vit"])
def test_tensor_preprocessing_matches_the_folders_image_processor(name, request):
    from transformers import AutoImageProcessor

    folder = request.getfixturevalue(f"{name}_folder")
    transform = PixelTransform.from_folder(folder)
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    # short side already at the target size: only the crop offsets and normalisation act (exact)
    image = smooth_image(*transform.resized_hw(32, 44)) if name != "vit" else smooth_image(32, 32)
    expected = processor(images=[image], return_tensors="pt")["pixel_values"]
    assert torch.allclose(transform(as_pixels(image)), expected, atol=1e-5)
    # with a real resize: torch's antialiased resampler vs PIL's, which also rounds to uint8; they agree to
    # about one uint8 level (1 / 255 / std ~ 0.017 in normalised units)
    image = smooth_image(57, 83)
    expected = processor(images=[image], return_tensors="pt")["pixel_values"]
    got = transform(as_pixels(image))
    assert got.shape == expected.shape == (1, 3, 32, 32)
    assert (got - expected).abs().max() < 0.03


def test_frame_indices_are_uniform_and_cover_the_ends():
    assert frame_indices(81, 8) == [0, 11, 22, 34, 45, 57, 68, 80]  # np.linspace(0, 80, 8, dtype=int)
    assert frame_indices(81, 8) == np.linspace(0, 80, 8, dtype=int).tolist()
    assert frame_indices(5, 8) == frame_indices(5, None) == [0, 1, 2, 3, 4]  # never a repeated frame
    assert frame_indices(5, 1) == [0]
    with pytest.raises(ValueError, match="frames"):
        frame_indices(5, 0)


# -------------------------------------------------------------------------------------------- CLIP score

def test_clip_score_is_the_models_own_cosine(scorer):
    vids = videos(2, 3, 5, 40, 48)
    got = scorer.score(vids, PROMPTS, frames=3)
    model, tokenizer = scorer.model, scorer.tokenizer
    expected = []
    with torch.no_grad():
        for video, prompt in zip(vids, PROMPTS, strict=True):
            pixels = scorer.images.transform(video[:, [0, 2, 4]].transpose(0, 1))  # frames 0, 2, 4 of 5
            image = pooled_output(model.get_image_features(pixel_values=pixels))
            text = pooled_output(model.get_text_features(**tokenizer([prompt], return_tensors="pt")))
            expected.append(F.cosine_similarity(image, text).mean())
    assert got.shape == (2,) and got.dtype == torch.float32
    assert torch.allclose(got, torch.stack(expected), atol=1e-5)


def test_clip_score_ignores_frame_order(scorer):
    vids = videos(2, 3, 5, 32, 32)
    base = scorer.score(vids, PROMPTS, frames=8)
    assert torch.allclose(scorer.score(vids.flip(2), PROMPTS, frames=8), base, atol=1e-6)
    assert torch.allclose(scorer.score(vids[:, :, [3, 0, 4, 1, 2]], PROMPTS, frames=8), base, atol=1e-6)


def test_clip_score_is_a_cosine_that_depends_on_the_prompt(scorer):
    vids = videos(2, 3, 5, 32, 32)
    score = scorer.score(vids, PROMPTS)
    swapped = scorer.score(vids, PROMPTS[::-1])
    assert ((score >= -1) & (score <= 1)).all()
    assert (score - swapped).abs().min() > 1e-4
    # one frame repeated scores the same as that frame alone (eval.md §7)
    still = vids[:, :, :1].expand(-1, -1, 4, -1, -1)
    assert torch.allclose(scorer.score(still, PROMPTS), scorer.score(vids[:, :, :1], PROMPTS), atol=1e-6)


def test_clip_score_truncates_long_prompts(scorer, caplog):
    long_prompt = "a very long prompt " * 10  # > 40 tokens of the tiny model
    score = scorer.score(videos(1, 3, 2, 32, 32), [long_prompt])
    assert torch.isfinite(score).all()
    assert "truncated" in caplog.text


def test_clip_score_errors_name_the_problem(scorer, clip_folder, dinov2_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ClipScorer(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="model_type 'clip'"):
        ClipScorer(dinov2_folder)
    no_tokenizer = tmp_path / "clip_no_tokenizer"
    shutil.copytree(clip_folder, no_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (no_tokenizer / name).unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        ClipScorer(no_tokenizer)
    with pytest.raises(ValueError, match="one per video"):
        scorer.score(videos(2, 3, 5, 32, 32), PROMPTS[:1])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        scorer.score((videos(2, 3, 5, 32, 32) + 1) * 127.5, PROMPTS)  # 0-255 pixels
    with pytest.raises(ValueError, match=r"\[B, 3, F, H, W\]"):
        scorer.score(videos(2, 5, 3, 32, 32), PROMPTS)


def test_missing_weights_are_an_error_not_a_random_init(clip_folder, tmp_path):
    broken = tmp_path / "clip_partial"
    shutil.copytree(clip_folder, broken)
    state = load_file(broken / "model.safetensors")
    del state["visual_projection.weight"]
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="visual_projection.weight"):
        ImageEmbedder(broken)


# ------------------------------------------------------------------------------------- identity metrics

def test_embeddings_are_unit_norm_per_image(embedder):
    out = embedder(videos(5, 3, 40, 48))
    assert out.dtype == torch.float32 and out.ndim == 2 and out.shape[0] == 5
    assert torch.allclose(out.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert embedder.describe()["model_type"] == embedder.kind


def test_identity_of_the_reference_repeated_is_one(embedder):
    references = videos(2, 3, 40, 48, seed=1)
    same = references[:, :, None].expand(-1, -1, 5, -1, -1)
    other = videos(2, 3, 5, 40, 48, seed=2)
    sim_same = identity_similarity(same, references, embedder=embedder)
    sim_other = identity_similarity(other, references, embedder=embedder)
    assert sim_same.shape == (2,) and sim_same.dtype == torch.float32
    assert torch.allclose(sim_same, torch.ones(2), atol=1e-5)
    assert (sim_other < 1 - 1e-3).all() and (sim_other >= -1).all()
    # one shared reference broadcasts over the batch; reference size may differ from the frames'
    shared = identity_similarity(same, references[:1], embedder=embedder)
    assert math.isclose(shared[0].item(), 1.0, abs_tol=1e-5) and shared[1] < 1 - 1e-3
    assert identity_similarity(other, videos(1, 3, 57, 83), embedder=embedder).shape == (2,)


def test_identity_similarity_rejects_mismatched_references(embedder):
    with pytest.raises(ValueError, match="references"):
        identity_similarity(videos(2, 3, 5, 32, 32), videos(3, 3, 32, 32), embedder=embedder)


def test_subject_consistency_of_a_static_video_is_one(embedder):
    still = videos(2, 3, 1, 32, 32).expand(-1, -1, 5, -1, -1)
    assert torch.allclose(subject_consistency(still, embedder=embedder), torch.ones(2), atol=1e-5)
    moving = subject_consistency(videos(2, 3, 5, 32, 32), embedder=embedder)
    assert moving.shape == (2,) and ((moving >= 0) & (moving < 1 - 1e-3)).all()


def test_subject_consistency_follows_the_vbench_formula(embedder):
    vids = videos(1, 3, 4, 32, 32)
    f = embedder(vids[0].transpose(0, 1))  # [4, D] unit-norm
    expected = sum((max(0.0, (f[i] @ f[i - 1]).item()) + max(0.0, (f[i] @ f[0]).item())) / 2
                   for i in range(1, 4)) / 3
    assert math.isclose(subject_consistency(vids, embedder=embedder).item(), expected, abs_tol=1e-5)
    with pytest.raises(ValueError, match=">= 2 frames"):
        subject_consistency(vids[:, :, :1], embedder=embedder)


def test_temporal_flickering_known_values():
    still = videos(2, 3, 1, 32, 32).expand(-1, -1, 5, -1, -1)
    assert torch.equal(temporal_flickering(still), torch.ones(2))
    # constant frames at 0, 255, 0 (uint8): MAE 255 per pair -> (255 - 255) / 255 = 0
    blink = torch.tensor([-1.0, 1.0, -1.0]).view(1, 1, 3, 1, 1).expand(1, 3, 3, 8, 8)
    assert torch.allclose(temporal_flickering(blink), torch.zeros(1))
    # frames 0, 51 (uint8): MAE 51 -> (255 - 51) / 255 = 0.8
    step = torch.tensor([0.0, 51.0]).view(1, 1, 2, 1, 1).expand(1, 3, 2, 8, 8) / 127.5 - 1
    out = temporal_flickering(step)
    assert out.shape == (1,) and out.dtype == torch.float32
    assert math.isclose(out.item(), 0.8, abs_tol=1e-6)


def test_missing_or_foreign_folder_is_a_clear_error(vit_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_dino"):
        ImageEmbedder(tmp_path / "missing_dino")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="model_type 'bert'"):
        ImageEmbedder(tmp_path / "bert")
    no_processor = tmp_path / "vit_no_processor"
    shutil.copytree(vit_folder, no_processor)
    (no_processor / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="image-processor config"):
        ImageEmbedder(no_processor)
