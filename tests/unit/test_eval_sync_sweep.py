"""The sync metrics in eval sweeps: `metrics.sync=true` and `metrics.syncnet=FILE` score each video of a cell from the
frames and the .wav generate.py writes beside it (a stand-in for the generator yields the synthetic clips of
test_eval_sync.py as generate_videos would, so the cell, the .wav round trip and the report run for real); the
injected offset survives the 16-bit .wav; cells without sound skip them with a note; results.csv gets the columns;
sweeps that leave them off keep their cells' ids."""

import csv
import json

import pytest
import torch

from data_tools.make_eval_models import write_syncnet
from eval import cell as cell_module
from eval.cell import cell_identity, run_cell
from eval.config import compose_sweep_config
from eval.report import write_results
from eval.scorers import AVSync, read_sound
from tests.unit.test_eval_sync import RATE, synthetic
from wan_train.inference.outputs import SavedVideo, encode_wav

SETTINGS = {"solver": "unipc", "steps": 1, "shift": 5.0, "guidance_scale": 4.0, "guidance_scale_2": None,
            "width": 32, "height": 32, "num_frames": 100, "audio_guidance_scale": 3.0, "slg_layer": 11,
            "audio_latent_length": None}


def stand_in(clips, *, fps, task="t2av"):
    """generate_videos for `clips` [(video, sound or None)]: the files a cell reads (JSON, .wav) and the videos."""

    def generate_videos(cfg):
        out = cell_module.Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        for i, (video, sound) in enumerate(clips):
            path = out.with_name(f"video_{i:03d}.mp4")
            path.write_bytes(b"")  # the picture is passed as a tensor, as generate_videos does
            meta = {"prompt": "p", "seed": i, "task": task, "settings": {**SETTINGS, "fps": fps},
                    "checkpoint": {"path": cfg.ckpt}, "seconds_per_video": 0.1}
            path.with_suffix(".json").write_text(json.dumps(meta))
            wav = None
            if sound is not None:
                wav = path.with_suffix(".wav")
                wav.write_bytes(encode_wav(sound[None].numpy(), RATE))
            yield SavedVideo(path, None, path.with_suffix(".json"), wav), video

    return generate_videos


def sweep_cell(tmp_path, *overrides):
    return compose_sweep_config([f"ckpt={tmp_path / 'ckpt'}", "prompt=p", f"out={tmp_path / 'sweep'}",
                                 "wandb.enabled=false", *overrides])


def test_a_cell_with_sound_reports_the_sync_metrics_from_its_wav(tmp_path, monkeypatch):
    clips = [synthetic(seed, shift=2)[:2] for seed in (0, 1)]
    monkeypatch.setattr(cell_module, "generate_videos", stand_in(clips, fps=25))
    result = run_cell(sweep_cell(tmp_path, "metrics.sync=true", "task=t2av"))
    names = {"av_offset", "av_offset_confidence", "onset_precision", "onset_recall", "onset_f1", "av_align"}
    assert names <= set(result["metrics"]) and "notes" not in result
    for video in result["videos"]:
        assert video["av_offset"] == 2.0 and video["av_offset_confidence"] > 3
        assert video["onset_f1"] < 0.3 and video["av_align"] < 0.3  # 2 frames late: out of their windows
        assert video["sound"].endswith(".wav")
    assert result["models"]["av_offset"]["unit"] == "frames, positive = sound late"
    csv_path, _ = write_results(tmp_path / "sweep", [result])
    row = next(csv.DictReader(csv_path.open()))
    assert float(row["av_offset"]) == 2.0 and float(row["av_align"]) < 0.3 and row["audio_guidance_scale"] == "3.0"


def test_syncnet_scores_come_from_the_weight_file(tmp_path, monkeypatch):
    weights = write_syncnet(tmp_path / "syncnet_v2.model")
    video, sound, _ = synthetic(0, frames=10, events=2)
    monkeypatch.setattr(cell_module, "generate_videos", stand_in([(video, sound)], fps=25))
    result = run_cell(sweep_cell(tmp_path, f"metrics.syncnet={weights}", "task=t2av"))
    assert {"lse_d", "lse_c", "syncnet_offset"} <= set(result["metrics"]) and "av_offset" not in result["metrics"]
    assert result["metrics"]["lse_c"] >= 0 and -15 <= result["metrics"]["syncnet_offset"] <= 15
    assert result["models"]["lse_d"]["file"] == str(weights) and len(result["models"]["lse_d"]["sha256"]) == 64


def test_a_cell_without_sound_skips_them_with_a_note(tmp_path, monkeypatch):
    video, _, _ = synthetic(0, frames=10, events=2)
    monkeypatch.setattr(cell_module, "generate_videos", stand_in([(video, None)] * 2, fps=16, task="t2v"))
    result = run_cell(sweep_cell(tmp_path, "metrics.sync=true"))
    assert result["notes"] == ["metrics.sync / metrics.syncnet skipped: the videos have no sound (task=t2v)"]
    assert "av_offset" not in result["metrics"] and "temporal_flickering" in result["metrics"]


def test_a_missing_syncnet_file_stops_the_cell_before_generating(tmp_path, monkeypatch):
    def never(cfg):
        raise AssertionError("generated before the metrics were checked")

    monkeypatch.setattr(cell_module, "generate_videos", never)
    with pytest.raises(ValueError, match="nowhere.model: file not found"):
        run_cell(sweep_cell(tmp_path, f"metrics.syncnet={tmp_path / 'nowhere.model'}", "task=t2av"))


def test_cells_that_leave_them_off_keep_their_ids(tmp_path):
    off = cell_identity(sweep_cell(tmp_path))["metrics"]
    assert "sync" not in off and "syncnet" not in off
    on = cell_identity(sweep_cell(tmp_path, "metrics.sync=true"))["metrics"]
    assert on["sync"] is True and "syncnet" not in on
    preset = compose_sweep_config(["metrics=random"]).metrics  # every metric, with make_eval_models' stand-ins
    assert preset.sync is True and preset.syncnet == "models/random/syncnet/syncnet_v2.model"


def test_a_batch_is_its_own_null_and_the_wav_reads_back(tmp_path):
    clips = [synthetic(seed, shift=-1)[:2] for seed in range(3)]
    scores = AVSync()(torch.stack([v for v, _ in clips]), [s for _, s in clips], fps=25, sample_rate=RATE)
    assert scores["av_offset"].tolist() == [-1.0] * 3 and (scores["av_offset_confidence"] > 1).all()
    path = tmp_path / "s.wav"
    path.write_bytes(encode_wav(clips[0][1][None].numpy(), RATE))
    sound, rate = read_sound(path)
    assert rate == RATE and sound.dtype == torch.float32
    torch.testing.assert_close(sound, clips[0][1], atol=1 / 32767, rtol=0)
