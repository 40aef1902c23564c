"""Latent caching with tiny encoders in the official file formats: the cached samples are exactly what online
encoding of the same clips gives, the DataModule trains from them, and caching resumes and splits by shard."""

import random
import subprocess
import sys

import pytest
import torch

from data_tools.cache_latents import cache_latents
from tests.data_helpers import video_sample, write_shard
from tests.helpers import write_official_folder
from wan_train.data.buckets import BucketTable
from wan_train.data.datamodule import DataConfig, WanDataModule
from wan_train.data.decode import video_to_model
from wan_train.data.shards import read_samples
from wan_train.data.video import VideoSource
from wan_train.inference import i2v_mask
from wan_train.models import load_wan

TABLE = BucketTable(resolutions=("144p",), durations=(0.5,), fps=8.0)


@pytest.fixture(scope="module")
def video_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    samples = [video_sample(f"{i:06d}", frames=12 + i, width=96 if i % 2 else 64, height=64 if i % 2 else 96,
                            fps=12.0, captions=[f"clip number {i}", "a short clip"][: 1 + i % 2]) for i in range(6)]
    samples[4][1]["mp4"] = random.Random(4).randbytes(1500)
    return [str(write_shard(root / f"shard-{s:06d}.tar", samples[3 * s:3 * s + 3])) for s in range(2)]


@pytest.fixture(scope="module")
def t2v_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("Wan-tiny")
    write_official_folder(root)
    return root


@pytest.fixture(scope="module")
def cached(video_shards, t2v_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("latents")
    result = cache_latents(video_shards, out, model=t2v_model, table=TABLE, save_dtype=torch.float32)
    return out, result


def latent_batches(out, **kw):
    options = dict(shards=[str(out)], kind="latents", batch_size=1, num_workers=0, shuffle_buffer=1, epochs=1,
                   resolutions=["144p"], durations=[0.5], fps=8.0, caption_dropout=0.0)
    options.update(kw)
    return list(WanDataModule(DataConfig(**options)).train_dataloader(rank=0, world_size=1))


def test_cached_samples_equal_online_encoding_of_the_same_clips(video_shards, t2v_model, cached):
    out, result = cached
    assert result["samples"] == 5 and result["skipped_by_reason"] == {"undecodable": 1}
    wan = load_wan(t2v_model, components=("vae", "text_encoder"))
    source = VideoSource(TABLE, clip_start="centre", crop="centre")
    online = {}
    for raw in read_samples(video_shards, on_error=print):
        if raw["__key__"] == "000004":
            continue
        rng = random.Random(0)
        planned = source.plan(raw, rng=rng)
        video = video_to_model(source.load(planned, rng=rng)["video"][None])
        context, lengths = wan.text_encoder.encode(list(planned.choice["meta"].captions))
        online[raw["__key__"]] = (wan.vae.encode(video)[0], context, lengths)
    batches = latent_batches(out)
    assert sorted(k for b in batches for k in b["key"]) == sorted(online)
    for batch in batches:
        latents, context, lengths = online[batch["key"][0]]
        assert torch.equal(batch["latents"][0], latents)
        prompt_index = [i for i in range(len(lengths))
                        if torch.equal(batch["context"][0], context[i, : lengths[i]])]
        assert prompt_index and batch["context_lengths"][0] == lengths[prompt_index[0]]


def test_caption_dropout_on_latents_uses_the_cached_empty_prompt(t2v_model, cached):
    out, _ = cached
    wan = load_wan(t2v_model, components=("text_encoder",))
    empty, length = wan.text_encoder.encode([""])
    for batch in latent_batches(out, caption_dropout=1.0):
        assert batch["prompt"] == [""]
        assert torch.equal(batch["context"][0], empty[0, : length[0]])


def test_latent_batches_are_single_bucket_with_padded_contexts(cached):
    out, _ = cached
    for batch in latent_batches(out, batch_size=2, epochs=1):
        b, c, t, h, w = batch["latents"].shape
        assert c == 16 and t == 2 and {(h, w)} <= {(20, 28), (28, 20)}  # 224x160 / 160x224 at VAE stride 8
        n = batch["context_lengths"]
        assert batch["context"].shape[:2] == (b, n.max())
        for i in range(b):
            assert batch["context"][i, n[i]:].abs().sum() == 0


def test_rerun_keeps_finished_shards_and_rebuilds_missing_ones(video_shards, t2v_model, cached):
    out, _ = cached
    first = out / "shard-000000.tar"
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    mtime = first.stat().st_mtime_ns
    again = cache_latents(video_shards, out, model=t2v_model, table=TABLE, save_dtype=torch.float32)
    assert again["shards_kept"] == 2 and first.stat().st_mtime_ns == mtime
    first.unlink()
    cache_latents(video_shards, out, model=t2v_model, table=TABLE, save_dtype=torch.float32)
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == before


def test_ranks_split_the_shards_and_together_write_the_same_output(video_shards, t2v_model, cached, tmp_path):
    out, _ = cached
    for rank in range(2):
        cache_latents(video_shards, tmp_path, model=t2v_model, table=TABLE, save_dtype=torch.float32, rank=rank,
                      world_size=2)
    for name in ("shard-000000.tar", "shard-000001.tar", "empty_prompt.safetensors"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


def test_i2v_caching_adds_the_conditioning_latent_and_clip_features(video_shards, tmp_path):
    model = tmp_path / "Wan-tiny-i2v"
    model.mkdir()
    write_official_folder(model, "tiny-i2v")
    cache_latents(video_shards[:1], tmp_path / "out", model=model, table=TABLE, task="i2v",
                  save_dtype=torch.float32)
    batch = latent_batches(tmp_path / "out")[0]
    y, latents = batch["y"][0], batch["latents"][0]
    assert y.shape == (20, *latents.shape[1:])
    assert torch.equal(y[:4], i2v_mask(5, *latents.shape[2:], temporal_compression=4))
    assert y[:4, 0].eq(1).all() and y[:4, 1:].eq(0).all()  # frame 0 given, the rest generated
    assert batch["clip_fea"].shape[0] == 1 and batch["clip_fea"].shape[-1] == 1280


def test_help_runs():
    out = subprocess.run([sys.executable, "-m", "data_tools.cache_latents", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--num-processes" in out.stdout
