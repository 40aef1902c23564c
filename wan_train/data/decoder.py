"""The parent side of the decoding process (decoder_child.py): one per process that decodes (each DataLoader
worker, or the main process), started on first use and again after a decode it had to kill.

The two talk over a Unix socket: a request sends the video bytes (and a sound member's) and waits for the frames
(and the clip's sound) until the sample's deadline; they come back through a memory file (memfd) both map, copied
out of it once (where there is no memfd, through the socket itself); past it, the decoding
process is killed (SIGKILL: native code stops too) and the sample is skipped as `timeout`. A decoder that dies on
its own (a crash in a codec, the kernel's OOM killer) skips the sample as `undecodable` / `memory_limit` and is
restarted for the next one. Its stderr (ffmpeg's complaints about broken streams) goes to a temporary file, not
the training log; its last lines are quoted when it dies."""

from __future__ import annotations

import atexit
import json
import mmap
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from wan_train.data.errors import SampleError

CHILD = Path(__file__).with_name("decoder_child.py")
HEADER_BYTES = 8
READY = {"ready": True}  # the decoding process's first reply, once it has imported what it needs
START_TIMEOUT = 120.0  # seconds for that (a cold import from network storage can be slow)
POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # map the frames' pages at once, not one fault at a time
# the signals a job's processes all receive (Ctrl-C, SIGTERM on preemption, SLURM's requeue warning): the child
# ignores them (decoder_child.JOB_SIGNALS, the same; it runs as a script, apart from the package)
JOB_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)
# one thread per decoder, and a small malloc arena count: the memory cap counts what threads reserve
CHILD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}


class DecoderProcess:
    def __init__(self):
        self.process: subprocess.Popen | None = None
        self.socket: socket.socket | None = None
        self.arena: mmap.mmap | None = None  # the decoding process's frames arrive at its start
        self.stderr = None

    def decode(self, video: bytes, header: dict, *, timeout: float | None, key: str,
               member: bytes = b"") -> tuple[dict, np.ndarray | None, np.ndarray | None]:
        """Send one request (the video, then a sound member's bytes where header["audio"] names one); returns the
        reply header, the frames and the sound (float32 [T], None where none was asked; both None if refused).
        timeout: seconds, or None for no limit; past it the decoding process is killed and TimeoutError raised."""
        if self.process is None or self.process.poll() is not None:
            self._start(key)  # not the sample's time: the deadline starts after
        end = None if timeout is None else time.monotonic() + timeout
        raw = json.dumps({**header, "nbytes": len(video)}).encode()
        try:
            self.socket.sendall(len(raw).to_bytes(HEADER_BYTES, "big") + raw)
            self.socket.sendall(video)
            if member:
                self.socket.sendall(member)
            reply, fds = self._reply(end, key)
        except (BrokenPipeError, ConnectionResetError):
            raise self._died(key) from None
        if not reply["ok"]:
            return reply, None, None
        shape = tuple(reply["shape"])
        sizes = (int(np.prod(shape)), 4 * reply["audio"]["samples"] if reply.get("audio") else 0)
        if fds:  # a new arena (the first, or a larger one)
            with os.fdopen(fds[0], "rb") as memory:
                self.arena = mmap.mmap(memory.fileno(), reply["arena"], flags=mmap.MAP_SHARED | POPULATE)
        if reply["arena"] is None:
            payload = np.frombuffer(self._read(sum(sizes), end, key), np.uint8)
        else:  # copied out: the next reply reuses the arena
            payload = np.frombuffer(self.arena, np.uint8, count=sum(sizes)).copy()
        frames = payload[:sizes[0]].reshape(shape)
        # the sound starts wherever the frames end: copied to its own (aligned) memory, a few hundred KiB
        sound = payload[sizes[0]:].view(np.float32).copy() if reply.get("audio") else None
        return reply, frames, sound

    def _reply(self, end: float | None, key: str) -> tuple[dict, list[int]]:
        """The reply's header, and the file descriptor that came with it (the frames), if any."""
        head, fds = bytearray(), []
        while len(head) < HEADER_BYTES:
            self._wait(end, key)
            data, received, _, _ = socket.recv_fds(self.socket, HEADER_BYTES - len(head), 1)
            if not data:
                raise self._died(key)
            head += data
            fds += received
        return json.loads(self._read(int.from_bytes(head, "big"), end, key)), fds

    def _read(self, n: int, end: float | None, key: str) -> bytearray:
        """Exactly n bytes (a bytearray: frames read into it need no copy to be writable)."""
        out = bytearray(n)
        view, got = memoryview(out), 0
        while got < n:
            self._wait(end, key)
            chunk = self.socket.recv_into(view[got:])
            if chunk == 0:
                raise self._died(key)
            got += chunk
        return out

    def _wait(self, end: float | None, key: str) -> None:
        """Until the decoding process says something; past the deadline it is killed."""
        wait = None if end is None else end - time.monotonic()
        if wait is not None and (wait <= 0 or not select.select([self.socket], [], [], wait)[0]):
            self.kill()
            raise TimeoutError(key)

    def _start(self, key: str) -> None:
        """Start the decoding process and wait for its imports (its first reply, READY)."""
        self.kill()
        self.stderr = tempfile.TemporaryFile()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # the job's signals blocked across the start (the child inherits the mask), so that one sent to the whole
        # job (SLURM's requeue warning) cannot kill the child before it has set them to be ignored
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, JOB_SIGNALS)
        try:
            self.process = subprocess.Popen([sys.executable, str(CHILD), str(theirs.fileno())],
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr,
                                            env={**os.environ, **CHILD_ENV}, pass_fds=(theirs.fileno(),))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            theirs.close()
        self.socket = ours
        try:
            ready, _ = self._reply(time.monotonic() + START_TIMEOUT, key)
        except (SampleError, TimeoutError) as error:  # not the sample's fault: no sample could be decoded
            raise RuntimeError(f"the decoding process ({CHILD}) did not start within {START_TIMEOUT:g} s: "
                               f"{error if isinstance(error, SampleError) else 'no answer'}") from None
        if ready != READY:
            raise RuntimeError(f"the decoding process ({CHILD}) did not start: it said {ready}")

    def _died(self, key: str) -> SampleError:
        code = self.process.wait()
        self.stderr.seek(0)
        tail = self.stderr.read()[-500:].decode(errors="replace").strip().replace("\n", " | ")
        self.kill()
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        # SIGKILL that we did not send is the kernel's OOM killer
        reason = "memory_limit" if code == -signal.SIGKILL else "undecodable"
        return SampleError(reason, f"{key}: the decoder process died ({how}){': ' + tail if tail else ''}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
        if self.socket is not None:
            self.socket.close()
            self.socket = None
        self.arena = None


_DECODER: tuple[int, DecoderProcess] | None = None


def decoder() -> DecoderProcess:
    """This process's decoder (a forked DataLoader worker starts its own: the parent's pipes are not its own)."""
    global _DECODER
    if _DECODER is None or _DECODER[0] != os.getpid():
        _DECODER = (os.getpid(), DecoderProcess())
    return _DECODER[1]


@atexit.register
def _stop() -> None:
    if _DECODER is not None and _DECODER[0] == os.getpid():
        _DECODER[1].kill()
