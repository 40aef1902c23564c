"""The sound through the data tools, on real files: make_shards keeps a video's own track and packs a .wav / .flac
beside it (or named by a manifest) as a member, records what it found and skips sound that does not decode;
the loader reads it back cut to each clip; inspect reports which samples have sound and where it does not fit its
video."""

import json

import numpy as np
import pytest
import torch
import webdataset as wds

from data_tools.inputs import list_inputs
from data_tools.inspect import inspect_shards, main
from data_tools.make_shards import make_shards
from data_tools.split_shots import output_rows
from tests.data_helpers import encode_sound_video, frame_colour, pitch_change, sound_file, two_tones, write_shard
from wan_train.data.audio import SAMPLE_RATE
from wan_train.data.buckets import BucketTable
from wan_train.data.metadata import AudioMeta, ClipMeta, parse_meta
from wan_train.data.stream import BucketedStream
from wan_train.data.video import VideoSource

FPS, FRAMES, SECONDS, CHANGE = 16.0, 48, 3.0, 1.5
TABLE = BucketTable(resolutions=("144p",), durations=(1.0,), fps=FPS)


def pictures(frames: int = FRAMES) -> np.ndarray:
    return np.stack([np.full((64, 64, 3), frame_colour(i), np.uint8) for i in range(frames)])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """talk.mp4 (its own AAC track), dub.mp4 + dub.wav, mute.mp4 (no sound), hiss.mp4 + a broken hiss.flac."""
    root = tmp_path_factory.mktemp("videos")
    silent = encode_sound_video(pictures(), None, fps=FPS, rate=SAMPLE_RATE)
    (root / "talk.mp4").write_bytes(encode_sound_video(pictures(), two_tones(SECONDS, rate=44100, change=CHANGE),
                                                       fps=FPS, rate=44100))
    (root / "dub.mp4").write_bytes(silent)
    (root / "dub.wav").write_bytes(sound_file(two_tones(SECONDS, rate=SAMPLE_RATE, change=CHANGE), rate=SAMPLE_RATE))
    (root / "mute.mp4").write_bytes(silent)
    (root / "hiss.mp4").write_bytes(silent)
    (root / "hiss.flac").write_bytes(np.random.default_rng(0).bytes(4000))
    for name in ("talk", "dub", "mute", "hiss"):
        (root / f"{name}.txt").write_text(f"a {name} clip")
    return root


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    return out, make_shards(folder, out, shard_size=10, workers=1, min_duration=1.0)


def samples(out) -> dict[str, dict]:
    urls = sorted(str(p) for p in out.glob("shard-*.tar"))
    return {parse_meta(s["json"], key=s["__key__"]).source: s for s in wds.WebDataset(urls, shardshuffle=False)}


def test_make_shards_keeps_the_track_packs_the_sound_file_and_records_both(folder, shards):
    out, result = shards
    stored = samples(out)
    assert sorted(stored) == ["dub.mp4", "mute.mp4", "talk.mp4"]
    assert stored["talk.mp4"]["mp4"] == (folder / "talk.mp4").read_bytes()  # the track kept: the bytes as given
    assert stored["dub.mp4"]["wav"] == (folder / "dub.wav").read_bytes()
    assert sorted(k for k in stored["mute.mp4"] if not k.startswith("__")) == ["json", "mp4"]
    talk, dub, mute = (parse_meta(stored[name]["json"], key=name).audio for name in ("talk.mp4", "dub.mp4", "mute.mp4"))
    assert (talk.sample_rate, talk.channels, talk.codec, talk.start, talk.member) == (44100, 2, "aac", 0.0, None)
    assert talk.duration == pytest.approx(SECONDS, abs=0.05)  # AAC decodes whole frames of 1024 samples
    assert dub == AudioMeta(sample_rate=16000, channels=1, codec="pcm_s16le", duration=SECONDS, member="wav")
    assert mute is None
    assert (result["samples"], result["samples_with_audio"], result["skipped_by_reason"]) == (3, 2, {"bad_audio": 1})
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [(e["path"], e["reason"]) for e in skipped] == [("hiss.mp4", "bad_audio")]
    assert skipped[0]["message"].startswith("hiss.mp4: the sound")  # does not decode, or holds no samples


def test_the_loader_reads_the_sound_back_cut_to_each_clip(shards):
    out, _ = shards
    stream = BucketedStream(sorted(str(p) for p in out.glob("shard-*.tar")),
                            VideoSource(TABLE, clip_start="random", audio_rate=SAMPLE_RATE), batch_size=1, seed=3,
                            shuffle_buffer=1, epochs=1)
    seen = {}
    for batch in stream:
        key, start, sound = batch["key"][0], batch["start"][0], batch["audio"][0]
        seen[key] = bool(batch["has_audio"][0])
        assert sound.shape == (17000,) and sound.dtype == torch.float32
        if seen[key] and 0.02 < CHANGE - start < 1.04:
            assert pitch_change(sound.numpy(), rate=SAMPLE_RATE) == pytest.approx(CHANGE - start, abs=0.002)
        if not seen[key]:
            assert not sound.any()
    assert sorted(seen.values()) == [False, True, True]


def test_a_manifest_names_the_sound_file_relative_to_itself(folder, tmp_path):
    manifest = tmp_path / "lists" / "clips.jsonl"
    manifest.parent.mkdir()
    rows = [{"path": str(folder / "mute.mp4"), "caption": "dubbed", "audio": "../sounds/voice.flac"},
            {"path": str(folder / "mute.mp4"), "caption": "gone", "audio": "../sounds/gone.wav"},
            {"path": str(folder / "mute.mp4"), "caption": "not a sound file", "audio": str(folder / "talk.txt")}]
    (tmp_path / "sounds").mkdir()
    flac = sound_file(two_tones(2.0, rate=48000, change=1.0), rate=48000, fmt="flac", layout="stereo")
    (tmp_path / "sounds" / "voice.flac").write_bytes(flac)
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "shards"
    result = make_shards(manifest, out, shard_size=10, workers=1, min_duration=1.0)
    stored = list(wds.WebDataset([str(out / "shard-000000.tar")], shardshuffle=False))
    assert len(stored) == 1 and stored[0]["flac"] == flac
    assert parse_meta(stored[0]["json"], key="0").audio == AudioMeta(sample_rate=48000, channels=2, codec="flac",
                                                                     duration=2.0, member="flac")
    assert result["skipped_by_reason"] == {"bad_row": 1, "missing_file": 1}


# --- inspect ------------------------------------------------------------------------------------------------------

def meta(key: str, audio: AudioMeta | None = None) -> bytes:
    return json.dumps(ClipMeta(captions=("a clip",), fps=FPS, num_frames=FRAMES, width=64, height=64,
                               duration=SECONDS, source=key, audio=audio).to_json()).encode()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Sound that fits, a member, none, sound 1 s short, a member 2 s too long, sound the .json does not record,
    and a member that does not decode."""
    tones = two_tones(SECONDS, rate=44100, change=CHANGE)
    silent = encode_sound_video(pictures(), None, fps=FPS, rate=SAMPLE_RATE)
    track = encode_sound_video(pictures(), tones, fps=FPS, rate=44100)
    short = encode_sound_video(pictures(), tones[:2 * 44100], fps=FPS, rate=44100)
    fits = AudioMeta(sample_rate=44100, channels=2, codec="aac", duration=SECONDS)
    samples = [
        ("fits", {"mp4": track, "json": meta("fits", fits)}),
        ("member", {"mp4": silent, "wav": sound_file(two_tones(SECONDS, rate=SAMPLE_RATE, change=CHANGE),
                                                     rate=SAMPLE_RATE),
                    "json": meta("member", AudioMeta(sample_rate=16000, channels=1, codec="pcm_s16le",
                                                     duration=SECONDS, member="wav"))}),
        ("none", {"mp4": silent, "json": meta("none")}),
        ("short", {"mp4": short, "json": meta("short", AudioMeta(sample_rate=44100, channels=2, codec="aac",
                                                                 duration=2.0))}),
        ("long", {"mp4": silent, "flac": sound_file(np.zeros(5 * 16000, np.float32), rate=16000, fmt="flac"),
                  "json": meta("long", AudioMeta(sample_rate=16000, channels=1, codec="flac", duration=5.0,
                                                 member="flac"))}),
        ("unrecorded", {"mp4": track, "json": meta("unrecorded")}),
        ("broken", {"mp4": silent, "wav": np.random.default_rng(1).bytes(3000), "json": meta("broken")}),
    ]
    return [str(write_shard(tmp_path_factory.mktemp("mixed") / "shard-000000.tar", samples))]


def test_inspect_reports_the_sound_and_where_it_does_not_fit(mixed):
    stats = inspect_shards(mixed, table=TABLE, decode=True, workers=1)
    audio = stats["audio"]
    assert (audio["with"], audio["without"]) == (5, 1)  # the broken one is a bad sample
    assert audio["sources"] == {"track": 3, "flac": 1, "wav": 1}
    assert audio["sample_rates"] == {"44100 Hz": 3, "16000 Hz": 2}
    assert audio["codecs"] == {"aac": 3, "flac": 1, "pcm_s16le": 1}
    assert audio["hours"] == pytest.approx((3.0 + 2.0 + 3.0 + 3.0 + 5.0) / 3600, abs=0.2 / 3600)
    mismatches = {entry["key"]: entry["message"] for entry in audio["mismatches"]}
    assert sorted(mismatches) == ["long", "short", "unrecorded"]
    assert "ends 0.9" in mismatches["short"] and "before the video" in mismatches["short"]
    assert "runs 2.000 s past the video" in mismatches["long"]
    assert "the .json records no sound, the sample has 3.0" in mismatches["unrecorded"]
    assert [(b["key"], b["reason"]) for b in stats["bad"]] == [("broken", "bad_audio")]
    # without decoding: what the .json records
    recorded = inspect_shards(mixed, table=TABLE, decode=False, workers=1)["audio"]
    assert (recorded["with"], recorded["without"]) == (4, 3)
    assert sorted(entry["key"] for entry in recorded["mismatches"]) == ["long", "short"]


def test_the_inspect_cli_shows_the_sound(mixed, capsys):
    assert main(["--shards", *mixed, "--resolutions", "144p", "--durations", "1", "--fps", "16"]) == 1
    err = capsys.readouterr().err
    assert "with sound" in err and "sound that does not fit its video (3)" in err and "bad_audio" in err


def test_inputs_find_the_sound_beside_a_video_and_split_shots_carries_it(folder, tmp_path):
    dub, talk = (i for i in list_inputs(folder) if i.source in ("dub.mp4", "talk.mp4"))  # sorted
    assert (talk.audio, dub.audio, dub.fields["audio"]) == (None, folder / "dub.wav", "dub.wav")
    out = tmp_path / "manifests"
    [row] = output_rows(dub, [(0.0, 3.0)], out_dir=out, per_shot=False, min_shot_duration=1.0)
    assert row["audio"] == str(folder / "dub.wav")  # relative to the output's folder, or absolute outside it
    [row] = output_rows(dub, [(0.0, 3.0)], out_dir=folder, per_shot=False, min_shot_duration=1.0)
    assert (row["path"], row["audio"]) == ("dub.mp4", "dub.wav")
