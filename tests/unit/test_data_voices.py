"""Reference voices (data.voices) on real files: each sample's voice is its own source's sound from another moment,
cut sample-exactly in the clip's decode, never within voice_gap of the clip; the speakers are the subjects with
recorded speech, tagged @Video1.. in the caption; where no moment or no speaker exists the slot is absent (flagged,
trained); a voice past the sound's end is refused naming the voice."""

import json
import random

import numpy as np
import pytest
import torch

from tests.data_helpers import encode_sound_video, frame_colour, sound_file, write_shard
from wan_train.data.audio import SAMPLE_RATE, sound_request
from wan_train.data.buckets import BucketTable
from wan_train.data.datamodule import DataConfig, make_source
from wan_train.data.decode import Limits, decode_clip
from wan_train.data.errors import SampleError
from wan_train.data.metadata import ClipMeta, Subject, parse_meta
from wan_train.data.references import ReferenceSource
from wan_train.data.stream import BucketedStream
from wan_train.data.video import VideoSource
from wan_train.data.voices import choose_speakers, choose_voice_start, plan_voices, voice_spans

FPS = 16.0
TABLE = BucketTable(resolutions=("144p",), durations=(1.0,), fps=FPS)  # 17-frame clips, 1.0625 s
GAP = 0.5


def pictures(frames: int) -> np.ndarray:
    return np.stack([np.full((64, 64, 3), frame_colour(i), np.uint8) for i in range(frames)])


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(round(seconds * SAMPLE_RATE)) * 0.1).astype(np.float32)


def sample(key: str, seconds: float, *, captions=("a clip",), subjects=(), wav: np.ndarray | None = None,
           track: bool = False) -> dict:
    frames = round(seconds * FPS)
    meta = ClipMeta(captions=tuple(captions), fps=FPS, num_frames=frames, width=64, height=64, duration=seconds,
                    source=f"{key}.mp4", subjects=tuple(subjects))
    video = encode_sound_video(pictures(frames), noise(seconds, 1) if track else None, fps=FPS, rate=SAMPLE_RATE)
    members = {"mp4": video, "json": json.dumps(meta.to_json()).encode()}
    if wav is not None:
        members["wav"] = sound_file(wav, rate=SAMPLE_RATE)
    return {"__key__": key, "__url__": "shard.tar", **members}


def load(source: VideoSource, raw: dict, seed: int) -> tuple[dict, list]:
    rng = random.Random(seed)
    planned = source.plan(raw, rng=rng)
    return source.load(planned, rng=rng), planned.flags


def quantised(wave: np.ndarray) -> np.ndarray:
    return np.round(wave * 32767) / 32768  # the .wav member's 16-bit PCM


def test_a_voice_is_the_sources_own_sound_from_another_moment_cut_sample_exactly():
    wave = noise(6.0)
    raw = sample("long", 6.0, wav=wave)
    source = VideoSource(TABLE, audio_rate=SAMPLE_RATE, voices=1, voice_seconds=1.0, voice_gap=GAP)
    seen = set()
    for seed in range(8):
        item, flags = load(source, raw, seed)
        assert item["audio_refs"].shape == (1, SAMPLE_RATE) and item["audio_ref_mask"].tolist() == [True]
        start, voice = item["start"], item["voice_starts"][0]
        first = round(voice * SAMPLE_RATE)
        assert abs(voice * SAMPLE_RATE - first) < 1e-6  # on the sample grid
        np.testing.assert_allclose(item["audio_refs"][0].numpy(), quantised(wave)[first:first + SAMPLE_RATE],
                                   atol=1 / 32768)
        clip = round(start * SAMPLE_RATE)  # the clip's own sound is unchanged by the voice beside it
        np.testing.assert_allclose(item["audio"].numpy(), quantised(wave)[clip:clip + 17000], atol=1 / 32768)
        shown = (start, start + 17 / FPS)  # never within the gap of the clip
        assert voice + 1.0 <= shown[0] - GAP + 1e-9 or voice >= shown[1] + GAP - 1e-9, (start, voice)
        assert item["prompt"] == "a clip" and flags == []  # no subject: nothing to tag
        seen.add(voice < start)
    assert seen == {True, False}  # before and after the clip


def test_an_aac_track_gives_the_voice_too_and_batches_stack_voices():
    raw = sample("track", 6.0, track=True)
    source = VideoSource(TABLE, audio_rate=SAMPLE_RATE, voices=2, voice_seconds=0.5, voice_gap=GAP)
    items = [load(source, raw, seed)[0] for seed in (0, 1)]
    for item in items:  # slot 2 has no speaker: a source that names no subject is one speaker
        assert item["audio_ref_mask"].tolist() == [True, False] and item["voice_starts"][1] is None
        assert 0.05 < item["audio_refs"][0].std() < 0.15 and not item["audio_refs"][1].any()
    batch = source.collate(items)
    assert batch["audio_refs"].shape == (2, 2, 8000) and batch["audio_ref_mask"].shape == (2, 2)
    assert batch["audio"].shape == (2, 17000) and len(batch["voice_starts"]) == 2


def speaking(name: str, *stretches: tuple[float, float]) -> Subject:
    return Subject(name=name, speech=tuple(stretches))


def meta_with(subjects, seconds: float = 10.0) -> ClipMeta:
    return ClipMeta(captions=("c",), fps=FPS, num_frames=round(seconds * FPS), width=64, height=64,
                    duration=seconds, source="s.mp4", subjects=tuple(subjects))


def test_each_speaker_is_tagged_and_heard_from_its_own_speech():
    alice, bob = speaking("a tall woman", (0.0, 3.0)), speaking("a short man", (6.0, 9.5))
    raw = sample("two", 10.0, captions=("a tall woman talks to a short man",), subjects=(alice, bob),
                 wav=noise(10.0))
    source = VideoSource(TABLE, audio_rate=SAMPLE_RATE, voices=2, voice_seconds=1.0, voice_gap=GAP)
    orders = set()
    for seed in range(10):
        item, _ = load(source, raw, seed)
        prompt = item["prompt"]
        order = ("a tall woman", "a short man") if prompt.startswith("@Video1") else ("a short man", "a tall woman")
        assert prompt == ("@Video1 talks to @Video2" if order[0] == "a tall woman" else "@Video2 talks to @Video1")
        orders.add(order)
        for k, name in enumerate(order):
            voice = item["voice_starts"][k]
            if voice is None:  # the clip left no room in that speaker's speech
                continue
            low, high = (0.0, 3.0) if name == "a tall woman" else (6.0, 9.5)
            assert low <= voice and voice + 1.0 <= high + 1e-9, (name, voice)
    assert len(orders) == 2  # random slot order, as R2V's


def test_who_speaks_decides_the_slots():
    rng = random.Random(0)
    quiet = [Subject(name="a dog"), Subject(name="a cat")]
    assert choose_speakers(meta_with(quiet), None, voices=2, rng=rng) == ([None, None], [])  # anyone's voice
    one = [Subject(name="a dog")]
    assert choose_speakers(meta_with(one), None, voices=2, rng=rng) == ([True, None], one)  # the source's one
    assert choose_speakers(meta_with([]), None, voices=1, rng=rng) == ([True], [])
    mixed = [speaking("a dog", (0, 2)), Subject(name="a cat")]
    assert choose_speakers(meta_with(mixed), None, voices=2, rng=rng) == ([mixed[0], None], [mixed[0]])
    # R2V: the sample's own subjects in slot order, tagged already
    assert choose_speakers(meta_with(mixed), mixed[::-1], voices=2, rng=rng) == ([None, mixed[0]], [])
    assert choose_speakers(meta_with(one), one, voices=1, rng=rng) == ([True], [])
    # a speaker's voice lies in its speech, clamped to the sound's span, away from the clip
    spans = voice_spans(meta_with(mixed, seconds=5.0), speaking("x", (0.5, 4.0), (4.5, 9.0)),
                        target=(1.0, 2.0), gap=0.5)
    assert spans == [(2.5, 4.0), (4.5, 5.0)]
    assert choose_voice_start([(2.5, 4.0)], seconds=1.5, rate=10, rng=rng) == 2.5  # exactly one start fits
    assert choose_voice_start([(2.5, 3.9)], seconds=1.5, rate=10, rng=rng) is None


def test_no_room_no_speaker_or_dropout_leave_the_slot_absent_and_the_sample_trains(tmp_path):
    short = sample("short", 2.0, wav=noise(2.0))  # a 1.06 s clip and a 1 s voice 0.5 s away: no room
    item, flags = load(VideoSource(TABLE, audio_rate=SAMPLE_RATE, voices=1, voice_seconds=1.0, voice_gap=GAP),
                       short, 0)
    assert item["audio_ref_mask"].tolist() == [False] and not item["audio_refs"].any() and item["has_audio"]
    assert [reason for reason, _ in flags] == ["no_voice_moment"]
    assert "no 1 s of the sound 0.5 s away from the clip at" in flags[0][1]
    # dropout: no voice decoded, the speaker's tag kept (the voice-free branch of guidance over voices)
    one = sample("one", 6.0, captions=("a dog barks",), subjects=(Subject(name="a dog"),), wav=noise(6.0))
    dropped = VideoSource(TABLE, audio_rate=SAMPLE_RATE, voices=1, voice_seconds=1.0, voice_dropout=1.0)
    item, flags = load(dropped, one, 0)
    assert item["audio_ref_mask"].tolist() == [False] and item["prompt"] == "@Video1 barks" and flags == []
    # no sound at all: no voice either, and only no_audio is flagged
    silent = sample("silent", 6.0)
    item, flags = load(VideoSource(TABLE, audio_rate=SAMPLE_RATE, voices=1), silent, 0)
    assert not item["has_audio"] and item["audio_ref_mask"].tolist() == [False]
    assert [reason for reason, _ in flags] == ["no_audio"]
    # in a stream: counted as flagged, never skipped
    members = [(s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")}) for s in (short, one)]
    url = str(write_shard(tmp_path / "shard-000000.tar", members))
    stream = BucketedStream([url], VideoSource(TABLE, audio_rate=SAMPLE_RATE, voices=1, voice_seconds=1.0),
                            batch_size=2, seed=0, shuffle_buffer=1, epochs=1)
    batches = list(stream)
    assert sorted(k for b in batches for k in b["key"]) == ["one", "short"]
    assert batches[-1]["_position"]["state"]["flagged"] == {"no_voice_moment": 1}


def test_a_speaker_missing_from_the_caption_skips_the_sample():
    raw = sample("x", 6.0, captions=("a cat sleeps",), subjects=(speaking("a dog", (0.0, 6.0)),), wav=noise(6.0))
    with pytest.raises(SampleError, match="subject 'a dog' is not in the caption") as error:
        load(VideoSource(TABLE, audio_rate=SAMPLE_RATE, voices=1), raw, 0)
    assert error.value.reason == "subject_not_in_caption"


def test_a_voice_past_the_sounds_end_is_refused_naming_the_voice():
    video = encode_sound_video(pictures(48), noise(3.0), fps=FPS, rate=SAMPLE_RATE)
    sound = sound_request(0.0, frames=17, fps=FPS, rate=SAMPLE_RATE, member=None, voices=(1.5, 2.5),
                          voice_samples=SAMPLE_RATE)
    with pytest.raises(SampleError, match=r"before the voice 2's end at 3.500 s") as error:
        decode_clip(video, list(range(17)), size=(64, 64), key="k", sound=sound, limits=Limits(30.0))
    assert error.value.reason == "audio_too_short"
    # one that fits comes back after the clip's sound, in order
    sound = sound_request(0.0, frames=17, fps=FPS, rate=SAMPLE_RATE, member=None, voices=(1.5, 0.25),
                          voice_samples=8000)
    _, heard = decode_clip(video, list(range(17)), size=(64, 64), key="k", sound=sound, limits=Limits(30.0))
    _, whole = decode_clip(video, list(range(17)), size=(64, 64), key="k", limits=Limits(30.0),
                           sound=sound_request(0.0, frames=48, fps=FPS, rate=SAMPLE_RATE, member=None))
    assert heard.shape == (17000 + 2 * 8000,)
    np.testing.assert_allclose(heard[17000:25000], whole[24000:32000], atol=1e-6)
    np.testing.assert_allclose(heard[25000:], whole[4000:12000], atol=1e-6)  # before the last span: decoded again


def test_speech_metadata_and_the_voice_options_are_checked():
    meta = meta_with([speaking("a dog", (0.5, 2.0))]).to_json()
    assert meta["subjects"] == [{"name": "a dog", "speech": [[0.5, 2.0]]}]
    assert parse_meta(meta, key="k").subjects[0].speech == ((0.5, 2.0),)
    for bad in ([[2.0, 1.0]], [[0.5]], "0.5-2.0", [[-1, 2]]):
        meta["subjects"][0]["speech"] = bad
        with pytest.raises(SampleError, match=r"speech") as error:
            parse_meta(meta, key="k")
        assert error.value.reason == "bad_metadata"
    with pytest.raises(ValueError, match="data.voices=1 needs data.audio=true"):
        DataConfig(voices=1)
    with pytest.raises(ValueError, match="data.voices=4: must be 0"):
        DataConfig(voices=4, audio=True)
    with pytest.raises(ValueError, match="data.voice_seconds=0"):
        DataConfig(voices=1, audio=True, voice_seconds=0)
    with pytest.raises(ValueError, match="data.voices=1 with data.audio=false"):
        VideoSource(TABLE, voices=1)
    source = make_source(DataConfig(audio=True, voices=2, voice_seconds=2.0), ["unused.tar"])
    assert (source.voices, source.voice_samples, source.voice_dropout) == (2, 32000, 0.1)
    r2v = make_source(DataConfig(audio=True, voices=1, references=1), ["unused.tar"])
    assert isinstance(r2v, ReferenceSource) and r2v.voices == 1


def test_an_r2v_sample_hears_its_subjects_in_their_slots():
    alice, bob = speaking("a tall woman", (0.0, 3.0)), Subject(name="a short man")
    meta = meta_with([alice, bob])
    starts, tagged, flags = plan_voices(meta, [bob, alice], voices=2, target=(5.0, 6.0), seconds=1.0, gap=0.5,
                                        dropout=0.0, rate=SAMPLE_RATE, rng=random.Random(0), key="k")
    assert starts[0] is None and 0.0 <= starts[1] <= 2.0 and tagged == [] and flags == []
    raw = sample("r2v", 10.0, captions=("a tall woman talks to a short man",), subjects=(alice, bob),
                 wav=noise(10.0))
    source = ReferenceSource(TABLE, references=2, reference_crop="frame", audio_rate=SAMPLE_RATE, voices=2,
                             voice_seconds=1.0)
    item, _ = load(source, raw, 3)
    slot = item["ref_names"].index("a tall woman")
    assert item["audio_ref_mask"].tolist() == [k == slot and item["voice_starts"][k] is not None for k in range(2)]
    assert item["prompt"].count("@Video") == 2 and torch.is_tensor(item["refs"])
