"""The decoding process (wan_train.data.decoder starts it): reads requests from its socket, decodes video bytes
with decord (PyAV where decord fails) and hands the frames back. Run as a script, by path, so that it imports
numpy, decord and PyAV only: no torch, no wan_train (a restart after a killed decode costs a fraction of a second).

Why a process of its own: decoding is native code, which a Python timer cannot interrupt (a SIGALRM handler runs
only when decord returns), and whose memory Python cannot bound. Here the parent kills a decode that runs past
its deadline, and a decode whose working memory would pass the sample's bound is refused before it starts (from
the stream's real size) and capped while it runs (RLIMIT_DATA).

Protocol, over the Unix socket whose descriptor is argv[1] (both ways): 8-byte big-endian length, a JSON header of
that length, then its payload: the video bytes of a request; the frames of a reply, at the start of the arena, a
memfd shared with the parent (see Arena; without memfd, as bytes after the header).
Request: {"key", "indices" (sorted, distinct source frames), "size" [w, h] or [-1, -1] (native), "expect"
(declared {"width", "height", "fps", "num_frames"}, or null), "memory" (bytes, or null), "nbytes" (video)}.
Reply: {"ok": true, "shape": [N, H, W, 3], "resize": [w, h] or null (the parent still has to scale: the fallback
decoders return native frames)} + N*H*W*3 bytes, or {"ok": false, "reason", "message"}."""

import signal

if __name__ == "__main__":
    # the parent alone decides this process's life (SIGKILL at a sample's deadline, EOF when it goes): a signal
    # meant for the job (Ctrl-C, SLURM's requeue warning, SIGTERM on preemption) reaches every process of it, and
    # would otherwise cost the sample being decoded. First of all, before the imports below.
    for _signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
        signal.signal(_signum, signal.SIG_IGN)

import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
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
        try:
            frames, resize = decode(video, request)
        except Refused as refused:
            _send(channel, {"ok": False, "reason": refused.reason, "message": str(refused)})
            continue
        except MemoryError:
            _send(channel, {"ok": False, "reason": "memory_limit",
                            "message": f"{request['key']}: decoding ran out of its memory bound"})
            continue
        _send(channel, {"ok": True, "shape": list(frames.shape), "resize": resize}, frames)


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
    """The memory file (memfd) frames go through, mapped once here and once in the parent and reused: a fresh one
    per reply would cost more than the copy into it (the kernel zeroes every new page). A larger reply replaces it
    with a larger one, whose descriptor rides with that reply."""

    def __init__(self):
        self.fd, self.map = -1, None

    def put(self, frames: np.ndarray) -> int | None:
        """Copy `frames` to the start of the arena; returns the descriptor to send if the arena is new."""
        fresh = None
        if self.map is None or frames.nbytes > len(self.map):
            self.close()
            self.fd = fresh = os.memfd_create("wan_train-frames", os.MFD_CLOEXEC)
            os.ftruncate(self.fd, frames.nbytes)
            self.map = mmap.mmap(self.fd, frames.nbytes, flags=mmap.MAP_SHARED | POPULATE)
        np.copyto(np.frombuffer(self.map, np.uint8, count=frames.nbytes).reshape(frames.shape), frames)
        return fresh

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
            os.close(self.fd)
            self.map = None


ARENA = Arena()


def _send(channel: socket.socket, header: dict, frames: np.ndarray | None = None) -> None:
    """The header; frames go through the arena (Linux: the header says so, and a new arena's descriptor comes
    with its first byte), else after the header on the socket."""
    arena = frames is not None and frames.nbytes > 0 and hasattr(os, "memfd_create")
    fresh = ARENA.put(frames) if arena else None
    raw = json.dumps(header if frames is None else {**header, "arena": len(ARENA.map) if arena else None}).encode()
    message = HEADER.pack(len(raw)) + raw
    if fresh is not None:
        socket.send_fds(channel, [message[:1]], [fresh])
        message = message[1:]
    channel.sendall(message)
    if frames is not None and not arena:
        channel.sendall(memoryview(np.ascontiguousarray(frames)).cast("B"))


if __name__ == "__main__":
    main()
