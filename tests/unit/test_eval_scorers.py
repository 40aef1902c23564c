"""The per-video scorers shared by sweeps and training (eval.scorers), on tiny random CLIP / DINOv2 folders."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from data_tools.make_eval_models import write_clip, write_dinov2
from eval.config import MetricsConfig
from eval.scorers import ClipScore, Consistency, Flickering, Identity, build_scorers, score_videos


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("scorers")
    return {"clip": write_clip(root / "clip"), "dinov2": write_dinov2(root / "dinov2")}


def static_video(image_uint8: np.ndarray, frames: int = 5) -> torch.Tensor:
    frame = torch.from_numpy(image_uint8).permute(2, 0, 1).float() / 127.5 - 1
    return frame[None, :, None].expand(1, 3, frames, *frame.shape[1:]).contiguous()


def test_identity_of_a_video_showing_the_reference_is_one(folders, tmp_path):
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    other = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "ref.png")
    Image.fromarray(other).save(tmp_path / "other.png")
    same = Identity(str(folders["dinov2"]), references=[str(tmp_path / "ref.png")], device="cpu")
    assert same.name == "dino_i"
    assert same(static_video(picture), ["x"])["dino_i"].item() == pytest.approx(1.0, abs=1e-5)
    both = Identity(str(folders["clip"]), references=[str(tmp_path / "ref.png"), str(tmp_path / "other.png")],
                    device="cpu")
    score = both(static_video(picture), ["x"])["clip_i"].item()
    assert both.name == "clip_i" and score < 1 - 1e-4  # the mean over both references


def test_consistency_is_named_by_its_backbone_and_scores_have_one_value_per_video(folders):
    videos = torch.rand(3, 3, 5, 32, 48) * 2 - 1
    scorers = [ClipScore(str(folders["clip"]), device="cpu"), Consistency(str(folders["dinov2"]), device="cpu"),
               Consistency(str(folders["clip"]), device="cpu"), Flickering()]
    scores = score_videos(scorers, videos, ["a", "b", "c"])
    assert set(scores) == {"clip_score", "subject_consistency", "background_consistency", "temporal_flickering"}
    assert all(v.shape == (3,) and v.dtype == torch.float32 for v in scores.values())
    with pytest.raises(ValueError, match="two scorers both report 'temporal_flickering'"):
        score_videos([Flickering(), Flickering()], videos, ["a", "b", "c"])


def test_build_scorers_follows_the_metrics_config(folders):
    def metrics(**values):
        return OmegaConf.merge(OmegaConf.structured(MetricsConfig), values)

    assert [type(s).__name__ for s in build_scorers(metrics())] == ["Flickering"]
    built = build_scorers(metrics(clip=str(folders["clip"]), image_model=str(folders["dinov2"])))
    assert [type(s).__name__ for s in built] == ["Flickering", "ClipScore", "Consistency"]
    with pytest.raises(ValueError, match="metrics.references needs metrics.image_model"):
        build_scorers(metrics(references=["ref.png"]))
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        build_scorers(metrics(image_model=str(folders["dinov2"]), references=["nowhere.png"]))
