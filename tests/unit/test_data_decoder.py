"""The decoding process: a real deadline (the decode is killed, native code included), a memory bound from the
stream's real size and a hard cap while it runs, the stream's real size / rate / length trusted over the .json,
and a decoder that dies taking only its sample with it."""

import os
import signal
import threading
import time

import numpy as np
import pytest

from tests.data_helpers import frame_index, indexed_video, slow_video
from wan_train.data import decoder_child
from wan_train.data.buckets import Bucket
from wan_train.data.decode import MEMORY_FLOOR, Limits, cover_size, decode_frames
from wan_train.data.decoder import decoder
from wan_train.data.errors import SampleError
from wan_train.inference.outputs import encode_mp4

BUCKET = Bucket(256, 144, 17)


@pytest.fixture(scope="module")
def slow():
    return slow_video(frames=320)  # frame 310: 0.6 s of decoding on an idle core (160 frames were too near 0.3 s)


def declared(width, height, fps, frames):
    return {"width": width, "height": height, "fps": fps, "num_frames": frames}


def test_a_decode_past_its_deadline_is_killed_and_the_next_one_works(slow):
    decode_frames(indexed_video(frames=4, width=64, height=64, fps=8.0), [0], size=(64, 64), key="warm")
    before = decoder().process.pid
    start = time.monotonic()
    with pytest.raises(SampleError, match="slow: decoding took longer") as error:
        decode_frames(slow, [310], size=(64, 36), key="slow", limits=Limits(0.3))
    elapsed = time.monotonic() - start
    assert error.value.reason == "timeout"
    # the untimed decode of that frame takes 0.6 s or more; a Python-level timer could only fire after decord returned
    assert elapsed < 1.0, elapsed
    with pytest.raises(ProcessLookupError):
        os.kill(before, 0)  # the process that was decoding is gone (killed and reaped)
    video = indexed_video(frames=12, width=96, height=64, fps=12.0)
    frames = decode_frames(video, [1, 5, 11], size=(96, 64), key="next")
    assert [frame_index(f) for f in frames] == [1, 5, 11]
    assert decoder().process.pid != before


def test_the_deadline_spans_every_decode_of_a_sample(slow):
    limits = Limits(0.5)
    time.sleep(0.6)  # the clip took the whole budget: its references get none
    with pytest.raises(SampleError, match="took longer than 0.5 s") as error:
        decode_frames(indexed_video(frames=4, width=64, height=64, fps=8.0), [0], size=(64, 64), key="refs",
                      limits=limits)
    assert error.value.reason == "timeout"


def test_declared_sizes_that_are_not_the_streams_are_refused_before_decoding():
    video = encode_mp4(np.zeros((17, 144, 256, 3), np.uint8), fps=16)
    limits = Limits.for_bucket(BUCKET, timeout=30, memory_factor=8)
    for width, height in ((4000, 4), (1, 1)):
        # decoded at the declared size's cover, 4000x4 would be 144000x144 per frame (1 GiB for 17 frames)
        with pytest.raises(SampleError, match=f"says {width}x{height}, the stream is 256x144") as error:
            decode_frames(video, list(range(17)), size=cover_size(width, height, BUCKET), key="k",
                          expect=declared(width, height, 16.0, 17), limits=limits)
        assert error.value.reason == "metadata_mismatch"
    frames = decode_frames(video, list(range(17)), size=cover_size(256, 144, BUCKET), key="k",
                           expect=declared(256, 144, 16.0, 17), limits=limits)
    assert frames.shape == (17, 144, 256, 3)


def test_declared_rate_and_length_must_match_the_stream_within_a_frame():
    video = indexed_video(frames=40, width=64, height=64, fps=16.0)
    for fps, frames, what in ((30.0, 40, "says 30 fps, the stream has 16"), (16.0, 80, "says 80 frames")):
        with pytest.raises(SampleError, match=what) as error:
            decode_frames(video, [0], size=(64, 64), key="k", expect=declared(64, 64, fps, frames))
        assert error.value.reason == "metadata_mismatch"
    # another tool counted one frame more: tolerated, and a frame past the stream's end repeats its last one
    frames = decode_frames(video, [39, 40], size=(64, 64), key="k", expect=declared(64, 64, 16.0, 41))
    assert [frame_index(f) for f in frames] == [39, 39]


def test_a_decode_over_the_memory_bound_is_refused_from_the_real_stream_size():
    video = encode_mp4(np.zeros((17, 4, 4000, 3), np.uint8), fps=16)  # a real 4000x4 video
    limits = Limits.for_bucket(BUCKET, timeout=30, memory_factor=8)
    assert limits.memory == MEMORY_FLOOR  # 8 x a 144p clip is under the floor
    with pytest.raises(SampleError, match=r"144000x144 from a 4000x4 stream needs ~1008 MiB, over .* 256 MiB") as e:
        decode_frames(video, list(range(17)), size=cover_size(4000, 4, BUCKET), key="wide",
                      expect=declared(4000, 4, 16.0, 17), limits=limits)
    assert e.value.reason == "memory_limit"
    big = Limits.for_bucket(Bucket(832, 480, 81), timeout=30, memory_factor=8)
    assert big.memory == big.frames == 8 * 81 * 480 * 832 * 3
    # under the floor, the frames themselves are bounded by the clip's own multiple: covering a 96p bucket, the
    # 4000x4 stream's 9 frames would be 96000x96 (~237 MiB), under the decoder's 256 MiB but 546 x the clip
    small = Bucket(176, 96, 9)
    limits = Limits.for_bucket(small, timeout=30, memory_factor=8)
    assert limits.memory == MEMORY_FLOOR and limits.frames == 8 * 9 * 96 * 176 * 3
    with pytest.raises(SampleError, match=r"9 frames at 96000x96 .* need 237 MiB, over .* bound of 3 MiB") as e:
        decode_frames(video, list(range(9)), size=cover_size(4000, 4, small), key="wide",
                      expect=declared(4000, 4, 16.0, 17), limits=limits)
    assert e.value.reason == "memory_limit"


def test_the_hard_cap_stops_allocations_past_the_bound():
    """What the estimate cannot see (a header without a size, a decoder that allocates more than it should) meets
    RLIMIT_DATA: an allocation past the bound fails in the decoding process instead of growing it."""
    with decoder_child.capped(64 << 20):
        with pytest.raises(MemoryError):
            np.ones(512 << 20, np.uint8)
        small = np.ones(16 << 20, np.uint8)  # under the bound: fine
    assert small.sum() == 16 << 20
    np.ones(512 << 20, np.uint8)  # the cap is lifted afterwards


def test_a_decoder_that_dies_skips_its_sample_only(slow):
    decode_frames(indexed_video(frames=4, width=64, height=64, fps=8.0), [0], size=(64, 64), key="warm")
    pid = decoder().process.pid
    threading.Timer(0.3, os.kill, (pid, signal.SIGSEGV)).start()  # a codec crash, mid-decode
    with pytest.raises(SampleError, match=r"crash: the decoder process died \(signal SIGSEGV\)") as error:
        decode_frames(slow, [310], size=(64, 36), key="crash")
    assert error.value.reason == "undecodable"
    video = indexed_video(frames=12, width=96, height=64, fps=12.0)
    assert [frame_index(f) for f in decode_frames(video, [3], size=(96, 64), key="after")] == [3]


def test_garbage_is_undecodable_with_the_reason():
    for data, why in ((b"", "not a readable video"), (b"\x00" * 4096, "not a readable video"),
                      (np.random.default_rng(0).bytes(50_000), "not a readable video")):
        with pytest.raises(SampleError, match=why) as error:
            decode_frames(data, [0], size=(64, 64), key="junk")
        assert error.value.reason == "undecodable"
    truncated = indexed_video(frames=40, width=64, height=64, fps=16.0)
    with pytest.raises(SampleError) as error:
        decode_frames(truncated[: len(truncated) // 2], [39], size=(64, 64), key="cut",
                      expect=declared(64, 64, 16.0, 40))
    assert error.value.reason in ("undecodable", "too_short", "metadata_mismatch")


def test_a_job_signal_the_moment_the_decoder_starts_does_not_kill_it(monkeypatch):
    """SLURM's requeue warning (SIGUSR1) reaches every process of the job, a decoder still starting up included:
    sent right after the process is created, before Python has run a line of it, it must not stop the start."""
    from wan_train.data import decoder as module

    popen = module.subprocess.Popen

    def signalled(*args, **kwargs):
        process = popen(*args, **kwargs)
        os.kill(process.pid, signal.SIGUSR1)
        return process

    decoder().kill()
    monkeypatch.setattr(module.subprocess, "Popen", signalled)
    video = indexed_video(frames=12, width=96, height=64, fps=12.0)
    assert [frame_index(f) for f in decode_frames(video, [5], size=(96, 64), key="signalled")] == [5]
    monkeypatch.undo()
    decoder().kill()
