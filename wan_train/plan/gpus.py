"""GPU profiles for the memory planner: memory, dense bf16 tensor-core peak, HBM bandwidth, host link.

Numbers are the vendors' datasheet values (not measured here): bf16 dense (no sparsity) tensor TFLOP/s with fp32
accumulation, which is what bf16-mixed training runs; HBM (or GDDR) GB/s; the host link is the PCIe x16 rate of the
card's generation, per direction (4.0: 32 GB/s, 5.0: 64 GB/s). Only the memory decides what fits; the rest only
ranks the settings that fit (wan_train.plan.estimate, speed model).

Memory sizes are read by wan_train.memory.parse_memory ("GB" means GiB).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from wan_train.memory.units import GIB, parse_memory


@dataclass(frozen=True)
class Gpu:
    name: str
    memory: int  # bytes
    bf16_tflops: float  # dense bf16 tensor peak, TFLOP/s (fp32 accumulate)
    hbm_gbs: float  # device memory bandwidth, GB/s (1e9 bytes/s)
    host_link_gbs: float  # PCIe x16 per direction, GB/s (1e9 bytes/s)
    note: str = ""  # where the numbers come from (the generic profile states its assumptions)


_DATASHEET = "datasheet values"
GPUS: dict[str, Gpu] = {
    gpu.name: gpu
    for gpu in (
        Gpu("rtx3090", 24 * GIB, 71.0, 936.0, 32.0, _DATASHEET),  # GA102, PCIe 4.0
        Gpu("rtx4090", 24 * GIB, 165.2, 1008.0, 32.0, _DATASHEET),  # AD102, PCIe 4.0
        Gpu("rtx6000ada", 48 * GIB, 364.2, 960.0, 32.0, _DATASHEET),  # RTX 6000 Ada, PCIe 4.0
        Gpu("a6000", 48 * GIB, 154.8, 768.0, 32.0, _DATASHEET),  # RTX A6000 (Ampere), PCIe 4.0
        Gpu("l40s", 48 * GIB, 362.05, 864.0, 32.0, _DATASHEET),  # PCIe 4.0
        Gpu("a100-40gb", 40 * GIB, 312.0, 1555.0, 32.0, _DATASHEET),  # SXM4, PCIe 4.0 host link
        Gpu("a100-80gb", 80 * GIB, 312.0, 2039.0, 32.0, _DATASHEET),  # SXM4, PCIe 4.0 host link
        Gpu("h100", 80 * GIB, 989.4, 3350.0, 64.0, _DATASHEET),  # SXM5, PCIe 5.0 host link
        Gpu("h200", 141 * GIB, 989.4, 4800.0, 64.0, _DATASHEET),  # SXM, PCIe 5.0 host link
    )
}
# Only a memory size given: an RTX 4090-class card (compute, bandwidth, PCIe 4.0) with that memory. The choice of
# profile changes the s/step ranking between settings that fit, never what fits.
GENERIC = Gpu("generic", 24 * GIB, 165.2, 1008.0, 32.0,
              "assumed: RTX 4090-class compute (165 TFLOP/s bf16), 1008 GB/s, PCIe 4.0 x16")


def gpu_for(name: str | None, memory: str | int | None) -> Gpu:
    """A preset by name (its memory replaced by ``memory`` if given), or, with only ``memory``, the generic
    profile with that memory."""
    if name is None and memory is None:
        raise ValueError("no GPU given: name one (gpu=rtx4090; known: " + ", ".join(GPUS) + ") or give its memory "
                         "(gpu_mem=24GB)")
    if name is None:
        size = parse_memory(memory)
        return dataclasses.replace(GENERIC, name=f"generic {size / GIB:g} GiB", memory=size)
    key = name.strip().lower()
    if key not in GPUS:
        raise ValueError(f"unknown gpu {name!r}; known: {', '.join(GPUS)} (or give only gpu_mem=SIZE)")
    gpu = GPUS[key]
    if memory is None:
        return gpu
    size = parse_memory(memory)
    return dataclasses.replace(gpu, name=f"{gpu.name} with {size / GIB:g} GiB", memory=size)
