"""The noise-level scale shared by training and inference (wan_arch.md §4.1-4.2).

sigma in [0, 1] with 1 = pure noise; the DiT's timestep input is t = 1000 * sigma, a float. The shift
sigma' = s*sigma / (1 + (s - 1)*sigma) is the resolution-dependent shift of SD3 (Esser et al. 2024, §5.3.2) with
alpha = s; s > 1 moves noise levels towards 1. Wan applies it to both its sampling grid (shift 3-16 by task) and,
here, to the training distribution (SigmaSampler.shift).

Functions take a Python float (and return one) or a tensor (returned in its floating dtype, float32 for integer
input); they do not check that sigma lies in [0, 1], so they stay free of host-device syncs.
"""

from __future__ import annotations

import math

import torch

NUM_TRAIN_TIMESTEPS = 1000


def _check_shift(shift: float) -> None:
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift={shift!r} must be a finite number > 0 (1 = no shift)")


def _floating(sigma):
    if isinstance(sigma, torch.Tensor) and not sigma.is_floating_point():
        return sigma.float()
    return sigma


def shift_sigma(sigma, shift: float):
    """s*sigma / (1 + (s - 1)*sigma), written as s*sigma / (s*sigma + 1 - sigma) so that 0 -> 0 and 1 -> 1 exactly.
    Strictly increasing on [0, 1] for every s > 0; s = 1 is the identity."""
    _check_shift(shift)
    sigma = _floating(sigma)
    return shift * sigma / (shift * sigma + (1 - sigma))


def unshift_sigma(sigma, shift: float):
    """The inverse of shift_sigma: sigma = sigma' / (sigma' + s*(1 - sigma')) (= shift_sigma(sigma', 1/s))."""
    _check_shift(shift)
    sigma = _floating(sigma)
    return sigma / (sigma + shift * (1 - sigma))


def to_timestep(sigma):
    """The DiT's timestep input t = 1000 * sigma; kept fractional (the official schedulers feed floats, §4.1)."""
    return NUM_TRAIN_TIMESTEPS * _floating(sigma)
