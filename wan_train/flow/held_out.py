"""A held-out loss that is comparable across steps and runs: the same noise levels and the same noise every time.

The random terms of the training loss (sigma and noise) make its per-step value noisy; fixing both leaves only
the model's change. Sigmas are the midpoint quantiles (k + 0.5) / count of the (truncated) training distribution,
so the average over them estimates the expected training loss (a midpoint-rule integral over the quantile) and
does not change when the seed does. Noise for sample `index` is drawn from its own generator seeded by
(seed, index), so it depends neither on the global RNG nor on batch composition or data-parallel rank.
"""

from __future__ import annotations

import numpy as np
import torch

from wan_train.flow.experts import ExpertRange
from wan_train.flow.samplers import SigmaSampler


def held_out_sigmas(sampler: SigmaSampler, count: int, expert: ExpertRange) -> torch.Tensor:
    """float32 [count], ascending: sampler's distribution truncated to the expert's range, at quantiles
    (k + 0.5) / count, k = 0 .. count - 1."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count={count!r} must be an int >= 1")
    q = (torch.arange(count, dtype=torch.float64) + 0.5) / count
    return sampler.quantile(q, low=expert.low, high=expert.high)


def held_out_noise(shape, *, seed: int, index: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Standard normal noise of `shape`, the same for the same (seed, index) on every machine: drawn on the CPU
    (CUDA generators give different streams) from a generator seeded by numpy's SeedSequence((seed, index)), so
    neighbouring (seed, index) pairs get unrelated streams; then cast to dtype and moved to device."""
    for name, value in (("seed", seed), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} must be an int >= 0")
    state = int(np.random.SeedSequence((seed, index)).generate_state(1, dtype=np.uint64)[0])
    generator = torch.Generator(device="cpu").manual_seed(state)
    noise = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    return noise.to(dtype=dtype, device=device)
