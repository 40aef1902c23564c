"""Atomic, durable writes: whoever opens a path we write finds the whole previous content or the whole new one,
after a crash or a power cut too; new files get the permissions the umask gives (0666 & ~umask), new folders
0777 & ~umask (never mkstemp's 0600 / mkdtemp's 0700, which would hide a shared checkpoint from the team).

A file (`atomic_path`, `atomic_file`, `write_bytes`, `write_text`) is written to `.NAME.tmp-<hex>` beside it;
the file and its folder are fsynced, the temp file is renamed over NAME and the folder fsynced again: without
the first fsync a power cut can leave NAME renamed but empty (ext4, xfs), without the last the rename itself.
The permissions are set again after the writer ran: safetensors 0.8's save_file renames its own 0600 temp
file over the path it is given.

A folder (`atomic_directory`) is assembled in `.NAME.tmp-<hex>`; every file and folder in it is fsynced and it
is renamed `.NAME.ready-<hex>` (complete). An existing NAME is swapped with it in one step (Linux
renameat2(RENAME_EXCHANGE)), so NAME is at every moment the whole previous folder or the whole new one; what
NAME held is then renamed `.NAME.del-<hex>` and removed. Where no exchange exists (another OS, a filesystem
answering EINVAL) NAME is renamed `.NAME.old-<hex>` and the ready folder NAME: a crash between the two renames
leaves NAME missing beside a complete folder, and `recover_directory` (called by the next writer, and by
readers such as load_dit) renames it into place, the ready one first.

Leftovers: a `.tmp-` entry is a writer's work in progress, removed by `remove_leftovers` once untouched for
STALE_S; `.ready-` / `.old-` ones once NAME exists again; `.del-` ones always.

One writer per folder at a time (concurrent writers of one file are safe: the last rename wins). A reader that
opens a folder's files one by one while a writer replaces it can still see files of both: the swap is atomic,
a walk through the folder is not.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import shutil
import stat
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

TMP, READY, OLD, DEL = "tmp", "ready", "old", "del"  # leftover kinds: f".{name}.{kind}-{32 hex}"
STALE_S = 3600  # a temp entry untouched this long belongs to a crashed writer (a live one keeps writing)
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|ready|old|del)-[0-9a-f]{32}")
# errors of a filesystem or kernel that cannot do the call at all (as opposed to failing it)
_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP})
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # <fcntl.h>, <linux/fs.h>


def _load_renameat2():
    """libc's renameat2 (glibc >= 2.28), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


# ---------------------------------------------------------------------------------------------------- fsync

def fsync_dir(folder: str | os.PathLike) -> None:
    """Make the entries of `folder` durable (files created, renamed or removed in it). A no-op on Windows, where
    folders cannot be opened, and on filesystems that cannot sync a folder (EINVAL)."""
    if os.name != "nt":
        _fsync(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def fsync_file(path: str | os.PathLike) -> None:
    """Make a file's content durable, whoever wrote it (fsync flushes the file, not the descriptor)."""
    _fsync(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)  # Windows' _commit needs a writable handle


def _fsync(path: str | os.PathLike, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in _UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def make_dirs(folder: str | os.PathLike) -> Path:
    """mkdir -p with the umask's permissions, each new folder's entry made durable in its parent."""
    folder = Path(folder)
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    folder.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        fsync_dir(created.parent)
    return folder


# ---------------------------------------------------------------------------------------------------- files

@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp file beside `path` to write by name (torch.save, safetensors' save_file, tarfile);
    when the body succeeds it is fsynced and renamed over `path` (module docstring), else removed."""
    path = Path(path)
    make_dirs(path.parent)
    tmp = _sibling(path, TMP)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as to any new file
    try:
        file_mode = stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    try:
        yield tmp
        _set_mode(tmp, file_mode)
        fsync_file(tmp)
        fsync_dir(path.parent)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file open for writing that becomes `path` when the body succeeds (as atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        yield file


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path) as file:
        file.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    return write_bytes(path, text.encode(encoding))


# -------------------------------------------------------------------------------------------------- folders

@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp folder beside `path`; when the body succeeds everything in it is fsynced and it
    replaces `path` in one step (module docstring); when the body fails it is removed and `path` is untouched."""
    path = Path(path)
    make_dirs(path.parent)
    remove_leftovers(path.parent, name=path.name)  # restores `path` if a crashed writer left it missing
    tmp = _sibling(path, TMP)
    os.mkdir(tmp, 0o777)  # the umask applies
    try:
        folder_mode = stat.S_IMODE(os.stat(tmp).st_mode)
        yield tmp
        _settle_tree(tmp, folder_mode)
        ready = _sibling(path, READY)
        os.rename(tmp, ready)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)
    try:
        _swap_in(ready, path)
    except BaseException:
        if os.path.lexists(path):  # whole (old, or new after the exchange): what remains beside it is not needed
            with contextlib.suppress(OSError):
                _remove(ready)
        else:
            with contextlib.suppress(OSError):
                recover_directory(path)
        raise


def recover_directory(path: str | os.PathLike) -> bool:
    """Put a folder back that an interrupted replacement left missing: the newest complete `.NAME.ready-*`
    beside it (the replacement, finished), else the newest `.NAME.old-*` (the previous folder). True if it
    restored one."""
    path = Path(path)
    if os.path.lexists(path):
        return False
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return False
    for kind in (READY, OLD):
        candidates = sorted(((_mtime(e), e.path) for e in entries
                             if (m := _LEFTOVER.fullmatch(e.name)) and m["name"] == path.name and m["kind"] == kind),
                            reverse=True)
        for _, candidate in candidates:
            try:
                os.rename(candidate, path)
            except FileNotFoundError:  # another process restored it first
                continue
            except OSError as error:
                if error.errno in (errno.EEXIST, errno.ENOTEMPTY):  # `path` appeared meanwhile
                    return False
                raise
            fsync_dir(path.parent)
            log.warning("%s was missing (a replacement was interrupted); restored it from %s", path,
                        Path(candidate).name)
            return True
    return False


def remove_leftovers(folder: str | os.PathLike, *, name: str | None = None, stale_s: float = STALE_S) -> None:
    """Remove what crashed writers left in `folder` (of the entry `name` only, if given): temp files and folders
    untouched for `stale_s` seconds, and the superseded folders of interrupted replacements once their target is
    back (recover_directory first). Entries that cannot be removed are logged and left."""
    folder = Path(folder)
    found = [(Path(e.path), m["name"], m["kind"]) for e in os.scandir(folder)
             if (m := _LEFTOVER.fullmatch(e.name)) and (name is None or m["name"] == name)]
    for target in {target for _, target, kind in found if kind in (READY, OLD)}:
        recover_directory(folder / target)
    cutoff = time.time() - stale_s
    for path, target, kind in found:
        try:
            if kind == TMP:
                remove = _newest_mtime(path) < cutoff
            else:
                remove = kind == DEL or os.path.lexists(folder / target)
            if remove:
                _remove(path)
        except FileNotFoundError:  # restored, or removed by another writer
            continue
        except OSError as error:
            log.warning("could not remove the leftover %s: %s", path, error)


def _swap_in(ready: Path, path: Path) -> None:
    parent = path.parent
    if not os.path.lexists(path):
        os.rename(ready, path)
        fsync_dir(parent)
        return
    trash = _sibling(path, DEL)
    if _exchange(ready, path):
        fsync_dir(parent)
        os.rename(ready, trash)  # `ready` holds the previous folder now
    else:
        old = _sibling(path, OLD)
        os.rename(path, old)
        fsync_dir(parent)  # on disk, too, `path` is free before the ready folder takes its name
        try:
            os.rename(ready, path)
        except FileNotFoundError:
            if not os.path.lexists(path):
                raise
            # a reader's recover_directory moved the ready folder into place between our renames
        fsync_dir(parent)
        os.rename(old, trash)  # a half-removed folder must never look like a complete .old- one
    fsync_dir(parent)
    try:
        _remove(trash)
    except OSError as error:  # the new folder is in place; what is left is removed by the next writer
        log.warning("could not remove the replaced folder %s: %s", trash, error)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the OS or filesystem cannot (the caller falls back)."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _settle_tree(folder: Path, folder_mode: int) -> None:
    """Every file and folder under `folder` (itself included) gets the umask's permissions and is fsynced,
    deepest first. Execute bits a writer set on a file are kept (within the umask)."""
    file_mode = folder_mode & 0o666
    for dirpath, _, filenames in os.walk(folder, topdown=False):
        for filename in filenames:
            file = os.path.join(dirpath, filename)
            if not os.path.islink(file):
                _set_mode(file, file_mode | (os.lstat(file).st_mode & folder_mode & 0o111))
                fsync_file(file)
        _set_mode(dirpath, folder_mode)
        fsync_dir(dirpath)


def _set_mode(path: str | os.PathLike, mode: int) -> None:
    if stat.S_IMODE(os.lstat(path).st_mode) != mode:
        os.chmod(path, mode)


def _sibling(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{uuid.uuid4().hex}")


def _mtime(entry: os.DirEntry) -> float:
    try:
        return entry.stat(follow_symlinks=False).st_mtime
    except FileNotFoundError:  # taken by another process since the listing; its rename will fail and be skipped
        return 0.0


def _newest_mtime(path: Path) -> float:
    # the newest inside, not the folder's own: a live writer of one huge file only touches that file
    newest = path.lstat().st_mtime
    for dirpath, dirnames, filenames in os.walk(path):
        for entry in dirnames + filenames:
            newest = max(newest, os.lstat(os.path.join(dirpath, entry)).st_mtime)
    return newest


def _remove(path: Path) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)
