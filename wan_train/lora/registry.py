"""Per-client registry of LoRA adapter versions on the filesystem.

Layout under ``root``::

    <root>/<client>/<adapter>/v0001/manifest.json + the published files (any relative paths)
    <root>/<client>/<adapter>/promoted.json        mutable pointer {"version": ..., "history": [...]}

A version folder is immutable once it exists (only the "scores" of its manifest may grow); the registry knows
nothing about weight formats. Publishing is safe with many writers on one filesystem: a version is assembled in a
private ``.staging-<uuid>`` folder and appears by a single ``os.rename``, so readers see a whole version or none,
and two writers can never land in the same number (rename onto a non-empty folder fails on POSIX).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from wan_train.fileio.durable import fsync_dir, write_text

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so concurrent promote / record_scores may lose an update
    fcntl = None

MANIFEST = "manifest.json"
PROMOTED = "promoted.json"
LATEST = "latest"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a client or adapter name
_NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit, without '..'"
_VERSION = re.compile(r"v(\d{4,})")
_VERSION_RULE = "'v' and 4 or more digits without extra leading zeros, e.g. v0001"
_REF_FORMS = "'client/adapter' (promoted, else newest), 'client/adapter@latest' or 'client/adapter/v0002'"
_STAGING = ".staging-"
_TMP = ".tmp-"  # infix of fileio.durable's temp files behind atomic writes (".manifest.json.tmp-<hex>")
_LOCK = ".lock"
_STALE_STAGING_S = 3600  # a staging folder untouched this long belongs to a crashed writer
_PUBLISH_TRIES = 100  # each lost race means another writer published, so this bounds only absurd contention
_RESERVED = ("client", "adapter", "version", "created", "files")
_CHUNK = 1 << 20  # bytes per read while copying / hashing; adapters can be GBs


class RegistryError(ValueError):
    """A bad name, ref, source or manifest, or a version that is missing, corrupt or refused by a gate."""


@dataclass(frozen=True)
class AdapterVersion:
    client: str
    adapter: str
    version: str
    path: Path
    manifest: dict = field(repr=False, compare=False)  # identity is the folder; scores may change under it

    @property
    def ref(self) -> str:
        return f"{self.client}/{self.adapter}/{self.version}"

    def file(self, relpath: str | os.PathLike) -> Path:
        """Path of one published file, e.g. ``file("high_noise/adapter_model.safetensors")``."""
        rel = Path(relpath).as_posix()
        files = self.manifest["files"]
        if rel not in files:
            raise RegistryError(f"{self.ref} has no file {rel!r}; it has {', '.join(sorted(files))}")
        return self.path / rel


class Registry:
    def __init__(self, root: str | os.PathLike = "adapters"):
        self.root = Path(root)

    # ---- publishing -------------------------------------------------------------------------------------------

    def publish(
        self, client: str, adapter: str, source: str | os.PathLike, manifest: Mapping, *, version: str | None = None
    ) -> AdapterVersion:
        """Copy the files under ``source`` into the next version (or exactly ``version``) with their hashes."""
        folder = self._adapter_dir(client, adapter)
        if version is not None:
            _check_version(version)
            if (folder / version).exists():
                raise _exists_error(client, adapter, version)
        source = Path(source)
        relpaths = _source_files(source)
        extra = _check_manifest(manifest)
        body = {"client": client, "adapter": adapter, "version": version, "created": _now(), **extra}
        folder.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(folder)
        staging = folder / f"{_STAGING}{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            body["files"] = {rel: _copy(source / rel, staging / rel) for rel in relpaths}
            for dirpath, _, _ in os.walk(staging):
                fsync_dir(dirpath)
            name = self._land(staging, folder, body, explicit=version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(folder)
        return self._load(client, adapter, name)

    def _land(self, staging: Path, folder: Path, body: dict, *, explicit: str | None) -> str:
        """Rename ``staging`` onto a version number; on a lost race take the next one."""
        for _ in range(1 if explicit else _PUBLISH_TRIES):
            name = explicit or _next_version(folder)
            body["version"] = name
            write_text(staging / MANIFEST, _dumps(body))  # durable inside staging before the rename publishes it
            try:
                os.rename(staging, folder / name)
                return name
            except OSError as e:
                # The target holds another writer's complete version (never an empty folder: see _next_version).
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                if explicit:
                    raise _exists_error(body["client"], body["adapter"], name) from None
        raise RegistryError(f"could not publish to {folder}: other writers took {_PUBLISH_TRIES} numbers in a row")

    # ---- reading ----------------------------------------------------------------------------------------------

    def versions(self, client: str, adapter: str) -> list[AdapterVersion]:
        """Every version of one adapter, oldest first ([] if there are none)."""
        return [self._load(client, adapter, name) for name in _version_names(self._adapter_dir(client, adapter))]

    def list(self, client: str | None = None) -> list[AdapterVersion]:
        """Every version of every adapter (of one client), sorted by client, adapter and version number."""
        clients = _subfolders(self.root) if client is None else [_check_name(client, "client")]
        return [v for c in clients for a in _subfolders(self.root / c) for v in self.versions(c, a)]

    def get(self, ref: str) -> AdapterVersion:
        """Resolve a ref: 'client/adapter' (promoted, else newest), 'client/adapter@latest', 'client/adapter/v0002'."""
        client, adapter, version = _parse_ref(ref)
        folder = self._adapter_dir(client, adapter)
        names = _version_names(folder)
        if not names:
            if not (self.root / client).is_dir():
                have = ", ".join(_subfolders(self.root)) or "no clients"
                raise RegistryError(f"{client}: no such client; {self.root} has {have}")
            have = ", ".join(a for a in _subfolders(self.root / client) if _version_names(self.root / client / a))
            raise RegistryError(f"{client}/{adapter}: no such adapter; {client} has {have or 'no adapters'}")
        if version is None:
            return self.promoted(client, adapter) or self._load(client, adapter, names[-1])
        if version == LATEST:
            return self._load(client, adapter, names[-1])
        if version not in names:
            have = ", ".join(names)
            raise RegistryError(f"{client}/{adapter}/{version}: no such version; {client}/{adapter} has {have}")
        return self._load(client, adapter, version)

    def promoted(self, client: str, adapter: str) -> AdapterVersion | None:
        folder = self._adapter_dir(client, adapter)
        path = folder / PROMOTED
        if not path.exists():
            return None
        name = _read_json(path).get("version")
        if not isinstance(name, str) or _version_number(name) is None:
            raise RegistryError(f"{path} is corrupt: 'version' is {name!r}, expected {_VERSION_RULE}")
        if name not in _version_names(folder):
            raise RegistryError(f"{path} points to {name}, which does not exist (deleted by hand?); promote another")
        return self._load(client, adapter, name)

    def _load(self, client: str, adapter: str, version: str) -> AdapterVersion:
        path = self._adapter_dir(client, adapter) / version
        manifest = _read_json(path / MANIFEST)
        for key in ("files", "scores"):
            if not isinstance(manifest.get(key), dict):
                raise RegistryError(f"{path / MANIFEST} is corrupt: {key!r} is missing or not a JSON object")
        return AdapterVersion(client, adapter, version, path, manifest)

    def _adapter_dir(self, client: str, adapter: str) -> Path:
        return self.root / _check_name(client, "client") / _check_name(adapter, "adapter")

    # ---- checking and promoting -------------------------------------------------------------------------------

    def verify(self, version: AdapterVersion) -> None:
        """Raise unless every file of the manifest is there with its size and sha256, and nothing else is."""
        root, files = version.path, version.manifest["files"]
        problems = [
            f"{MANIFEST} says {key} {version.manifest.get(key)!r} but the folder is {getattr(version, key)!r}"
            for key in ("client", "adapter", "version")
            if version.manifest.get(key) != getattr(version, key)
        ]
        for rel, record in sorted(files.items()):
            problem = _check_file(root, rel, record)
            if problem:
                problems.append(problem)
        # Our own atomic-write temp files come and go while record_scores runs; they are not tampering.
        extra = {r for r in _tree(root) if not PurePosixPath(r).name.startswith(f".{MANIFEST}{_TMP}")}
        for rel in sorted(extra - set(files) - {MANIFEST}):
            problems.append(f"{root / rel}: not in {MANIFEST} (added after publishing?)")
        if problems:
            raise RegistryError(f"{version.ref} failed verification:\n  " + "\n  ".join(problems))

    def promote(self, ref: str, *, require: Mapping[str, float] | None = None, force: bool = False) -> AdapterVersion:
        """Point 'client/adapter' at ``ref`` once it verifies and its scores meet every minimum in ``require``."""
        version = self.get(ref)
        self.verify(version)
        require = _check_scores(require or {}, what="require")
        failures = _gate(version.manifest["scores"], require)
        if failures and not force:
            raise RegistryError(f"cannot promote {version.ref}: {'; '.join(failures)} (force=True promotes anyway)")
        folder = version.path.parent
        with _locked(folder):  # read-modify-write of the history
            path = folder / PROMOTED
            history = _read_json(path).get("history", []) if path.exists() else []
            history.append({"version": version.version, "time": _now(), "require": require, "forced": bool(force)})
            write_text(path, _dumps({"version": version.version, "history": history}))
        return version

    def record_scores(self, ref: str, scores: Mapping[str, float]) -> AdapterVersion:
        """Merge eval ``scores`` into the manifest of ``ref``; nothing else in the manifest changes."""
        version = self.get(ref)
        scores = _check_scores(scores, what="scores")
        with _locked(version.path.parent):  # two evaluators recording different metrics must not drop either
            manifest = _read_json(version.path / MANIFEST)  # fresh: another writer may have added scores
            manifest["scores"] = {**manifest["scores"], **scores}
            write_text(version.path / MANIFEST, _dumps(manifest))
        return self._load(version.client, version.adapter, version.version)


# ---- names and refs ---------------------------------------------------------------------------------------------


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value) or ".." in value:
        raise RegistryError(f"bad {what} name {value!r}: use {_NAME_RULE}")
    return value


def _version_number(name: str) -> int | None:
    m = _VERSION.fullmatch(name)
    # Only the canonical spelling counts, so v0002 and v00002 can never both name version 2.
    return int(m[1]) if m and name == f"v{int(m[1]):04d}" else None


def _check_version(value: object) -> str:
    if not isinstance(value, str) or _version_number(value) is None:
        raise RegistryError(f"bad version {value!r}: use {_VERSION_RULE}")
    return value


def _parse_ref(ref: object) -> tuple[str, str, str | None]:
    if not isinstance(ref, str):
        raise RegistryError(f"bad ref {ref!r}: use {_REF_FORMS}")
    head, at, tag = ref.partition("@")
    parts = head.split("/")
    if len(parts) not in (2, 3) or (at and (tag != LATEST or len(parts) == 3)):
        raise RegistryError(f"bad ref {ref!r}: use {_REF_FORMS}")
    client, adapter = _check_name(parts[0], "client"), _check_name(parts[1], "adapter")
    if len(parts) == 3:
        return client, adapter, _check_version(parts[2])
    return client, adapter, LATEST if at else None


def _exists_error(client: str, adapter: str, version: str) -> RegistryError:
    return RegistryError(
        f"{client}/{adapter}/{version} exists; versions are immutable (publish without version= for the next one)"
    )


# ---- folders ----------------------------------------------------------------------------------------------------


def _subfolders(folder: Path) -> list[str]:
    """Client or adapter folders (valid names only, so staging and dot-files never show)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and NAME.fullmatch(p.name) and ".." not in p.name)


def _version_names(folder: Path) -> list[str]:
    """Published versions, oldest first: canonical vNNNN folders holding a manifest."""
    if not folder.is_dir():
        return []
    found = [(n, p.name) for p in folder.iterdir() if (n := _version_number(p.name)) is not None]
    return [name for _, name in sorted(found) if (folder / name / MANIFEST).is_file()]


def _next_version(folder: Path) -> str:
    # Counts every vNNNN entry, published or not: a hand-made empty v0003 must be skipped, because renaming onto an
    # empty folder succeeds silently and the race detection relies on the target being absent or non-empty.
    numbers = [n for p in folder.iterdir() if (n := _version_number(p.name)) is not None]
    return f"v{max(numbers, default=0) + 1:04d}"


def _source_files(source: Path) -> list[str]:
    if not source.is_dir():
        raise RegistryError(f"publish source {source} is not a folder{'' if source.exists() else ' (missing)'}")
    if (source / MANIFEST).exists() or (source / MANIFEST).is_symlink():
        raise RegistryError(f"{source / MANIFEST}: the registry writes manifest.json; pass its content as manifest=")
    relpaths = []
    for dirpath, dirnames, filenames in os.walk(source):  # does not follow links: linked folders are in dirnames
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                raise RegistryError(f"{path} is a symlink; publish copies regular files only (copy the target in)")
            if name in filenames and not path.is_file():
                raise RegistryError(f"{path} is not a regular file")
            if name in filenames:
                relpaths.append(path.relative_to(source).as_posix())
    if not relpaths:
        raise RegistryError(f"publish source {source} has no files")
    return sorted(relpaths)


def _tree(root: Path) -> set[str]:
    """Every non-folder entry under ``root`` (symlinks included), as posix relative paths."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            found.add((Path(dirpath) / name).relative_to(root).as_posix())
    return found


def _remove_stale_staging(folder: Path) -> None:
    cutoff = time.time() - _STALE_STAGING_S
    for path in folder.glob(f"{_STAGING}*"):
        with contextlib.suppress(OSError):  # another publisher may be removing it too
            # Newest mtime inside, not the folder's own: a live writer copying one huge file only touches that file.
            newest = max([path.lstat().st_mtime] + [(path / r).lstat().st_mtime for r in _tree(path)])
            if newest < cutoff:
                shutil.rmtree(path)


# ---- files and JSON ---------------------------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> dict:
    """Copy one file durably; the hash is of the bytes written, so a source changing mid-copy cannot mislead it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while chunk := fin.read(_CHUNK):
            digest.update(chunk)
            fout.write(chunk)
            size += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return {"sha256": digest.hexdigest(), "bytes": size}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_file(root: Path, rel: str, record: object) -> str | None:
    """One problem with a manifest entry and its file, or None."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
        return f"{MANIFEST} lists an unsafe path {rel!r}"
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str) or "bytes" not in record:
        return f"{MANIFEST} entry for {rel!r} is malformed: {record!r}"
    path = root / rel
    if path.is_symlink() or not path.is_file():
        return f"{path}: missing (listed in {MANIFEST})"
    size = path.stat().st_size
    if size != record["bytes"]:
        return f"{path}: corrupt or modified (expected {record['bytes']} bytes, found {size})"
    found = _sha256(path)
    if found != record["sha256"]:
        return f"{path}: corrupt or modified (expected sha256 {record['sha256']}, found {found})"
    return None


def _check_manifest(manifest: object) -> dict:
    if not isinstance(manifest, Mapping):
        raise RegistryError(f"manifest must be a dict, got {type(manifest).__name__}")
    taken = [key for key in _RESERVED if key in manifest]
    if taken:
        raise RegistryError(f"manifest sets {', '.join(taken)}: the registry writes these fields; leave them out")
    body = {**manifest, "scores": _check_scores(manifest.get("scores", {}), what="manifest['scores']")}
    try:
        _dumps(body)
    except (TypeError, ValueError) as e:
        raise RegistryError(f"manifest is not JSON-serialisable: {e}") from None
    return body


def _check_scores(scores: object, *, what: str) -> dict:
    if not isinstance(scores, Mapping):
        raise RegistryError(f"{what} must be a dict of metric -> number, got {type(scores).__name__}")
    for metric, value in scores.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not isinstance(metric, str) or not ok:
            raise RegistryError(f"{what}[{metric!r}] = {value!r}: expected a finite number under a string key")
    return dict(scores)


def _gate(scores: Mapping, require: Mapping[str, float]) -> list[str]:
    """Each metric below its minimum (or missing), as text naming metric, value and threshold."""
    failures = []
    for metric, minimum in require.items():
        value = scores.get(metric)
        if value is None:
            failures.append(f"{metric} is missing (requires >= {minimum})")
        elif not value >= minimum:
            failures.append(f"{metric} = {value} is below the minimum {minimum}")
    return failures


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _dumps(obj: dict) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False, allow_nan=False) + "\n"


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RegistryError(f"{path} is corrupt: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise RegistryError(f"{path} is corrupt: expected a JSON object, found {type(obj).__name__}")
    return obj


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Serialise read-modify-write of promoted.json and manifest scores between processes (advisory flock)."""
    if fcntl is None:
        yield
        return
    with open(folder / _LOCK, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
