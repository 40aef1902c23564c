"""Durable writes (wan_train.fileio.durable) and the checkpoints, DiT folders and exports written through them:
what a reader finds is the whole old content or the whole new one after a crash at any step (a forked writer
that dies with os._exit between two system calls, or is killed with SIGKILL at a random moment), fsync reaches
the file and its folder around every rename, and new files and folders get the umask's permissions."""

import itertools
import os
import random
import signal
import stat
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import randomize_
from wan_train.fileio import durable
from wan_train.fileio.durable import atomic_directory, recover_directory, remove_leftovers, write_bytes, write_text
from wan_train.lora import adapter_modules, add_adapter
from wan_train.lora.formats import write_lora
from wan_train.models import WanDiT, get_size, load_dit, save_dit
from wan_train.training.adapters import export_adapter
from wan_train.training.callbacks import AtomicCheckpointIO

posix_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork, /proc/self/fd and umask modes")
CRASHED = 113  # exit status of a writer that died at its chosen step
# the calls that move a write from one on-disk state to the next; a crash lands before one of them
STEPS = ("mkdir", "rename", "replace", "fsync", "unlink", "rmdir")


# ------------------------------------------------------------------------------------------------- helpers

MICRO = get_size("tiny").dit.replace(dim=64, ffn_dim=128, num_layers=1, text_dim=32, freq_dim=32)  # 0.1M params


def micro(seed=0):
    return randomize_(WanDiT(MICRO), seed=seed)


def folder_content(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def wait(pid: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"writer {pid} hung")


def fork() -> int:
    pid = os.fork()
    if pid == 0:
        torch.set_num_threads(1)  # the parent's OpenMP pool does not survive fork: a parallel region would hang
    return pid


def crash_at(step: int, write) -> bool:
    """Run write() in a forked process that dies at its step-th call of STEPS (or renameat2), with no cleanup,
    as a power cut or kill would leave it; True if it died there, False if write() finished first."""
    pid = fork()
    if pid == 0:
        try:
            counter = itertools.count()

            def dying(real):
                def call(*args, **kwargs):
                    if next(counter) == step:
                        os._exit(CRASHED)
                    return real(*args, **kwargs)
                return call

            for name in STEPS:
                setattr(os, name, dying(getattr(os, name)))
            if durable._renameat2 is not None:
                durable._renameat2 = dying(durable._renameat2)
            write()
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    code = wait(pid)
    assert code in (0, CRASHED), f"the writer failed at step {step} (exit {code})"
    return code == CRASHED


def crash_everywhere(reset, write, check) -> int:
    """From the state reset() leaves, a crash at each step of write() in turn, check() after each and after the
    complete write; returns the number of steps."""
    for step in itertools.count():
        reset()
        crashed = crash_at(step, write)
        check()
        if not crashed:
            return step
    raise AssertionError("unreachable")


@pytest.fixture(params=["exchange", "two renames"])
def swap(request, monkeypatch, tmp_path):
    """Both ways a folder replaces another: renameat2(RENAME_EXCHANGE), and the two renames of systems without
    it (libc's renameat2 taken away, as on macOS or glibc < 2.28)."""
    if request.param == "exchange":
        a, b = tmp_path / ".probe-a", tmp_path / ".probe-b"
        a.mkdir(), b.mkdir()
        if not durable._exchange(a, b):
            pytest.skip("this filesystem cannot exchange folders")
        a.rmdir(), b.rmdir()
    else:
        monkeypatch.setattr(durable, "_renameat2", None)
    return request.param


@pytest.fixture(params=[0o022, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


class FsyncLog:
    """What os.fsync was called on (the path behind each descriptor) and each rename, in order."""

    def __init__(self, monkeypatch):
        self.events = []
        real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

        def fsync(fd):
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            return real_fsync(fd)

        def replace(src, dst, **kwargs):
            self.events.append(("rename", os.path.realpath(src), os.path.realpath(dst)))
            return real_replace(src, dst, **kwargs)

        def rename(src, dst, **kwargs):
            self.events.append(("rename", os.path.realpath(src), os.path.realpath(dst)))
            return real_rename(src, dst, **kwargs)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "rename", rename)
        if durable._renameat2 is not None:
            real_exchange = durable._renameat2

            def exchange(fd_a, a, fd_b, b, flags):
                self.events.append(("exchange", os.fsdecode(os.path.realpath(a)), os.fsdecode(os.path.realpath(b))))
                return real_exchange(fd_a, a, fd_b, b, flags)
            monkeypatch.setattr(durable, "_renameat2", exchange)

    def synced(self, until: int) -> set[str]:
        return {e[1] for e in self.events[:until] if e[0] == "fsync"}


# ---------------------------------------------------------------------------------------------- fsync

@posix_only
def test_a_file_write_fsyncs_the_file_and_its_folder_before_and_after_the_rename(tmp_path, monkeypatch):
    log = FsyncLog(monkeypatch)
    target = tmp_path / "new" / "config.yaml"
    write_text(target, "a: 1\n")
    assert target.read_text() == "a: 1\n"
    (rename,) = [i for i, e in enumerate(log.events) if e[0] == "rename"]
    tmp = log.events[rename][1]
    assert log.events[rename] == ("rename", tmp, str(target)) and Path(tmp).parent == target.parent
    folder = str(target.parent)
    assert log.events[rename - 2:] == [("fsync", tmp), ("fsync", folder), log.events[rename], ("fsync", folder)]
    assert ("fsync", str(tmp_path)) in log.events[:rename]  # the new folder's own entry


@posix_only
def test_a_checkpoint_is_fsynced_before_it_replaces_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    log = FsyncLog(monkeypatch)
    AtomicCheckpointIO().save_checkpoint({"step": 2, "w": torch.arange(4.0)}, path)
    (rename,) = [i for i, e in enumerate(log.events) if e[0] == "rename"]
    tmp = log.events[rename][1]
    assert log.events[rename - 2:rename + 2] == [("fsync", tmp), ("fsync", str(path.parent)),
                                                 ("rename", tmp, str(path)), ("fsync", str(path.parent))]
    assert torch.load(path, weights_only=True)["step"] == 2


@posix_only
def test_a_folder_is_fsynced_whole_before_it_replaces_the_old_one(tmp_path, monkeypatch, swap):
    parent = Path(os.path.realpath(tmp_path))
    path = parent / "dit"
    with atomic_directory(path) as tmp:
        (tmp / "old.txt").write_text("old")
    log = FsyncLog(monkeypatch)
    with atomic_directory(path) as tmp:
        (tmp / "sub").mkdir()
        for name in ("a.safetensors", "config.json", "sub/b.json"):
            (tmp / name).write_text(name)
        written = [str(tmp / n) for n in ("a.safetensors", "config.json", "sub/b.json", "sub")] + [str(tmp)]
    assert folder_content(path) == {"a.safetensors": b"a.safetensors", "config.json": b"config.json",
                                    "sub/b.json": b"sub/b.json"}
    # the temp folder is called ready once every file and folder in it is synced...
    complete = next(i for i, e in enumerate(log.events) if e[0] == "rename" and e[1] == written[-1])
    assert set(written) <= log.synced(complete)
    # ...and the parent is synced before and after the step that puts it at `path`
    into = next(i for i, e in enumerate(log.events) if e[0] in ("rename", "exchange") and e[2] == str(path))
    assert log.events[into][1] == log.events[complete][2]
    assert log.events[into - 1] == log.events[into + 1] == ("fsync", str(parent))
    assert ("exchange" in [e[0] for e in log.events]) == (swap == "exchange")
    assert [p.name for p in tmp_path.iterdir()] == ["dit"]


# ---------------------------------------------------------------------------------------------- umask

@posix_only
def test_files_and_folders_get_the_umask_permissions(tmp_path, umask):
    file, folder = 0o666 & ~umask, 0o777 & ~umask
    write_bytes(tmp_path / "new" / "x.bin", b"x")
    assert mode(tmp_path / "new" / "x.bin") == file and mode(tmp_path / "new") == folder
    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "f").write_text("f")
    assert mode(tmp_path / "d") == folder and mode(tmp_path / "d" / "f") == file


@posix_only
def test_a_saved_checkpoint_has_the_umask_permissions(tmp_path, umask):
    path = tmp_path / "run" / "checkpoints" / "step=0000010.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 10}, path)
    assert mode(path) == 0o666 & ~umask
    assert mode(path.parent) == mode(path.parent.parent) == 0o777 & ~umask


@posix_only
def test_a_saved_dit_folder_has_the_umask_permissions(tmp_path, umask):
    # (safetensors 0.8's save_file makes 0600 files whatever the umask: the shards would be the owner's alone)
    save_dit(micro(), tmp_path / "dit", max_shard_size="200KB")
    save_dit(micro(), tmp_path / "dit", max_shard_size="200KB")  # the replacing write too
    assert mode(tmp_path / "dit") == 0o777 & ~umask
    files = {f.name: mode(f) for f in (tmp_path / "dit").iterdir()}
    assert "diffusion_pytorch_model-00002-of-00003.safetensors" in files and "config.json" in files
    assert set(files.values()) == {0o666 & ~umask}


@posix_only
def test_lora_exports_have_the_umask_permissions(tmp_path, umask):
    dit = micro()
    add_adapter(dit, target="attn_qkvo", rank=2, alpha=2.0)
    folder = export_adapter(dit, tmp_path / "adapter", base="sha256:0", expert=None)
    assert mode(folder) == 0o777 & ~umask
    assert sorted((f.name, mode(f)) for f in folder.iterdir()) == [
        ("adapter_config.json", 0o666 & ~umask), ("adapter_model.safetensors", 0o666 & ~umask)]
    comfy = write_lora(tmp_path / "comfy" / "a.safetensors", adapter_modules(dit), format="comfyui")[0]
    assert mode(comfy) == 0o666 & ~umask and mode(comfy.parent) == 0o777 & ~umask


# ---------------------------------------------------------------------------------- crash at every step

@posix_only
def test_a_file_is_old_or_new_after_a_crash_at_any_step(tmp_path):
    path = tmp_path / "last.ckpt"

    def save(step):
        AtomicCheckpointIO().save_checkpoint({"step": step, "w": torch.full((64,), float(step))}, path)

    def check():
        saved = torch.load(path, weights_only=True)
        assert saved["step"] in (1, 2) and torch.equal(saved["w"], torch.full((64,), float(saved["step"])))

    steps = crash_everywhere(lambda: save(1), lambda: save(2), check)
    assert steps >= 4 and torch.load(path, weights_only=True)["step"] == 2


@posix_only
def test_a_folder_is_old_or_new_after_a_crash_at_any_step(tmp_path, swap):
    path = tmp_path / "dit"
    old = {"a.bin": b"old a" * 100, "sub/b.json": b"old b"}
    new = {"a.bin": b"new a" * 50, "sub/b.json": b"new b", "c.json": b"new c"}

    def write(content):
        with atomic_directory(path) as tmp:
            for rel, data in content.items():
                (tmp / rel).parent.mkdir(exist_ok=True)
                (tmp / rel).write_bytes(data)

    restored = []

    def check():
        if swap == "exchange":  # readers need no recovery at all: `dit` was there, whole, at every step
            assert folder_content(path) in (old, new)
        restored.append(recover_directory(path))
        assert folder_content(path) in (old, new)

    steps = crash_everywhere(lambda: write(old), lambda: write(new), check)
    assert steps >= 12 and folder_content(path) == new
    # two renames: a crash between them left `dit` missing, and recovery put the complete new one in place
    assert any(restored) == (swap == "two renames")
    write(old)  # the next writer clears what the crashed ones left, but for their fresh temp folders
    kinds = {durable._LEFTOVER.fullmatch(p.name)["kind"] for p in tmp_path.iterdir() if p != path}
    assert kinds == {durable.TMP}


@posix_only
def test_a_first_folder_is_absent_or_whole_after_a_crash_at_any_step(tmp_path, swap):
    path = tmp_path / "dit"

    def write():
        with atomic_directory(path) as tmp:
            (tmp / "a.bin").write_bytes(b"a" * 1000)

    def check():
        assert not path.exists() or folder_content(path) == {"a.bin": b"a" * 1000}

    def reset():
        if path.exists():
            durable._remove(path)

    crash_everywhere(reset, write, check)


@pytest.mark.slow
@posix_only
def test_save_dit_leaves_the_old_or_the_new_dit_after_a_crash_at_any_step(tmp_path, swap):
    first, second = micro(seed=1), micro(seed=2)
    path = tmp_path / "dit"
    expected = [first.state_dict(), second.state_dict()]

    def check():
        loaded = load_dit(path).state_dict()  # load_dit itself restores a folder the two renames left missing
        assert any(all(torch.equal(loaded[k], v) for k, v in weights.items()) for weights in expected)

    crash_everywhere(lambda: save_dit(first, path, max_shard_size="200KB"),  # two shards and an index
                     lambda: save_dit(second, path, max_shard_size="200KB"), check)
    assert all(torch.equal(load_dit(path).state_dict()[k], v) for k, v in expected[1].items())


@posix_only
def test_a_reader_restores_the_folder_two_renames_left_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(durable, "_renameat2", None)
    model = micro()
    save_dit(model, tmp_path / "dit")
    # the state between the two renames: `dit` moved aside, the complete new one beside it
    old = tmp_path / f".dit.old-{'1' * 32}"
    (tmp_path / "dit").rename(old)
    ready = tmp_path / f".dit.ready-{'2' * 32}"
    save_dit(micro(seed=5), tmp_path / "staging")
    (tmp_path / "staging").rename(ready)
    loaded = load_dit(tmp_path / "dit")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in micro(seed=5).state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["dit", old.name])
    save_dit(model, tmp_path / "dit")  # the next writer removes the superseded folder
    assert [p.name for p in tmp_path.iterdir()] == ["dit"]


def test_temp_folders_of_crashed_writers_are_removed_once_stale(tmp_path):
    stale, fresh = tmp_path / f".dit.tmp-{'a' * 32}", tmp_path / f".dit.tmp-{'b' * 32}"
    for folder in (stale, fresh):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "shard.safetensors").write_bytes(b"half")
    hour_ago = time.time() - durable.STALE_S - 60
    for p in (stale / "sub" / "shard.safetensors", stale / "sub", stale):
        os.utime(p, (hour_ago, hour_ago))
    (tmp_path / f".last.ckpt.tmp-{'c' * 32}").write_bytes(b"half")
    os.utime(tmp_path / f".last.ckpt.tmp-{'c' * 32}", (hour_ago, hour_ago))
    with atomic_directory(tmp_path / "dit") as tmp:
        (tmp / "x").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["dit", fresh.name, f".last.ckpt.tmp-{'c' * 32}"])
    remove_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["dit", fresh.name])


def test_a_failed_body_leaves_the_old_folder_and_no_temp(tmp_path):
    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "f").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "d") as tmp:
        (tmp / "f").write_text("new")
        raise RuntimeError("disk full")
    assert folder_content(tmp_path / "d") == {"f": b"old"} and [p.name for p in tmp_path.iterdir()] == ["d"]


# ------------------------------------------------------------------------------------------- kill -9

@posix_only
def test_kill_9_at_a_random_moment_leaves_the_previous_save_loadable(tmp_path, swap):
    """A writer that keeps saving the DiT and a checkpoint (every tensor = the save's number) is killed with
    SIGKILL at random moments; each time both load, each whole (one number throughout)."""
    base = micro().state_dict()
    dit_path, ckpt_path = tmp_path / "dit", tmp_path / "checkpoints" / "last.ckpt"
    model = WanDiT(MICRO)

    def save(i):
        state = {k: torch.full_like(v, i) for k, v in base.items()}
        save_dit(model, dit_path, max_shard_size="200KB", state_dict=state)
        AtomicCheckpointIO().save_checkpoint({"step": i, "w": torch.full((1000,), float(i))}, ckpt_path)

    save(0)
    rng, last = random.Random(0), 0
    for trial in range(4):
        pid = fork()
        if pid == 0:
            try:
                for i in itertools.count(last + 1):
                    save(i)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.05, 0.3))
        os.kill(pid, signal.SIGKILL)
        assert wait(pid) == -signal.SIGKILL
        state = load_dit(dit_path).state_dict()
        values = {float(v.flatten()[0]) for v in state.values()}
        assert len(values) == 1, f"trial {trial}: a DiT mixing saves {sorted(values)}"
        assert all(torch.all(v == next(iter(values))) for v in state.values())
        checkpoint = torch.load(ckpt_path, weights_only=True)
        assert torch.equal(checkpoint["w"], torch.full((1000,), float(checkpoint["step"])))
        last = max(values.pop(), checkpoint["step"])
    assert last > 0  # the writer did replace the first saves
    assert load_file(next(dit_path.glob("*.safetensors")))  # plain safetensors readers too
