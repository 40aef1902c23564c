"""generate.py with sound, end to end on the CPU, from a tiny random Ovi checkpoint folder in the official layout
(tests/ovi_helpers.py): task=t2av writes an mp4 whose AAC track PyAV reads back at 16 kHz and as long as the
picture (within one frame), a .wav of the same sound and the sound's settings; the same seed gives the same
files; task=ti2av takes a first frame (test_av_generation.py checks it is kept) and is marked; an eval sweep keeps
each cell's sound and puts the mp4s, sound included, in its W&B tables (wandb.Video keeps a file as it is); a malformed speech tag is one clear line."""

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from tests.ovi_helpers import write_ovi_folder

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "A man at a desk says <S>We ship on Friday.<E> <AUDCAP>Calm male voice, keyboard clicks.<ENDAUDCAP>"
FRAMES, FPS = 17, 16


@pytest.fixture(scope="module")
def ovi(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt") / "Ovi-checkpoints"
    write_ovi_folder(root)
    return root


def generate(ovi, out, *args):
    return subprocess.run([sys.executable, "generate.py", f"ckpt={ovi}", f"prompt={PROMPT}", f"out={out}", "steps=2",
                           "width=64", "height=64", f"num_frames={FRAMES}", f"fps={FPS}", "seed=4", *args],
                          cwd=ROOT, capture_output=True, text=True)


def streams(path):
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        return (video.frames, float(video.duration * video.time_base), audio.codec_context.name, audio.rate,
                audio.channels, float(audio.duration * audio.time_base))


def test_t2av_writes_video_with_sound_and_the_same_seed_gives_the_same_files(ovi, tmp_path):
    out = tmp_path / "a.mp4"  # the same command twice (the output id hashes the settings, out= included)
    first = generate(ovi, out, "task=t2av", "marking.c2pa.enabled=false")
    assert first.returncode == 0, first.stderr[-3000:]
    files = {suffix: out.with_suffix(suffix).read_bytes() for suffix in (".mp4", ".wav")}
    second = generate(ovi, out, "task=t2av", "marking.c2pa.enabled=false")
    assert second.returncode == 0, second.stderr[-3000:]
    assert files == {suffix: out.with_suffix(suffix).read_bytes() for suffix in (".mp4", ".wav")}

    frames, video_seconds, codec, rate, channels, audio_seconds = streams(tmp_path / "a.mp4")
    assert (frames, codec, rate, channels) == (FRAMES, "aac", 16000, 1)
    assert abs(audio_seconds - video_seconds) <= 1 / FPS
    with av.open(str(tmp_path / "a.wav")) as wav:
        stream = wav.streams.audio[0]
        assert (stream.rate, stream.channels) == (16000, 1)
        samples = np.concatenate([f.to_ndarray() for f in wav.decode(audio=0)], axis=1)
    meta = json.loads((tmp_path / "a.json").read_text())
    assert meta["sound"] == {"sample_rate": 16000, "channels": 1, "samples": samples.shape[1], "codec": "aac",
                             "seconds": round(samples.shape[1] / 16000, 6), "wav": "a.wav"}
    assert abs(samples.shape[1] / 16000 - FRAMES / FPS) <= 1 / FPS
    assert meta["task"] == "t2av" and meta["settings"]["audio_guidance_scale"] == 3.0
    assert meta["checkpoint"]["vocoder"].endswith("MMAudio/ext_weights/best_netG.pt")
    assert np.abs(samples).max() > 0


def test_ti2av_takes_an_image_and_is_marked(ovi, tmp_path):
    image = tmp_path / "first.png"
    Image.fromarray(np.full((64, 64, 3), (200, 30, 30), np.uint8)).save(image)
    result = generate(ovi, tmp_path / "i.mp4", "task=ti2av", f"image={image}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert streams(tmp_path / "i.mp4")[:5] == (FRAMES, streams(tmp_path / "i.mp4")[1], "aac", 16000, 1)
    assert json.loads((tmp_path / "i.json").read_text())["image"] == str(image)
    verify = subprocess.run([sys.executable, "-m", "wan_train.marking", "verify", str(tmp_path / "i.mp4"), "--json"],
                            cwd=ROOT, capture_output=True, text=True)
    report = json.loads(verify.stdout)
    assert report[0]["c2pa"]["state"] in ("Valid", "Trusted"), verify.stdout


@pytest.mark.parametrize("prompt, message", [
    ("He says <S>hello", "<S> at character 8 is not closed by <E>"),
    ("<AUDCAP>rain<E>", "<E> at character 12 cannot close <AUDCAP>"),
])
def test_a_malformed_tag_is_one_clear_line(ovi, tmp_path, prompt, message):
    result = subprocess.run([sys.executable, "generate.py", f"ckpt={ovi}", f"prompt={prompt}", "task=t2av",
                             f"out={tmp_path / 'x.mp4'}", "steps=1", "width=64", "height=64", "num_frames=5"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "x.mp4").exists()


def test_an_eval_sweep_keeps_each_cells_sound(ovi, tmp_path):
    import os

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("A man says <S>hello<E>\n")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DATA_DIR": str(tmp_path / "wb"),
           "WANDB_CACHE_DIR": str(tmp_path / "wb"), "WANDB_CONFIG_DIR": str(tmp_path / "wb")}
    env.pop("WANDB_API_KEY", None)
    result = subprocess.run([sys.executable, "-m", "eval.sweep", "-m", f"ckpt={ovi}", "task=t2av",
                             "audio_guidance_scale=1,2", f"prompts_file={prompts}", "steps=1", "num_frames=9",
                             "width=64", "height=64", "metrics.sync=true", f"out={tmp_path / 'out'}"], cwd=ROOT,
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [c["audio_guidance_scale"] for c in results["cells"]] == [1.0, 2.0]  # a column of the sound's settings
    assert all({"av_offset", "onset_f1", "av_align"} <= set(c) for c in results["cells"])  # metrics.sync's columns
    for cell in results["results"]:
        video = cell["videos"][0]
        folder = tmp_path / "out" / "cells" / cell["id"]
        assert video["sound"].endswith(".wav") and (folder / video["sound"]).is_file()
        assert streams(folder / video["video"])[2:5] == ("aac", 16000, 1)
