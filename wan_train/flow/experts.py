"""Which noise levels each Wan2.2 MoE expert owns (wan_arch.md §4.3).

The high-noise expert runs for shifted timesteps t >= boundary * 1000, i.e. sigma >= boundary on the sigma scale
(sigma = t / 1000 after the shift, the actual noise level, not the step index); the low-noise expert below.
boundary = 0.875 for T2V-A14B and 0.9 for I2V-A14B (the official boundary_ratio; the owner of the number is
models.sizes.ModelSize.boundary, passed in by the caller). Training an expert restricts its sigma sampler to its
range, inference picks the expert per step with expert_for_sigma: one rule for both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HIGH_NOISE = "high_noise"
LOW_NOISE = "low_noise"
EXPERT_NAMES = (HIGH_NOISE, LOW_NOISE)  # the names of models.sizes.EXPERTS (flow may not import models)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class ExpertRange:
    """The sigma interval [low, high) an expert trains on; [low, 1] when high == 1 (sigma = 1 is pure noise and
    belongs to the top range)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (_is_number(self.low) and _is_number(self.high) and 0.0 <= self.low < self.high <= 1.0):
            raise ValueError(f"expert range [low={self.low!r}, high={self.high!r}] must satisfy 0 <= low < high <= 1")

    def contains(self, sigma):
        """bool for a float, a bool tensor (elementwise) for a tensor."""
        below_high = sigma <= self.high if self.high >= 1.0 else sigma < self.high
        return (sigma >= self.low) & below_high


def _check_boundary(boundary) -> None:
    if not (_is_number(boundary) and 0.0 < boundary < 1.0):
        on_timestep_scale = _is_number(boundary) and boundary > 1
        hint = " (looks like the 0-1000 timestep scale: divide by 1000)" if on_timestep_scale else ""
        raise ValueError(f"boundary={boundary!r} must be in (0, 1): the shifted timestep / 1000 at which the "
                         f"high-noise expert takes over, e.g. 0.875 (T2V) or 0.9 (I2V){hint}")


def expert_range(expert: str | None, boundary: float | None) -> ExpertRange:
    """None -> [0, 1] (a dense model, or both experts trained as one); "high_noise" -> [boundary, 1];
    "low_noise" -> [0, boundary)."""
    if expert is None:
        return ExpertRange(0.0, 1.0)
    if expert not in EXPERT_NAMES:
        raise ValueError(f"expert={expert!r} is not allowed; allowed: None (the whole range), "
                         + ", ".join(repr(e) for e in EXPERT_NAMES))
    if boundary is None:
        raise ValueError(f"expert={expert!r} needs the MoE boundary, but boundary is None: the model has no experts "
                         "(train it with expert=None)")
    _check_boundary(boundary)
    return ExpertRange(boundary, 1.0) if expert == HIGH_NOISE else ExpertRange(0.0, boundary)


def expert_for_sigma(sigma: float, boundary: float) -> str:
    """The expert that denoises at noise level sigma (the shifted sigma of the current step, a float or a one-element
    tensor): "high_noise" if sigma >= boundary else "low_noise" (W22 text2video.py _prepare_model_for_timestep:
    t >= boundary * 1000). Agrees with expert_range(expert, boundary).contains(sigma)."""
    _check_boundary(boundary)
    # bool(tensor >= float) compares in the tensor's dtype, as ExpertRange.contains and the official loop do.
    return HIGH_NOISE if bool(sigma >= boundary) else LOW_NOISE
