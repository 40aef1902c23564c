"""recipe=av end to end on the CPU (the zero-download twin-tower model on the make_av_demo flashes and beeps):
both towers train and report their own losses, the export is an OviDiT folder, a run stopped and resumed
reproduces the uninterrupted run exactly; av_lora adapts the chosen tower and the fusion projections of that
export; model.audio gives a trained Wan DiT a voice whose video output is the base's until the fusion trains."""

import csv
import json

import av
import pytest
import torch
from safetensors import safe_open

from data_tools.make_av_demo import make_av_demo
from data_tools.make_demo import make_demo
from wan_train.config import compose_config
from wan_train.config.validate import ConfigError, validate
from wan_train.models import OviDiT, load_ovi_dit
from wan_train.training.run import run
from tests.ovi_helpers import write_ovi_folder


@pytest.fixture(scope="module")
def av_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("av_demo")
    make_av_demo(root / "train", num_clips=8, seed=0, shard_size=4)
    make_av_demo(root / "val", num_clips=2, seed=1, shard_size=2)
    return root


def config(av_demo, run_dir, *, model: str = "quickstart_av", recipe: str = "av", **overrides):
    values = {"model": model, "data": "av_demo", "trainer": "cpu", "data.shards": f"[{av_demo / 'train'}]",
              "data.val_shards": f"[{av_demo / 'val'}]", "run_dir": str(run_dir),
              "trainer.enable_progress_bar": "false", "trainer.val_every_n_steps": "2",
              "trainer.checkpoint_every_n_steps": "2", "trainer.log_every_n_steps": "1", "trainer.max_steps": "2",
              "flow.held_out_samples": "2", "flow.held_out_quantiles": "2", "logger.wandb": "false",
              "optim.lr": "1e-3"}
    values.update(overrides)
    return compose_config([f"recipe={recipe}", *(f"{k}={v}" for k, v in values.items())])


def rows(run_dir) -> list[dict]:
    out = []
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with open(path) as file:
            out += list(csv.DictReader(file))
    return out


def losses(run_dir, key: str = "train/loss") -> dict[int, float]:
    return {int(r["step"]): float(r[key]) for r in rows(run_dir) if r.get(key)}


def test_an_av_run_trains_both_towers_and_resumes_exactly(av_demo, tmp_path):
    metrics = run(config(av_demo, tmp_path / "full", **{
        "trainer.max_steps": "4", "validation.every_n_steps": "4", "validation.steps": "2", "validation.preview": "none",
        "validation.prompts": "['a red circle flashes once on a black background <AUDCAP>a short low beep<ENDAUDCAP>']"}))
    for key in ("val/loss", "val/loss_video", "val/loss_audio", "val/loss_video_first", "val/loss_audio_first"):
        assert metrics[key] == metrics[key], key  # reported, not NaN
    assert metrics["val/loss_audio"] < metrics["val/loss_audio_first"]  # the audio tower learns
    assert sorted(losses(tmp_path / "full", "train/loss_audio")) == [0, 1, 2, 3]
    header = set(rows(tmp_path / "full")[0])
    assert {"val/loss_video_q0", "val/loss_audio_q1", "train/loss_video"} <= header
    # the validation video has its sound: an AAC track in the mp4 and a .wav beside it
    sample = tmp_path / "full" / "samples" / "step_0000004" / "prompt_00.mp4"
    with av.open(str(sample)) as container:
        assert [s.type for s in container.streams] == ["video", "audio"]
    assert sample.with_suffix(".wav").is_file()
    assert json.loads(sample.with_suffix(".json").read_text())["sound"]["sample_rate"] == 16000
    dit = load_ovi_dit(tmp_path / "full" / "dit")
    assert isinstance(dit, OviDiT) and dit.ovi_config.audio.in_dim == 20 and dit.config.in_dim == 12
    # stopped after step 2 and resumed: the same losses and weights, bit for bit
    run(config(av_demo, tmp_path / "resumed"))
    resumed = run(config(av_demo, tmp_path / "resumed", **{"trainer.max_steps": "4", "resume": "auto"}))
    assert resumed["resumed_from"].endswith("step=0000002.ckpt")
    assert losses(tmp_path / "resumed") == losses(tmp_path / "full")
    assert losses(tmp_path / "resumed", "train/loss_audio") == losses(tmp_path / "full", "train/loss_audio")
    again = load_ovi_dit(tmp_path / "resumed" / "dit")
    assert all(torch.equal(a, b) for a, b in zip(dit.state_dict().values(), again.state_dict().values(), strict=True))

    # av_lora on that export: the audio tower's blocks and both towers' fusion projections, nothing else
    lora = run(config(av_demo, tmp_path / "lora", recipe="av_lora", **{
        "model.checkpoint": str(tmp_path / "full" / "dit"), "lora.towers": "[audio]", "lora.fusion": "true",
        "lora.rank": "4", "lora.alpha": "4"}))
    assert lora["step"] == 2
    with safe_open(str(tmp_path / "lora" / "adapter" / "adapter_model.safetensors"), "pt") as file:
        assert file.metadata()["wan_train.towers"] == "audio+fusion"
        names = list(file.keys())
    assert names and all(".audio_model." in n or "_fusion." in n for n in names)
    assert any(".video_model." in n and "v_fusion" in n for n in names)


def test_model_audio_gives_a_wan_dit_a_voice_and_leaves_its_video_output_as_it_was(av_demo, tmp_path):
    video = tmp_path / "video_demo"
    make_demo(video, num_clips=4, seed=0, width=256, height=144, frames=17, fps=16.0, shard_size=4)
    base = run(compose_config(["recipe=quickstart", f"data.shards=[{video}]", "data.durations=[1.0]",
                               f"run_dir={tmp_path / 'base'}", "trainer.max_steps=2", "logger.wandb=false",
                               "validation.every_n_steps=null", "trainer.enable_progress_bar=false"]))
    assert base["step"] == 2
    common = {"model.checkpoint": str(tmp_path / "base" / "dit"), "trainer.max_steps": "1",
              "validation.every_n_steps": "null"}
    # the base alone on the av demo's clips (sound read, not trained) and the base given a voice: the same
    # held-out video loss before the first step, to the bit
    alone = run(config(av_demo, tmp_path / "alone", model="quickstart", **common))
    voiced = run(config(av_demo, tmp_path / "voiced", model="quickstart", **common, **{"model.audio": "mel"}))
    assert voiced["val/loss_video_first"] == alone["val/loss_first"]
    twin = load_ovi_dit(tmp_path / "voiced" / "dit")
    assert twin.config.in_dim == 12
    recorded = json.loads((tmp_path / "voiced" / "dit" / "config.json").read_text())
    assert recorded["_class_name"] == "OviDiT" and recorded["audio"]["model_type"] == "t2a"


def test_an_ovi_checkpoint_folder_trains_full_and_with_lora(tmp_path):
    """recipe=av and av_lora on Ovi's own folder layout (a tiny random one: the official DiT file, the Wan2.2 VAE and
    umT5, MMAudio's VAE and vocoder files), on the demo's clips at 192x192 (the Wan2.2 VAE's 32-pixel stride)."""
    make_av_demo(tmp_path / "clips", num_clips=2, seed=0, width=192, height=192, shard_size=2)
    write_ovi_folder(tmp_path / "ovi")
    common = {"model": "ovi_11b", "model.size": "tiny-ovi", "model.checkpoint": str(tmp_path / "ovi"),
              "model.activation_checkpointing": "false", "data.shards": f"[{tmp_path / 'clips'}]",
              "data.val_shards": "[]", "flow.held_out_samples": "1", "data.spatial_stride": "32"}
    full = run(config(tmp_path, tmp_path / "full", **common))
    assert full["step"] == 2 and full["val/loss_audio"] == full["val/loss_audio"]
    assert load_ovi_dit(tmp_path / "full" / "dit").ovi_config.video.model_type == "ti2v"
    lora = run(config(tmp_path, tmp_path / "lora", recipe="av_lora", **common, **{"lora.rank": "2", "lora.alpha": "2"}))
    assert lora["step"] == 2
    with safe_open(str(tmp_path / "lora" / "adapter" / "adapter_model.safetensors"), "pt") as file:
        assert file.metadata()["wan_train.towers"] == "video,audio+fusion"


def test_reference_voices_from_elsewhere_in_the_source_train_the_voice_slot(tmp_path):
    """data.voices on 4-second sources cut into 1-second clips: each batch carries a 1-second voice from another
    moment of the clip's own video, which reaches the audio tower's reference-voice slot: it trains (from zero)."""
    make_av_demo(tmp_path / "long", num_clips=4, seed=0, frames=65, shard_size=4, scene="screen")
    run_dir = tmp_path / "voices"
    common = {"data.shards": f"[{tmp_path / 'long'}]", "data.val_shards": "[]", "data.durations": "[1.0]",
              "data.voice_seconds": "1.0", "data.voice_dropout": "0.0", "flow.held_out_samples": "1",
              "validation.every_n_steps": "null"}
    metrics = run(config(tmp_path, run_dir, **common, **{"data.voices": "1", "model.audio_references": "1"}))
    assert metrics["step"] == 2
    dit = load_ovi_dit(run_dir / "dit")
    assert dit.ovi_config.audio.references == 1
    assert dit.audio_model.reference_embedding.abs().sum() > 0  # zero until a voice reached it
    with pytest.raises(ConfigError, match="data.voices=2 with model.audio_references=1: each voice fills"):
        validate(config(tmp_path, run_dir, **common, **{"data.voices": "2", "model.audio_references": "1"}))
