"""Latent caching with --audio, with MelSpace (the weight-free audio codec) and tiny video encoders in the official
file formats: each cached sample holds the audio latents of exactly its clip's sound beside its video latents, a
sample without sound holds zeros flagged has_audio False, bad sound is skipped, and the DataModule trains from
them with data.audio."""

import json
import random

import numpy as np
import pytest
import torch

from data_tools.cache_latents import cache_latents, main
from tests.data_helpers import encode_sound_video, frame_colour, sound_file, two_tones, write_shard
from tests.helpers import write_official_folder
from wan_train.data.audio import SAMPLE_RATE
from wan_train.data.buckets import BucketTable
from wan_train.data.datamodule import DataConfig, WanDataModule
from wan_train.data.metadata import ClipMeta
from wan_train.data.shards import read_samples
from wan_train.data.video import VideoSource
from wan_train.models import CheckpointError, MelSpace
from wan_train.models.audio import load_audio_space

FPS = 8.0
TABLE = BucketTable(resolutions=("144p",), durations=(0.5,), fps=FPS)  # 5 frames: 10,000 samples, 19 latents


def sample(key: str, video: bytes, **members: bytes) -> tuple[str, dict[str, bytes]]:
    meta = ClipMeta(captions=(f"clip {key}",), fps=12.0, num_frames=24, width=96, height=64, duration=2.0,
                    source=key)
    return key, {"mp4": video, "json": json.dumps(meta.to_json()).encode(), **members}


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    frames = np.stack([np.full((64, 96, 3), frame_colour(i), np.uint8) for i in range(24)])
    silent = encode_sound_video(frames, None, fps=12.0, rate=SAMPLE_RATE)
    track = encode_sound_video(frames, two_tones(2.0, rate=44100, change=1.0), fps=12.0, rate=44100)
    wav = sound_file(two_tones(2.0, rate=SAMPLE_RATE, change=0.9), rate=SAMPLE_RATE)
    samples = [sample("000000", track), sample("000001", silent, wav=wav), sample("000002", silent),
               sample("000003", silent, wav=random.Random(3).randbytes(2000))]
    return [str(write_shard(tmp_path_factory.mktemp("videos") / "shard-000000.tar", samples))]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("Wan-tiny")
    write_official_folder(root)
    return root


@pytest.fixture(scope="module")
def cached(shard, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("latents")
    return out, cache_latents(shard, out, model=model, table=TABLE, save_dtype=torch.float32, audio="mel")


def batches(out, **options):
    config = DataConfig(**{"shards": [str(out)], "kind": "latents", "batch_size": 1, "num_workers": 0,
                           "shuffle_buffer": 1, "epochs": 1, "resolutions": ["144p"], "durations": [0.5], "fps": FPS,
                           "caption_dropout": 0.0, "audio": True, **options})
    return list(WanDataModule(config).train_dataloader(rank=0, world_size=1))


def test_cached_audio_latents_are_the_codec_of_each_clips_sound(shard, cached):
    out, result = cached
    assert (result["samples"], result["samples_without_audio"]) == (3, 1)
    assert result["skipped_by_reason"] == {"bad_audio": 1}
    codec, source = MelSpace(), VideoSource(TABLE, clip_start="centre", crop="centre", audio_rate=SAMPLE_RATE)
    online = {}
    for raw in read_samples(shard):
        if raw["__key__"] != "000003":
            item = source.load(source.plan(raw, rng=random.Random(0)), rng=random.Random(0))
            assert item["audio"].shape == ((10_000,) if item["has_audio"] else (0,))
            online[raw["__key__"]] = codec.encode(item["audio"][None])[0] if item["has_audio"] else None
    seen = {}
    for batch in batches(out):
        key, latents, has = batch["key"][0], batch["audio_latents"][0], bool(batch["has_audio"][0])
        assert latents.shape == (20, 19) and batch["has_audio"].dtype == torch.bool
        seen[key] = has
        if has:
            torch.testing.assert_close(latents, online[key])
        else:
            assert not latents.any()  # zeros, flagged: never the codec of invented silence
        assert batch["latents"].shape[1:] == (16, 2, 20, 28)
    assert seen == {"000000": True, "000001": True, "000002": False}
    stats = json.loads((out / ".shard-000000.tar.json").read_text())
    assert stats["audio"] == "mel" and stats["without_audio"] == 1


def test_data_audio_on_latents_cached_without_sound_skips_them(shard, model, tmp_path):
    cache_latents(shard, tmp_path, model=model, table=TABLE, save_dtype=torch.float32)
    loaded = batches(tmp_path)
    assert loaded == []  # every sample lacks audio_latents
    plain = batches(tmp_path, audio=False)
    assert len(plain) == 4 and all("audio_latents" not in b and "has_audio" not in b for b in plain)
    # caching again with --audio replaces the shards cached without it
    again = cache_latents(shard, tmp_path, model=model, table=TABLE, save_dtype=torch.float32, audio="mel")
    assert again["shards_kept"] == 0 and len(batches(tmp_path)) == 3
    assert cache_latents(shard, tmp_path, model=model, table=TABLE, save_dtype=torch.float32,
                         audio="mel")["shards_kept"] == 1


def test_the_audio_model_is_mel_or_a_folder_of_mmaudios_files(tmp_path, capsys):
    assert isinstance(load_audio_space("mel", device=torch.device("cpu")), MelSpace)
    with pytest.raises(CheckpointError, match=r"not an audio autoencoder: expected 'mel' or a folder with "
                                              r"v1-16.pth and best_netG.pt"):
        load_audio_space(str(tmp_path), device=torch.device("cpu"))
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--audio mel|DIR" in capsys.readouterr().out
