"""The decoding process (wan_train.data.decoder starts it): reads requests from its socket, decodes video bytes
with decord (PyAV where decord fails) and hands the frames back. Run as a script, by path, so that it imports
numpy, decord and PyAV only: no torch, no wan_train (a restart after a killed decode costs a fraction of a second).

Why a process of its own: decoding is native code, which a Python timer cannot interrupt (a SIGALRM handler runs
only when decord returns), and whose memory Python cannot bound. Here the parent kills a decode that runs past
its deadline, and a decode whose working memory would pass the sample's bound is refused before it starts (from
the stream's real size) and capped while it runs (RLIMIT_DATA).

Protocol, over the Unix socket whose descriptor is argv[1] (both ways): 8-byte big-endian length, a JSON header of
that length, then its payload: the video bytes of a request (then a sound member's bytes, if it sends one); the
frames of a reply (then its sound), at the start of the arena, a memfd shared with the parent (see Arena; without
memfd, as bytes after the header).
Request: {"key", "indices" (sorted, distinct source frames), "size" [w, h] or [-1, -1] (native), "expect"
(declared {"width", "height", "fps", "num_frames"}, or null), "memory" (bytes, or null), "nbytes" (video),
"audio" (null: no sound wanted; else the span to cut, see read_sound: {"rate", "start", "samples", "tolerance",
"member" (null: the video's own track; "wav" / "flac": a member of the sample, sent after the video), "nbytes"
(the member's), optional "voices" (starts of further spans of "voice_samples" samples each, reference voices)})}.
Reply: {"ok": true, "shape": [N, H, W, 3], "resize": [w, h] or null (the parent still has to scale: the fallback
decoders return native frames), "audio": null (none wanted) or {"samples": T} (0: the sample has no sound; else
the clip's span then each voice's, one after the other)} + N*H*W*3 bytes + T float32, or {"ok": false, "reason",
"message"}."""

import signal

JOB_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)

if __name__ == "__main__":
    # the parent alone decides this process's life (SIGKILL at a sample's deadline, EOF when it goes): a signal
    # meant for the job (Ctrl-C, SLURM's requeue warning, SIGTERM on preemption) reaches every process of it, and
    # would otherwise cost the sample being decoded. First of all, before the imports below.
    # The parent starts it with these signals blocked (one arriving while Python starts up would kill it): ignored
    # now, a pending one is dropped as they are unblocked.
    for _signum in JOB_SIGNALS:
        signal.signal(_signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, JOB_SIGNALS)

import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import mmap  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402

if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # this folder holds wan_train.data's modules, not top-level ones

import decord  # noqa: E402
import numpy as np  # noqa: E402

HEADER = struct.Struct(">Q")
# the decoder's own frames (references, reordering, the frame being converted), each native w x h in YUV 4:2:0
WORKING_FRAMES = 8
SLACK = 64 << 20  # allocator and library overhead on top of the estimate, for the hard cap only
# a declared frame rate / frame count may differ this much from the stream's (other tools count a frame more or
# less, or round the rate); the size must match exactly
FPS_TOLERANCE = 0.01
FRAMES_TOLERANCE = 0.01
POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # fault the frames' pages in at once, not one by one


class Refused(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def main() -> None:
    decord.logging.set_level(decord.logging.QUIET)
    import av  # noqa: F401 (imported now, not in the first request's time)

    channel = socket.socket(fileno=int(sys.argv[1]))
    _send(channel, {"ready": True})
    while True:
        raw = _exactly(channel, HEADER.size)
        request = json.loads(_exactly(channel, HEADER.unpack(raw)[0]))
        video = _exactly(channel, request["nbytes"])
        audio = request.get("audio")
        member = _exactly(channel, audio["nbytes"]) if audio is not None and audio["member"] else None
        try:
            frames, resize = decode(video, request)
            sound = None if audio is None else read_sound(video if member is None else member, audio,
                                                          memory=request["memory"], key=request["key"])
        except Refused as refused:
            _send(channel, {"ok": False, "reason": refused.reason, "message": str(refused)})
            continue
        except MemoryError:
            _send(channel, {"ok": False, "reason": "memory_limit",
                            "message": f"{request['key']}: decoding ran out of its memory bound"})
            continue
        heard = None if sound is None else {"samples": int(sound.size)}
        _send(channel, {"ok": True, "shape": list(frames.shape), "resize": resize, "audio": heard}, frames,
              *(() if sound is None else (sound,)))


def decode(video: bytes, request: dict) -> tuple[np.ndarray, list[int] | None]:
    key, indices, expect, memory = request["key"], request["indices"], request["expect"], request["memory"]
    width, height = request["size"]
    native = stream_size(video, key=key)
    if expect is not None and native is not None and native != (expect["width"], expect["height"]):
        raise Refused("metadata_mismatch", f"{key}: the .json says {expect['width']}x{expect['height']}, the "
                                           f"stream is {native[0]}x{native[1]}")
    out = native if width == -1 and native is not None else (width, height)
    if memory is not None and native is not None:
        need = estimate(len(indices), out, native)
        if need > memory:
            raise Refused("memory_limit", f"{key}: decoding {len(indices)} frames at {out[0]}x{out[1]} from a "
                                          f"{native[0]}x{native[1]} stream needs ~{need >> 20} MiB, over the "
                                          f"sample's bound of {memory >> 20} MiB")
    frames_memory, frames_need = request.get("frames_memory"), len(indices) * out[0] * out[1] * 3
    if frames_memory is not None and frames_need > frames_memory:
        raise Refused("memory_limit", f"{key}: {len(indices)} frames at {out[0]}x{out[1]} (covering the bucket) "
                                      f"need {frames_need >> 20} MiB, over the sample's bound "
                                      f"of {frames_memory >> 20} MiB for its frames (data.decode_memory x its "
                                      "bucket's clip)")
    with capped(memory):
        try:
            return read_decord(video, indices, size=(width, height), expect=expect, key=key), None
        except Refused as refused:
            if refused.reason != "undecodable":
                raise
        # decord's scaler rejects a few small widths (16, 24, 48, 72 px), and for some videos of those widths its
        # reader fails unscaled too ("Check failed: from_size == to_size"): decode unscaled, with PyAV if need be,
        # and let the parent resize
        resize = None if width == -1 else [width, height]
        try:
            return read_decord(video, indices, size=(-1, -1), expect=expect, key=key), resize
        except Refused as refused:
            if refused.reason != "undecodable":
                raise
        return read_pyav(video, indices, key=key), resize


def estimate(count: int, out: tuple[int, int], native: tuple[int, int]) -> int:
    """Bytes a decode holds at its peak: the output frames (RGB) and the decoder's working frames (YUV 4:2:0)."""
    return count * out[0] * out[1] * 3 + WORKING_FRAMES * native[0] * native[1] * 3 // 2


def stream_size(video: bytes, *, key: str) -> tuple[int, int] | None:
    """(width, height) of the first video stream from the container and codec headers, decoding nothing; None
    where the headers do not say (the cap alone bounds such a decode)."""
    import av

    try:
        with av.open(io.BytesIO(video)) as container:
            if not container.streams.video:
                raise Refused("undecodable", f"{key}: the file has no video stream")
            context = container.streams.video[0].codec_context
            return (context.width, context.height) if context.width > 0 and context.height > 0 else None
    except av.error.FFmpegError as error:
        raise Refused("undecodable", f"{key}: not a readable video ({error})") from None


def read_decord(video: bytes, indices: list[int], *, size: tuple[int, int], expect: dict | None,
                key: str) -> np.ndarray:
    try:
        reader = decord.VideoReader(io.BytesIO(video), width=size[0], height=size[1], num_threads=1)
    except Exception as error:  # decord raises its own DECORDError or RuntimeError for unreadable input
        raise _failure(key, f"decord cannot open the video ({error})", error) from None
    frames, fps = len(reader), float(reader.get_avg_fps())
    if expect is not None:
        check_timing(expect, frames=frames, fps=fps, key=key)
    indices = clamp(indices, frames=frames, expect=expect, key=key)
    try:
        return as_numpy(reader.get_batch(indices))
    except Exception as error:
        raise _failure(key, f"decoding frames {indices[0]}..{indices[-1]} failed ({error})", error) from None


class _DLPack:
    """A decord NDArray as numpy's from_dlpack takes it (decord gives a bare capsule)."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, stream=None, **_):
        return self.array.to_dlpack()

    def __dlpack_device__(self):
        return 1, 0  # kDLCPU, device 0


def as_numpy(array) -> np.ndarray:
    """decord's frames as numpy without a copy (they are copied once, into the arena); a copy where this numpy
    cannot take a DLPack tensor."""
    try:
        return np.from_dlpack(_DLPack(array))
    except (AttributeError, TypeError, RuntimeError, BufferError):
        return array.asnumpy()


def check_timing(expect: dict, *, frames: int, fps: float, key: str) -> None:
    if not abs(fps - expect["fps"]) <= FPS_TOLERANCE * expect["fps"]:
        raise Refused("metadata_mismatch", f"{key}: the .json says {expect['fps']:g} fps, the stream has {fps:g}")
    if not abs(frames - expect["num_frames"]) <= max(1, FRAMES_TOLERANCE * expect["num_frames"]):
        raise Refused("metadata_mismatch", f"{key}: the .json says {expect['num_frames']} frames, the stream has "
                                           f"{frames}")


def clamp(indices: list[int], *, frames: int, expect: dict | None, key: str) -> list[int]:
    """Within the declared frame count's tolerance, a frame past the stream's end repeats its last frame."""
    if indices[-1] < frames:
        return indices
    if expect is None or indices[-1] >= expect["num_frames"]:
        raise Refused("too_short", f"{key}: needs frame {indices[-1]}, the video has {frames}")
    return [min(i, frames - 1) for i in indices]


def read_pyav(video: bytes, indices: list[int], *, key: str) -> np.ndarray:
    """uint8 [N, H, W, 3] of the frames at the sorted indices, in decode order, unscaled."""
    import av

    wanted, frames, decoded = set(indices), [], 0
    try:
        with av.open(io.BytesIO(video)) as container:
            for frame in container.decode(video=0):
                if decoded in wanted:
                    frames.append(frame.to_ndarray(format="rgb24"))
                decoded += 1
                if decoded > indices[-1]:
                    break
    except av.error.FFmpegError as error:
        raise _failure(key, f"neither decord nor PyAV decodes it ({error})", error) from None
    if len(frames) < len(indices):
        raise Refused("too_short", f"{key}: needs frame {indices[-1]}, the video has {decoded}")
    return np.stack(frames)


# --- sound ----------------------------------------------------------------------------------------------------

# bounds on what a sound stream may claim (past them it is broken or hostile, not sound): 64 channels (22.2 and
# ambisonics fit), 768 kHz (the highest rate any interface records)
MAX_CHANNELS = 64
MAX_RATE = 768_000
# seconds decoded before the span after a seek: an AAC / MP3 frame overlaps its neighbours (the first one after a
# seek decodes wrong) and the resampler's filter needs history; far more than either needs
SEEK_MARGIN = 0.5
# a float PCM source may hold any value; past this it is a broken file, not loud sound
MAX_AMPLITUDE = 64.0


def read_sound(data: bytes, audio: dict, *, memory: int | None, key: str) -> np.ndarray:
    """float32 [audio["samples"]] of the first sound stream of `data` (a video or a sound file): mono (the mean of
    its channels), resampled to audio["rate"] Hz, samples [start, start + samples) where sample k is at time
    k / rate after the video's time 0 (the first video frame's; a sound file's time 0 is the video's). A stream
    that ends at most audio["tolerance"] samples early is padded with zeros at the end; one that ends earlier, or
    starts after the span, is refused (`audio_too_short`). float32 [0]: no sound stream. A stream that does not
    decode, claims absurd rates or channels, jumps in time or holds non-finite values is refused (`bad_audio`).
    With audio["voices"] (starts, in samples), each voice's audio["voice_samples"] samples follow the clip's, cut
    by the same rules.

    Sample-exact whatever the seek: decoding after a seek starts at an input sample on the grid the two rates
    share (every rate / gcd(rate, out) input samples), so the resampled samples fall at the very times a decode
    from the stream's start gives them."""
    import av

    with capped(memory):
        try:
            with av.open(io.BytesIO(data)) as container:
                if not container.streams.audio:
                    return np.zeros(0, np.float32)
                stream = container.streams.audio[0]
                context = stream.codec_context
                if context is None or not 0 < context.sample_rate <= MAX_RATE or \
                        not 0 < context.channels <= MAX_CHANNELS:
                    raise Refused("bad_audio", f"{key}: the sound stream claims {getattr(context, 'channels', '?')} "
                                               f"channels at {getattr(context, 'sample_rate', '?')} Hz")
                voices = audio.get("voices", ())
                spans = [("clip", audio["start"], audio["samples"])] + [
                    (f"voice {k + 1}", start, audio["voice_samples"]) for k, start in enumerate(voices)]
                out = []
                for n, (what, start, count) in enumerate(spans):
                    if n:
                        container.seek(0)  # a span may lie before the last one's end: decode from the start again
                    out.append(_cut_sound(container, stream, {**audio, "start": start, "samples": count}, what=what,
                                          key=key))
                return np.concatenate(out)
        except av.error.FFmpegError as error:
            raise Refused("bad_audio", f"{key}: the sound does not decode ({error})"[:2000]) from None
        except ValueError as error:  # PyAV's resampler and frame conversions
            raise Refused("bad_audio", f"{key}: the sound does not convert ({error})"[:2000]) from None


def _cut_sound(container, stream, audio: dict, *, what: str, key: str) -> np.ndarray:
    out_rate, start, count, tolerance = audio["rate"], audio["start"], audio["samples"], audio["tolerance"]
    rate = stream.codec_context.sample_rate
    origin = video_origin(container)
    first = _seconds(stream.start_time, stream.time_base)
    stream_start = origin if first is None else first  # the stream's sample 0, seconds on the container's clock
    # output sample k of the whole stream's resampling is at stream_start + k / out_rate; the span's first sample
    # is at origin + start / out_rate
    shift = round((stream_start - origin) * out_rate)
    period = rate // math.gcd(rate, out_rate)  # input samples per shared grid point
    target = start - shift  # the span's first sample, in output samples from the stream's sample 0
    decode = {"rate": rate, "out_rate": out_rate, "first": target, "stream_start": stream_start, "period": period,
              "tolerance": tolerance, "key": key}
    out = np.zeros(count, np.float32)
    span = _resampled(container, stream, out, seek=True, **decode)
    if span is None:  # the seek landed after the span (or past the stream's end): decode from the stream's start
        out[:] = 0
        container.seek(0)
        span = _resampled(container, stream, out, seek=False, **decode)
    begin, end = span
    if begin is None:
        raise Refused("audio_too_short", f"{key}: the sound stream holds no samples")
    if begin > target:
        raise Refused("audio_too_short", f"{key}: the sound starts at {(shift + begin) / out_rate:.3f} s, after the "
                                         f"{what}'s start at {start / out_rate:.3f} s")
    if end < target + count - tolerance:
        raise Refused("audio_too_short", f"{key}: the sound ends at {(shift + end) / out_rate:.3f} s, before the "
                                         f"{what}'s end at {(start + count) / out_rate:.3f} s")
    if not np.isfinite(out).all() or np.abs(out).max(initial=0.0) > MAX_AMPLITUDE:
        raise Refused("bad_audio", f"{key}: the sound holds non-finite or absurd values (a broken float track)")
    return out


def _resampled(container, stream, out: np.ndarray, *, rate: int, out_rate: int, first: int, stream_start: float,
               period: int, tolerance: int, seek: bool, key: str) -> tuple[int | None, int | None] | None:
    """Fill `out` with the resampled samples [first, first + len(out)) (output samples from the stream's sample 0)
    that the stream has; returns (begin, end), the output samples it gave (begin None: none at all; end at most
    first + len(out): decoding stops there), or None where a seek landed after `first`."""
    import av

    if seek and first / out_rate > SEEK_MARGIN:
        when = stream_start + first / out_rate - SEEK_MARGIN - period / rate  # room to reach a grid point
        container.seek(max(0, int(when / stream.time_base)), stream=stream, backward=True)
    else:
        seek = False
    resampler, begin, position, expected = None, None, None, None  # position: output index of the next sample
    for frame in container.decode(stream):
        at = _seconds(frame.pts, frame.time_base)
        index = round((at - stream_start) * rate) if at is not None else (expected or 0)  # input samples from 0
        if expected is not None and abs(index - expected) * out_rate > tolerance * rate:
            raise Refused("bad_audio", f"{key}: the sound jumps by {(index - expected) / rate:+.3f} s at "
                                       f"{expected / rate:.3f} s")
        index = index if expected is None else expected  # small timestamp jitter: kept contiguous
        samples = _mono(frame, key=key)
        expected = index + samples.size
        if resampler is None:
            skip = -index % period  # to the next grid point
            if skip >= samples.size:
                continue
            samples, index = samples[skip:], index + skip
            begin = position = index * out_rate // rate
            if seek and begin > first:
                return None
            resampler = av.AudioResampler(format="flt", layout="mono", rate=out_rate)
        position = _place(out, resampler.resample(_frame(samples, rate)), position=position, first=first)
        if position >= first + out.size:
            return begin, first + out.size
    if resampler is None:
        return None if seek else (None, None)
    return begin, _place(out, resampler.resample(None), position=position, first=first)


def _place(out: np.ndarray, frames, *, position: int, first: int) -> int:
    """Copy the resampled frames' samples that fall in [first, first + len(out)) into out; the next position."""
    for frame in frames:
        data = frame.to_ndarray().reshape(-1)
        lo, hi = max(position, first), min(position + data.size, first + out.size)
        if hi > lo:
            out[lo - first:hi - first] = data[lo - position:hi - position]
        position += data.size
    return position


def _frame(samples: np.ndarray, rate: int):
    import av

    frame = av.AudioFrame.from_ndarray(samples[None], format="flt", layout="mono")
    frame.sample_rate = rate
    return frame


SCALES = {"u8": 128.0, "s16": 2.0 ** 15, "s32": 2.0 ** 31, "s64": 2.0 ** 63, "flt": 1.0, "dbl": 1.0}


def _mono(frame, *, key: str) -> np.ndarray:
    """float32 [n]: the mean of the frame's channels, in [-1, 1] for integer formats (any layout, named or not)."""
    name = frame.format.name.rstrip("p")
    if name not in SCALES:
        raise Refused("bad_audio", f"{key}: the sound's sample format {frame.format.name!r} is not PCM")
    data = frame.to_ndarray().astype(np.float32)
    channels = len(frame.layout.channels) or 1
    data = data.reshape(channels, -1) if frame.format.is_planar else data.reshape(-1, channels).T
    if name == "u8":
        data -= 128.0
    return np.ascontiguousarray(data.mean(0) / SCALES[name], dtype=np.float32)


def video_origin(container) -> float:
    """Seconds on the container's clock where the video's frame 0 is shown (0 for a sound file)."""
    if container.streams.video:
        video = container.streams.video[0]
        start = _seconds(video.start_time, video.time_base)
        if start is not None:
            return start
    return 0.0 if container.start_time is None else container.start_time / 1_000_000


def _seconds(pts, time_base) -> float | None:
    return None if pts is None or time_base is None else float(pts * time_base)


def _failure(key: str, message: str, error: Exception) -> Refused:
    text = str(error).lower()
    out_of_memory = isinstance(error, MemoryError) or any(
        s in text for s in ("bad_alloc", "cannot allocate", "out of memory"))
    return Refused("memory_limit" if out_of_memory else "undecodable", f"{key}: {message}"[:2000])


@contextlib.contextmanager
def capped(memory: int | None):
    """RLIMIT_DATA (private writable memory: heap and anonymous mappings) at what the process uses now plus
    `memory` and some slack, while the body runs: an allocation past it fails instead of growing the process.
    Linux only (elsewhere the estimate alone guards)."""
    try:
        import resource
        with open("/proc/self/status") as status:
            used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmData:"))
    except (ImportError, OSError, StopIteration):
        yield
        return
    if memory is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = used + memory + SLACK
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def _exactly(channel: socket.socket, n: int) -> bytes:
    data = bytearray(n)
    view, got = memoryview(data), 0
    while got < n:
        chunk = channel.recv_into(view[got:])
        if chunk == 0:
            raise SystemExit(0)  # the parent closed the socket (or died): nothing more to do
        got += chunk
    return bytes(data)


class Arena:
    """The memory file (memfd) replies go through, mapped once here and once in the parent and reused: a fresh one
    per reply would cost more than the copy into it (the kernel zeroes every new page). A larger reply replaces it
    with a larger one, whose descriptor rides with that reply."""

    def __init__(self):
        self.fd, self.map = -1, None

    def put(self, arrays: tuple[np.ndarray, ...]) -> int | None:
        """Copy the arrays one after another to the start of the arena; returns the descriptor to send if the
        arena is new."""
        nbytes = sum(a.nbytes for a in arrays)
        fresh = None
        if self.map is None or nbytes > len(self.map):
            self.close()
            self.fd = fresh = os.memfd_create("wan_train-frames", os.MFD_CLOEXEC)
            os.ftruncate(self.fd, nbytes)
            self.map = mmap.mmap(self.fd, nbytes, flags=mmap.MAP_SHARED | POPULATE)
        offset = 0
        for array in arrays:
            view = np.frombuffer(self.map, array.dtype, count=array.size, offset=offset).reshape(array.shape)
            np.copyto(view, array)
            offset += array.nbytes
        return fresh

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
            os.close(self.fd)
            self.map = None


ARENA = Arena()


def _send(channel: socket.socket, header: dict, *arrays: np.ndarray) -> None:
    """The header; the arrays (the frames, then the sound) go through the arena (Linux: the header says so, and a
    new arena's descriptor comes with its first byte), else after the header on the socket."""
    arena = sum(a.nbytes for a in arrays) > 0 and hasattr(os, "memfd_create")
    fresh = ARENA.put(arrays) if arena else None
    raw = json.dumps(header if not arrays else {**header, "arena": len(ARENA.map) if arena else None}).encode()
    message = HEADER.pack(len(raw)) + raw
    if fresh is not None:
        socket.send_fds(channel, [message[:1]], [fresh])
        message = message[1:]
    channel.sendall(message)
    if not arena:
        for array in arrays:
            channel.sendall(memoryview(np.ascontiguousarray(array)).cast("B"))


if __name__ == "__main__":
    main()
