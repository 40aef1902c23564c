"""The watermark key: the one configured (marking.watermark.key), else a random key made once per installation
in the config folder (config_dir()/watermark/key: folder 0700, file 0600), so outputs are always marked and the
same machine finds its marks again. Readers name a key by its key_id (a hash), never by the key."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from wan_train.fileio.durable import atomic_file, make_dirs
from wan_train.marking.home import config_dir, locked

KEY_FILE = "key"


def key_id(key: str) -> str:
    return hashlib.sha256(("wan_train.key_id:" + key).encode()).hexdigest()[:12]


def installation_key(folder: Path | None = None, *, create: bool = True) -> str | None:
    """This installation's watermark key (made on first use unless create=False: then None when there is none)."""
    folder = folder or config_dir() / "watermark"
    path = folder / KEY_FILE
    if not path.is_file():
        if not create:
            return None
        make_dirs(folder)
        os.chmod(folder, 0o700)  # the key is briefly 0666 & ~umask between its rename and its chmod below
        with locked(folder / ".lock"):
            if not path.is_file():
                with atomic_file(path) as f:
                    f.write((secrets.token_hex(32) + "\n").encode())
                os.chmod(path, 0o600)
    key = path.read_text().strip()
    if not key:
        raise ValueError(f"{path}: the watermark key file is empty (delete it to make a new one)")
    return key


def watermark_key(configured: str | None) -> str:
    return configured if configured else installation_key()
