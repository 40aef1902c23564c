"""The clips' sound (data.audio) on real files: H.264 + AAC mp4s and .wav / .flac members whose pitch changes at a
known moment, cut to exactly each clip's time span in the decoding process; a sample without sound is flagged and
trained, never given invented silence; bad sound is skipped and counted under its reason."""

import io
import json
import struct

import numpy as np
import pytest
import torch

from tests.data_helpers import (
    encode_sound_video,
    frame_colour,
    frame_index,
    pitch_change,
    sound_file,
    two_tones,
    write_shard,
)
from wan_train.data.audio import SAMPLE_RATE, clip_samples, sound_request
from wan_train.data.buckets import BucketTable
from wan_train.data.datamodule import DataConfig, make_source
from wan_train.data.decode import Limits, decode_clip
from wan_train.data.errors import SampleError
from wan_train.data.metadata import ClipMeta
from wan_train.data.references import ReferenceSource
from wan_train.data.stream import BucketedStream
from wan_train.data.video import VideoSource

FPS, FRAMES, SECONDS = 16.0, 48, 3.0  # the test videos: 3 s at 16 fps
CHANGE = 1.5  # seconds: where the pitch changes
# where a cut's pitch change is found against where it must be: the detector's step (1/4 ms) and AAC's
# smearing of a change within its frame; a cut one sample off at 16 kHz would still pass, one video frame (62.5 ms)
# or one AAC frame (21-64 ms) off would not
ACCURACY = 0.002


def pictures(frames: int = FRAMES) -> np.ndarray:
    return np.stack([np.full((64, 64, 3), frame_colour(i), np.uint8) for i in range(frames)])


@pytest.fixture(scope="module")
def silent() -> bytes:
    return encode_sound_video(pictures(), None, fps=FPS, rate=SAMPLE_RATE)


def cut(video: bytes, start: float, *, frames: int = 17, member: tuple[str, bytes] | None = None):
    """(frames, sound) of the clip of `frames` frames from `start` seconds, as VideoSource asks for them."""
    first = round(start * FPS)
    sound = sound_request(start, frames=frames, fps=FPS, rate=SAMPLE_RATE, member=member and member[0])
    return decode_clip(video, list(range(first, first + frames)), size=(64, 64), key="k", sound=sound,
                       member=member[1] if member else b"", limits=Limits(30.0))


@pytest.mark.parametrize("rate, layout", [(44100, "stereo"), (48000, "mono"), (22050, "stereo")])
def test_the_sound_of_a_clip_is_cut_at_its_time_span(rate, layout):
    video = encode_sound_video(pictures(), two_tones(SECONDS, rate=rate, change=CHANGE), fps=FPS, rate=rate,
                               layout=layout)
    for start, frames in ((0.0, 33), (0.5, 17), (1.0, 17), (1.25, 17), (1.4375, 17)):  # later ones seek
        pixels, sound = cut(video, start, frames=frames)
        assert sound.dtype == np.float32 and sound.shape == (clip_samples(frames, fps=FPS, rate=SAMPLE_RATE),)
        assert [frame_index(f) for f in pixels[[0, -1]]] == [round(start * FPS), round(start * FPS) + frames - 1]
        assert pitch_change(sound, rate=SAMPLE_RATE) == pytest.approx(CHANGE - start, abs=ACCURACY), (start, frames)
        # mono is the mean of the channels (a sine of amplitude 0.5: RMS 0.35), not their sum (0.71)
        assert 0.3 < np.sqrt(np.mean(sound**2)) < 0.4


def test_a_sound_member_is_cut_sample_exactly_whatever_the_seek(silent):
    noise = (np.random.default_rng(0).standard_normal(round(SECONDS * SAMPLE_RATE)) * 0.1).astype(np.float32)
    quantised = np.round(noise * 32767) / 32768  # 16-bit PCM
    wav = ("wav", sound_file(noise, rate=SAMPLE_RATE))
    for start in (0.0, 0.75, 1.0625):
        _, sound = cut(silent, start, member=wav)
        first = round(start * SAMPLE_RATE)
        np.testing.assert_allclose(sound, quantised[first:first + 17000], atol=1 / 32768)
    # at another rate, a cut after a seek (decoding from a point the two rates share) is the same samples as the
    # cut from a decode of the whole file
    loud = np.repeat(noise, 3)
    for member in (("wav", sound_file(loud, rate=48000)), ("flac", sound_file(loud, rate=48000, fmt="flac",
                                                                                layout="stereo"))):
        _, whole = cut(silent, 0.0, frames=47, member=member)
        for start in (0.5625, 1.0, 1.75):
            first = round(start * SAMPLE_RATE)
            np.testing.assert_array_equal(cut(silent, start, member=member)[1], whole[first:first + 17000])


def test_the_member_is_the_sound_even_where_the_video_has_its_own(silent):
    video = encode_sound_video(pictures(), two_tones(SECONDS, rate=44100, change=0.5), fps=FPS, rate=44100)
    member = ("flac", sound_file(two_tones(SECONDS, rate=SAMPLE_RATE, change=CHANGE), rate=SAMPLE_RATE, fmt="flac"))
    assert pitch_change(cut(video, 1.0, member=member)[1], rate=SAMPLE_RATE) == pytest.approx(0.5, abs=ACCURACY)
    assert pitch_change(cut(video, 0.0)[1], rate=SAMPLE_RATE) == pytest.approx(0.5, abs=ACCURACY)


def test_a_video_without_sound_has_none_not_silence(silent):
    pixels, sound = cut(silent, 1.0)
    assert sound.shape == (0,) and pixels.shape == (17, 64, 64, 3)


def test_a_track_a_little_short_is_padded_at_its_end_and_one_short_by_more_is_refused():
    video = encode_sound_video(pictures(), two_tones(2.0, rate=44100, change=CHANGE), fps=FPS, rate=44100)
    _, sound = cut(video, 1.0)  # the clip runs to 2.0625 s, the sound to 2.0 s (+ AAC's last frame): < 1 frame
    tail = round(0.04 * SAMPLE_RATE)
    assert np.abs(sound[-tail:]).max() == 0 and np.abs(sound[:-tail]).max() > 0.3
    assert pitch_change(sound[:-tail - 1000], rate=SAMPLE_RATE) == pytest.approx(0.5, abs=ACCURACY)
    with pytest.raises(SampleError, match=r"k: the sound ends at 2.0\d\d s, before the clip's end at 2.562 s") as e:
        cut(video, 1.5)
    assert e.value.reason == "audio_too_short"


def test_a_track_that_starts_late_is_refused_for_clips_that_start_before_it():
    offset = 0.1  # the track's first sample is heard 0.1 s after the first frame (AAC's priming not trimmed)
    video = encode_sound_video(pictures(), two_tones(2.8, rate=44100, change=CHANGE), fps=FPS, rate=44100,
                               offset=round(offset * 44100))
    with pytest.raises(SampleError, match=r"the sound starts at 0.0\d\d s, after the clip's start at 0.000 s") as e:
        cut(video, 0.0)
    assert e.value.reason == "audio_too_short"
    _, sound = cut(video, 1.0)
    assert pitch_change(sound, rate=SAMPLE_RATE) == pytest.approx(CHANGE + offset - 1.0, abs=ACCURACY)


def remuxed(video: bytes, *, garble: bool = False, jump_after: float | None = None) -> bytes:
    """The video with every AAC packet's bytes replaced by noise (garble), or the packets after `jump_after`
    seconds stamped half a second later (a gap in the track's timeline); the pictures intact."""
    import av

    rng, out = np.random.default_rng(1), io.BytesIO()
    with av.open(io.BytesIO(video)) as source, av.open(out, "w", format="mp4") as target:
        pictures_in, sound_in = source.streams.video[0], source.streams.audio[0]
        streams = {pictures_in: target.add_stream_from_template(pictures_in),
                   sound_in: target.add_stream_from_template(sound_in)}
        for packet in source.demux():
            if packet.dts is None:
                continue
            stream = streams[packet.stream]
            if packet.stream is sound_in:
                changed = av.Packet(rng.bytes(packet.size) if garble else bytes(packet))
                shift = 0 if jump_after is None or packet.pts * packet.time_base < jump_after else \
                    round(0.5 / packet.time_base)
                changed.pts, changed.dts, changed.time_base = packet.pts + shift, packet.dts + shift, packet.time_base
                packet = changed
            packet.stream = stream
            target.mux(packet)
    return out.getvalue()


def wav_header(channels: int, rate: int) -> bytes:
    """A .wav whose header claims `channels` at `rate` Hz (16-bit), with 1000 bytes of zeros."""
    data, block = b"\x00" * 1000, channels * 2
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_bad_sound_is_refused_with_its_reason(silent):
    tones = two_tones(SECONDS, rate=SAMPLE_RATE, change=CHANGE)
    wav = sound_file(tones, rate=SAMPLE_RATE)
    track = encode_sound_video(pictures(), two_tones(SECONDS, rate=44100, change=CHANGE), fps=FPS, rate=44100)
    cases = [
        (silent, ("wav", np.random.default_rng(0).bytes(5000)), "bad_audio", "the sound does not decode"),
        (silent, ("wav", b""), "bad_audio", "the sound does not decode"),
        # 1000 channels claimed: PyAV 18.1.0's FFmpeg reports 0, 18.1.1's 1000; refused either way
        (silent, ("wav", wav_header(1000, 16000)), "bad_audio", r"claims (0|1000) channels at 16000 Hz"),
        (silent, ("wav", wav_header(1, 1_000_000_000)), "bad_audio", "channels at 1000000000 Hz"),
        (silent, ("wav", wav[:len(wav) // 2]), "audio_too_short", r"the sound ends at 1.4\d\d s"),  # cut off
        (remuxed(track, garble=True), None, "bad_audio", "the sound does not decode"),
        (remuxed(track, jump_after=0.8), None, "bad_audio", r"the sound jumps by \+0.500 s at 0.8\d\d s"),
    ]
    for video, member, reason, message in cases:
        with pytest.raises(SampleError, match=message) as error:
            cut(video, 1.0, member=member)
        assert error.value.reason == reason, error.value
    # the decoding process lives on: the next sample decodes
    assert pitch_change(cut(track, 1.0)[1], rate=SAMPLE_RATE) == pytest.approx(0.5, abs=ACCURACY)


# --- the loader ---------------------------------------------------------------------------------------------------

TABLE = BucketTable(resolutions=("144p",), durations=(1.0,), fps=FPS)  # 17-frame clips


def sample(key: str, video: bytes, **members: bytes) -> tuple[str, dict[str, bytes]]:
    meta = ClipMeta(captions=("a clip",), fps=FPS, num_frames=FRAMES, width=64, height=64, duration=SECONDS,
                    source=f"{key}.mp4")
    return key, {"mp4": video, "json": json.dumps(meta.to_json()).encode(), **members}


@pytest.fixture(scope="module")
def shard(tmp_path_factory, silent):
    tones = two_tones(SECONDS, rate=44100, change=CHANGE)
    track = encode_sound_video(pictures(), tones, fps=FPS, rate=44100)
    wav = sound_file(two_tones(SECONDS, rate=SAMPLE_RATE, change=CHANGE), rate=SAMPLE_RATE)
    short = encode_sound_video(pictures(), tones[:44100 // 2], fps=FPS, rate=44100)  # 0.5 s of sound
    samples = [sample("track", track), sample("member", silent, wav=wav), sample("none", silent),
               sample("broken", silent, wav=np.random.default_rng(2).bytes(3000)), sample("short", short),
               sample("second", track)]
    return str(write_shard(tmp_path_factory.mktemp("audio") / "shard-000000.tar", samples))


def stream(url: str, **options) -> BucketedStream:
    return BucketedStream([url], VideoSource(TABLE, clip_start="random", **options), batch_size=2, seed=0,
                          shuffle_buffer=1, epochs=1)


def test_batches_carry_each_clips_sound_and_count_what_has_none_or_bad(shard):
    batches = list(stream(shard, audio_rate=SAMPLE_RATE))
    seen = {}
    for batch in batches:
        assert batch["audio"].dtype == torch.float32 and batch["audio"].shape == (len(batch["key"]), 17000)
        assert batch["has_audio"].dtype == torch.bool
        for key, start, audio, has in zip(batch["key"], batch["start"], batch["audio"], batch["has_audio"],
                                          strict=True):
            seen[key] = bool(has)
            if key == "none":
                assert not has and not audio.any()  # zeros, flagged: never invented sound
            else:
                expected = CHANGE - start
                found = pitch_change(audio.numpy(), rate=SAMPLE_RATE)
                assert found == (pytest.approx(expected, abs=ACCURACY) if 0.02 < expected < 1.04 else None), key
    assert seen == {"track": True, "member": True, "none": False, "second": True}
    state = batches[-1]["_position"]["state"]
    assert state["skipped"] == {"bad_audio": 1, "audio_too_short": 1}
    assert state["flagged"] == {"no_audio": 1}
    events = {(e["key"], e["reason"]): e for batch in batches for e in batch["_events"]}
    assert set(events) == {("broken", "bad_audio"), ("short", "audio_too_short"), ("none", "no_audio")}
    assert events[("none", "no_audio")]["skipped"] is False
    assert "none: no sound stream in the video and no .wav / .flac member" in events[("none", "no_audio")]["detail"]


def test_without_data_audio_nothing_changes(shard):
    batches = list(stream(shard))
    assert all("audio" not in batch and "has_audio" not in batch for batch in batches)
    assert sorted(k for batch in batches for k in batch["key"]) == ["broken", "member", "none", "second", "short",
                                                                     "track"]


def test_data_audio_config():
    assert DataConfig().audio is False
    source = make_source(DataConfig(audio=True), ["unused.tar"])
    assert source.audio_rate == SAMPLE_RATE == 16000
    references = make_source(DataConfig(audio=True, references=1), ["unused.tar"])
    assert isinstance(references, ReferenceSource) and references.audio_rate == SAMPLE_RATE
    with pytest.raises(ValueError, match="data.shots=2 with data.audio=true"):
        DataConfig(audio=True, shots=2)
    with pytest.raises(ValueError, match="audio_rate=0"):
        VideoSource(TABLE, audio_rate=0)
