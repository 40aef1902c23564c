"""The audio-video demo dataset (data_tools.make_av_demo) on real files: each flash in the decoded pictures and each
beep in the decoded AAC track start together, at the frame the .json records, at the colour's pitch; the pitches
stay apart through MelSpace; the shards (written directly, or by make_shards from the folder layout) come back
through the real loader with data.audio=true and the sound on the flashes; the same seed gives the same bytes."""

import io
import itertools
import json

import av
import numpy as np
import pytest
import torch
import webdataset as wds
from omegaconf import OmegaConf

from data_tools.make_av_demo import (
    AMPLITUDE, FIRST_ONSET, FLASH, MAX_EVENTS, MIN_GAP, PITCHES, av_clip, beep, events_json, last_onset, main,
    make_av_demo, render,
)
from data_tools.make_demo import BACKGROUNDS, COLOURS
from data_tools.make_shards import make_shards
from wan_train.config.compose import compose_config
from wan_train.data.audio import SAMPLE_RATE
from wan_train.data.metadata import AudioMeta, parse_meta
from wan_train.data.shards import expand_urls
from wan_train.data.stream import BucketedStream
from wan_train.inference.av_prompts import prompt_problem
from wan_train.models.audio.mel_space import MelSpace
from wan_train.models.encoders.builtin import builtin_vae

FPS, FRAMES = 16.0, 33
FRAME = 1 / FPS
ARGS = dict(num_clips=6, seed=3, shard_size=4)  # the defaults otherwise: 256x144, 33 frames at 16 fps


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    output = tmp_path_factory.mktemp("av_demo")
    return output, make_av_demo(output, **ARGS)


@pytest.fixture(scope="module")
def samples(demo):
    output, _ = demo
    return list(wds.WebDataset(sorted(str(p) for p in output.glob("*.tar")), shardshuffle=False))


# --- what the decoded files show and sound like, judged independently of the generator's drawing --------------------

def beep_onsets(sound: np.ndarray, *, rate: int = SAMPLE_RATE, level: float = 0.1 * AMPLITUDE) -> list[float]:
    """Seconds where a beep starts: the first sample over `level` after at least 50 ms under it."""
    loud = np.nonzero(np.abs(sound) > level)[0]
    if not loud.size:
        return []
    starts = loud[np.concatenate([[True], np.diff(loud) > 0.05 * rate])]
    return [float(s) / rate for s in starts]


def dominant_pitch(sound: np.ndarray, at: float, *, rate: int = SAMPLE_RATE, seconds: float = 0.1) -> float:
    """Hz of the strongest component of `seconds` of sound from `at` (Hann window, 8x zero-padded FFT)."""
    piece = sound[round(at * rate):round((at + seconds) * rate)]
    spectrum = np.abs(np.fft.rfft(piece * np.hanning(piece.size), 8 * piece.size))
    return float(np.fft.rfftfreq(8 * piece.size, 1 / rate)[np.argmax(spectrum)])


def flash_onsets(frames: np.ndarray, box: list[float]) -> list[int]:
    """Frames where the picture inside `box` (fractions) brightens by more than half its range in one frame (a
    flash lifts a shape from REST of its colour to all of it): frames uint8 [F, H, W, 3]."""
    height, width = frames.shape[1:3]
    x0, y0, x1, y1 = (round(v * s) for v, s in zip(box, (width, height, width, height), strict=True))
    level = frames[:, y0:y1, x0:x1].astype(np.float64).max(axis=-1).mean(axis=(1, 2))
    return [f for f in range(1, len(level)) if level[f] - level[f - 1] > 0.5 * (level.max() - level.min())]


def decode_mp4(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(frames uint8 [F, H, W, 3], mono float32 sound) of an mp4, decoded with PyAV, not the loader."""
    with av.open(io.BytesIO(data)) as container:
        pictures = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(io.BytesIO(data)) as container:
        chunks = [f.to_ndarray().mean(axis=0) for f in container.decode(audio=0)]
    return pictures, np.concatenate(chunks).astype(np.float32)


def check_sync(pictures: np.ndarray, sound: np.ndarray, events: list[dict], *, tolerance: float) -> None:
    """Every recorded event is a flash at its frame in the pictures and a beep at its time (within `tolerance`
    seconds) at its colour's pitch (within 1%) in the sound, and there is no other flash or beep."""
    heard = beep_onsets(sound)
    assert len(heard) == len(events), (heard, events)
    for at, event in zip(heard, events, strict=True):
        assert at == pytest.approx(event["t"], abs=tolerance), (heard, events)
        assert dominant_pitch(sound, at) == pytest.approx(event["pitch"], rel=0.01)
    for box in {tuple(e["box"]) for e in events}:
        assert flash_onsets(pictures, list(box)) == [e["frame"] for e in events if tuple(e["box"]) == box]


# --- the clips --------------------------------------------------------------------------------------------------

def test_same_seed_same_bytes(demo, tmp_path):
    output, result = demo
    names = sorted(p.name for p in output.glob("*.tar"))
    assert names == ["shard-000000.tar", "shard-000001.tar"] and result["shards"] == 2 and result["clips"] == 6
    make_av_demo(tmp_path / "again", **ARGS)
    assert all((output / n).read_bytes() == (tmp_path / "again" / n).read_bytes() for n in names)
    make_av_demo(tmp_path / "other", **(ARGS | {"seed": 4, "num_clips": 1}))
    assert (tmp_path / "other" / names[0]).read_bytes() != (output / names[0]).read_bytes()


def test_events_are_random_frames_apart_and_the_caption_counts_them():
    clips = [av_clip(seed=0, index=i, width=256, height=144, frames=FRAMES, two_shapes=0.5) for i in range(600)]
    onsets, colours = set(), set()
    for clip in clips:
        frames = [e.frame for e in clip.events]
        assert frames == sorted(frames) and 1 <= len(frames) <= MAX_EVENTS
        assert FIRST_ONSET <= frames[0] and frames[-1] <= last_onset(FRAMES) == FRAMES - len(FLASH)
        assert all(b - a >= MIN_GAP for a, b in itertools.pairwise(frames))
        onsets |= set(frames)
        assert prompt_problem(clip.caption) is None and "<S>" not in clip.caption
        for i, shape in enumerate(clip.shapes):
            colours.add(shape.colour)
            assert clip.count(i) >= 1 and f"a {shape.name} flashes " in clip.caption
        if len(clip.shapes) == 2:  # different colours, so different pitches, in different halves
            assert clip.shapes[0].colour != clip.shapes[1].colour
            assert (clip.shapes[0].cx < 128) != (clip.shapes[1].cx < 128)
    assert onsets == set(range(FIRST_ONSET, last_onset(FRAMES) + 1))  # every allowed frame happens
    assert colours == set(PITCHES)
    assert 0.4 < np.mean([len(c.shapes) == 2 for c in clips]) < 0.6
    assert av_clip(seed=0, index=5, width=256, height=144, frames=FRAMES, two_shapes=0.5) == clips[5]
    single = av_clip(seed=0, index=0, width=256, height=144, frames=FRAMES, two_shapes=0.0)
    assert single.caption.endswith("on a black background <AUDCAP>a short "
                                   f"{dict(red='low', green='middle', blue='high')[single.shapes[0].colour]} beep "
                                   "each time it flashes<ENDAUDCAP>")


def test_the_screen_scene_flashes_the_whole_frame_in_each_colour_and_is_black_between():
    from wan_train.models.encoders.builtin import word_tokenizer

    for index in range(8):
        shapes = av_clip(seed=0, index=index, width=256, height=144, frames=FRAMES, two_shapes=0.5)
        clip = av_clip(seed=0, index=index, width=256, height=144, frames=FRAMES, two_shapes=0.5, scene="screen")
        assert clip.events == shapes.events and [s.colour for s in clip.shapes] == [s.colour for s in shapes.shapes]
        frames = render(clip, frames=FRAMES)
        assert (frames == frames[:, :1, :1]).all()  # one colour over the whole frame
        onsets = {e.frame: clip.shapes[e.shape].colour for e in clip.events}
        for f in range(FRAMES):
            lit = f in onsets or any(0 < f - o < len(FLASH) for o in onsets)
            assert (tuple(frames[f, 0, 0]) != BACKGROUNDS["black"]) == lit
        for frame, colour in onsets.items():
            assert tuple(frames[frame, 0, 0]) == COLOURS[colour]
        assert clip.caption.startswith("the screen flashes ") and prompt_problem(clip.caption) is None
        assert "##" not in " ".join(word_tokenizer().tokenize(clip.caption))  # every word is one token
        assert all(e["shape"] == "screen" and e["box"] == [0.0, 0.0, 1.0, 1.0] for e in events_json(clip, fps=16.0))
    with pytest.raises(SystemExit):
        main(["--output", "x", "--scene", "stage"])


def test_each_beep_starts_with_its_flash_at_the_colours_pitch_in_the_mp4(samples):
    """Decoded with PyAV: the H.264 pictures and the AAC track. AAC smears a beep's start by a few ms (its
    pre-echo), far inside the one frame (62.5 ms) the evaluation allows."""
    for sample in samples:
        meta, raw = parse_meta(sample["json"], key=sample["__key__"]), json.loads(sample["json"])
        pictures, sound = decode_mp4(sample["mp4"])
        assert pictures.shape == (FRAMES, 144, 256, 3) and sound.size >= FRAMES * SAMPLE_RATE / FPS
        check_sync(pictures, sound, raw["events"], tolerance=0.01)
        quiet = np.ones(sound.size, bool)
        for event in raw["events"]:
            quiet[round(event["t"] * SAMPLE_RATE) - 200:round((event["t"] + 0.13) * SAMPLE_RATE)] = False
        assert np.abs(sound[quiet]).max() < 0.01  # silence between the beeps (AAC's noise floor)
        for event in raw["events"]:  # the flashing shape is the colour the caption and the pitch say
            x0, y0, x1, y1 = (round(v * s) for v, s in zip(event["box"], (256, 144, 256, 144), strict=True))
            centre = pictures[event["frame"], (y0 + y1) // 2, (x0 + x1) // 2].astype(int)
            assert np.abs(centre - COLOURS[event["colour"]]).max() < 20 and event["colour"] in meta.captions[0]
        assert meta.audio == AudioMeta(sample_rate=SAMPLE_RATE, channels=1, codec="aac",
                                       duration=meta.audio.duration)
        assert FRAMES / FPS <= meta.audio.duration < FRAMES / FPS + 0.1  # whole AAC frames of 1024 samples


def test_the_pitches_survive_melspace():
    """Through the weight-free audio "VAE" the demo's models use: each colour's beep comes back where it was
    (within half a frame; -16..+21 ms over the beeps of 40 clips) at its pitch (within 5%: MelSpace smooths over ~4
    mel bands, 37 Hz each below 1 kHz; over all 27 onset frames the worst was 3.9%, red's 440 Hz; the colours are
    an octave apart), and the latents of a beep tell the colours apart by far (each beep at least 3x nearer its own
    colour's centroid than another's; 4.9x the worst over all onsets). Griffin-Lim gives the beeps back quieter
    (peaks 0.3-0.45 of 0.5): onsets are found at 30% of the decoded peak."""
    # onset frames whose beeps start at four phases of the 512-sample latents (2000, 9000, 17000, 26000 mod 512)
    codec, starts = MelSpace(), (2, 9, 17, 26)
    waves = []
    for colour in PITCHES:
        for frame in starts:
            wave = np.zeros(FRAMES * SAMPLE_RATE // 16, np.float32)
            wave[round(frame / FPS * SAMPLE_RATE):][:round(0.12 * SAMPLE_RATE)] = beep(PITCHES[colour])
            waves.append(wave)
    latents = codec.encode(torch.from_numpy(np.stack(waves)))  # [B, 20, 64]
    decoded = codec.decode(latents).numpy()
    features = {}
    for b, (colour, frame) in enumerate((c, f) for c in PITCHES for f in starts):
        at = frame / FPS
        (heard,) = beep_onsets(decoded[b], level=0.3 * np.abs(decoded[b]).max())
        assert heard == pytest.approx(at, abs=FRAME / 2)
        assert dominant_pitch(decoded[b], at - 0.01, seconds=0.12) == pytest.approx(PITCHES[colour], rel=0.05)
        first = int(at * SAMPLE_RATE) // codec.samples_per_latent
        features.setdefault(colour, []).append(latents[b, :, first + 1:first + 3].flatten().numpy())
    centroids = {c: np.mean(f, axis=0) for c, f in features.items()}
    for colour, rows in features.items():
        for row in rows:
            distances = {c: np.linalg.norm(row - centroid) for c, centroid in centroids.items()}
            others = min(d for c, d in distances.items() if c != colour)
            assert distances[colour] * 3 < others, (colour, distances)


def test_the_flashes_survive_pixelspace():
    """Through the quickstart's stand-in for the video VAE (8x8 block means, frames in groups of 4 folded into
    channels): every flash is still at its frame in the decoded video, in its colour."""
    vae = builtin_vae()
    for index in range(6):
        clip = av_clip(seed=0, index=index, width=256, height=144, frames=FRAMES, two_shapes=0.5)
        video = torch.from_numpy(render(clip, frames=FRAMES)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        latents = vae.encode(video)
        assert latents.shape == (1, 12, 9, 18, 32)
        decoded = ((vae.decode(latents)[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        events = events_json(clip, fps=FPS)
        for box in {tuple(e["box"]) for e in events}:
            assert flash_onsets(decoded, list(box)) == [e["frame"] for e in events if tuple(e["box"]) == box]
        for event in events:
            x0, y0, x1, y1 = (round(v * s) for v, s in zip(event["box"], (256, 144, 256, 144), strict=True))
            centre = decoded[event["frame"], (y0 + y1) // 2, (x0 + x1) // 2].astype(int)
            assert np.argmax(centre) == ("red", "green", "blue").index(event["colour"])


# --- through the data path ------------------------------------------------------------------------------------------

def loader_batches(shards: list[str]) -> list[dict]:
    """Batches of the shards as train.py's data=av_demo reads them (its group file, caption dropout off)."""
    cfg = compose_config(["data=av_demo", f"data.shards=[{','.join(shards)}]", "data.caption_dropout=0"])
    data = OmegaConf.to_object(cfg.data)
    assert data.audio and data.resolutions == ["144p"] and data.durations == [2.0] and data.fps == FPS
    from wan_train.data.datamodule import make_source

    urls = expand_urls(data.shards)
    return list(BucketedStream(urls, make_source(data, urls), batch_size=2, seed=0, shuffle_buffer=1, epochs=1))


def check_batches(batches: list[dict], events: dict[str, list[dict]], *, tolerance: float) -> None:
    seen = set()
    for batch in batches:
        assert batch["video"].shape[1:] == (FRAMES, 144, 256, 3) and batch["audio"].shape[1] == 33000
        assert batch["has_audio"].all()
        for key, start, pictures, sound in zip(batch["key"], batch["start"], batch["video"], batch["audio"],
                                               strict=True):
            assert start == 0.0  # a clip is its whole video
            check_sync(pictures.numpy(), sound.numpy(), events[key], tolerance=tolerance)
            seen.add(key)
    assert seen == set(events)


def test_the_loader_reads_the_sound_back_on_the_flashes(demo, samples):
    output, _ = demo
    check_batches(loader_batches([str(output)]), {s["__key__"]: json.loads(s["json"])["events"] for s in samples},
                  tolerance=0.01)


def test_the_folder_layout_goes_through_make_shards(tmp_path):
    """--layout folder --wav: make_shards packs each .wav beside its mp4 (the loader then reads it, sample-exact);
    the events stay in the folder's .json files, matched by the sample's source."""
    folder = tmp_path / "raw"
    make_av_demo(folder, num_clips=3, seed=5, layout="folder", wav=True)
    assert sorted(p.name for p in folder.iterdir()) == [f"00000000{i}.{ext}" for i in range(3)
                                                        for ext in ("json", "mp4", "wav")]
    result = make_shards(folder, tmp_path / "shards", shard_size=2, workers=1, min_duration=1.0)
    assert result["samples"] == result["samples_with_audio"] == 3
    stored = list(wds.WebDataset(sorted(str(p) for p in (tmp_path / "shards").glob("*.tar")), shardshuffle=False))
    events = {}
    for sample in stored:
        meta = parse_meta(sample["json"], key=sample["__key__"])
        assert meta.audio == AudioMeta(sample_rate=SAMPLE_RATE, channels=1, codec="pcm_s16le", duration=2.0625,
                                       member="wav")
        assert sample["mp4"] == (folder / meta.source).read_bytes()  # its AAC track kept as it is
        raw = json.loads((folder / meta.source).with_suffix(".json").read_text())
        assert meta.captions == (raw["caption"],)
        events[sample["__key__"]] = raw["events"]
    check_batches(loader_batches([str(tmp_path / "shards")]), events, tolerance=0.001)


def test_cli(tmp_path, capsys):
    assert main(["--output", str(tmp_path / "out"), "--clips", "2", "--seed", "1", "--two-shapes", "1"]) == 0
    shards = list(wds.WebDataset([str(tmp_path / "out" / "shard-000000.tar")], shardshuffle=False))
    assert len(shards) == 2 and all(" and a " in json.loads(s["json"])["caption"] for s in shards)
    assert "make_av_demo" in capsys.readouterr().err
    for bad, message in ((["--frames", "17"], "--frames must be >= 23"), (["--fps", "60"], "--fps must be in"),
                         (["--two-shapes", "2"], "--two-shapes must be a probability")):
        with pytest.raises(SystemExit) as exit_:
            main(["--output", str(tmp_path / "bad"), *bad])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
