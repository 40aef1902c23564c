"""The per-installation folder of marking: the C2PA signer and the watermark key made on first use
($WAN_TRAIN_CONFIG_DIR, else $XDG_CONFIG_HOME/wan_train, else ~/.config/wan_train), and the lock that lets two
first runs at once make one of each."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; two first runs at once there may make two of a file
    fcntl = None


def config_dir() -> Path:
    """$WAN_TRAIN_CONFIG_DIR, else $XDG_CONFIG_HOME/wan_train, else ~/.config/wan_train (empty means unset)."""
    if os.environ.get("WAN_TRAIN_CONFIG_DIR"):
        return Path(os.environ["WAN_TRAIN_CONFIG_DIR"])
    if os.environ.get("XDG_CONFIG_HOME"):
        return Path(os.environ["XDG_CONFIG_HOME"]) / "wan_train"
    return Path.home() / ".config" / "wan_train"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd closes
        yield
    finally:
        os.close(fd)
