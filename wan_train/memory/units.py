"""Memory sizes as people write them: "24GB" means GiB (2^30 bytes), as card labels and nvidia-smi users mean it:
a "24 GB" RTX 4090 has 24564 MiB, an "80 GB" H100 81559 MiB. So "24GB", "24GiB" and "24G" are all 24 x 2^30
bytes (memory.budget, python -m wan_train.plan gpu_mem=...)."""

from __future__ import annotations

import re

GIB = 2**30
_UNITS = {"": None, "k": 2**10, "m": 2**20, "g": GIB, "t": 2**40}
_MEMORY = re.compile(r"^\s*(?P<value>\d+(\.\d+)?)\s*(?P<unit>[kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_memory(value: str | int) -> int:
    """"24GB" | "24GiB" | "24G" | "23.5GB" | "512MB" | bytes as an int -> bytes (GB = GiB, see the module docstring)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"memory {value!r}: expected a size such as 24GB, 80GiB or 48G")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"memory {value}: must be a positive number of bytes")
        return value
    match = _MEMORY.match(value)
    unit = match and _UNITS[match["unit"].lower()]
    if not match or unit is None:
        raise ValueError(f"memory {value!r}: expected a number with a unit, such as 24GB, 80GiB, 48G or 512MB "
                         "(GB means GiB, 2^30 bytes)")
    size = int(float(match["value"]) * unit)
    if size <= 0:
        raise ValueError(f"memory {value!r}: must be positive")
    return size
