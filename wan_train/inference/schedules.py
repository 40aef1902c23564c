"""The sampling sigma grids of the denoising loop (wan_arch.md §4.2).

A grid is the descending float64 tensor [sigma_0, ..., sigma_steps] of steps + 1 noise levels ending in exactly 0:
shift_sigma(linspace(sigma_max, 0, steps + 1), shift). Step i of a solver goes from sigmas[i] to sigmas[i + 1]; the
model runs at sigmas[i] with timestep 1000 * sigmas[i]. The unshifted grid is computed in float64 like the official
numpy code; only sigma_max differs between the official solvers:

- 0.999: official UniPC (FlowUniPCMultistepScheduler: linspace(sigma_max of its 1000-step table, 0, steps + 1)[:-1],
  shifted, then final sigma 0; that sigma_max is float32(0.999) = 0.99900001, a 1.3e-8 difference we ignore).
  diffusers' UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=s) gives the same grid (to float32) when handed
  these base sigmas, and DPMSolverMultistepScheduler(use_flow_sigmas=True) builds it by default; without them UniPC
  builds shift(linspace(1, 1/1000, steps + 1)[:-1]) with sigma_0 nudged to 1 - 1e-6 (WanPipeline), not official.
- 1.0: official DPM++ (get_sampling_sigmas: linspace(1, 0, steps + 1)[:steps]) and DiffSynth's Euler
  (set_timesteps_wan: linspace(1, 0, n + 1)[:-1], default shift 5).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from wan_train.flow.schedule import shift_sigma


def sampling_sigmas(steps: int, *, shift: float, sigma_max: float = 1.0) -> torch.Tensor:
    """[steps + 1] float64 CPU tensor, strictly decreasing from shift_sigma(sigma_max, shift) to exactly 0."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an int >= 1 (the number of solver steps / model evaluations)")
    if isinstance(sigma_max, bool) or not isinstance(sigma_max, (int, float)) or not (
            math.isfinite(sigma_max) and 0.0 < sigma_max <= 1.0):
        raise ValueError(f"sigma_max={sigma_max!r} must be in (0, 1]: the unshifted noise level of the first step "
                         "(0.999 for the official UniPC grid, 1.0 for official DPM++ and DiffSynth's Euler)")
    # np.linspace (float64) as the official code; its last entry is exactly `stop` = 0.
    base = torch.from_numpy(np.linspace(float(sigma_max), 0.0, steps + 1))
    return shift_sigma(base, shift)  # validates shift; keeps 0 -> 0 and 1 -> 1 exactly
