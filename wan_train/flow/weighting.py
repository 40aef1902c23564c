"""Per-sample loss weights w(sigma) for the velocity MSE, the schemes of diffusers' SD3/Flux trainers
(compute_loss_weighting_for_sd3), also offered by musubi-tuner, finetrainers and VideoX-Fun (peers.md):

- "none":       w = 1. The plain conditional flow-matching loss; with a sigma sampler it is SD3's
                "rf/lognorm" setting (Esser et al. 2024 §3.1): all emphasis comes from the sampling density.
- "cosmap":     w = 2 / (pi * (1 - 2 sigma + 2 sigma^2)), the density of SD3's CosMap sampler
                (t = 1 - 1 / (tan(pi u / 2) + 1), Esser et al. 2024 §3.1), used as a weight instead of as a
                sampler. Peaks at 4/pi for sigma = 0.5, 2/pi at both ends.
- "sigma_sqrt": w = sigma^-2 (diffusers' name; the value is 1/sigma^2, not a square root). Since
                x0_pred - x0 = -sigma * (v_pred - v), this turns the velocity loss into ||x0_pred - x0||^2 / sigma^4;
                it grows without bound as sigma -> 0, so use it with a sampler that rarely visits sigma ~ 0.
"""

from __future__ import annotations

import math

import torch

WEIGHTINGS = ("none", "cosmap", "sigma_sqrt")


def loss_weight(sigma, scheme: str) -> torch.Tensor:
    """w(sigma), float32 with sigma's shape ([B] for [B]); sigma in [0, 1]."""
    if scheme not in WEIGHTINGS:
        raise ValueError(f"flow.weighting={scheme!r} is not allowed; allowed: {', '.join(WEIGHTINGS)}")
    sigma = torch.as_tensor(sigma, device=sigma.device if isinstance(sigma, torch.Tensor) else None).float()
    if scheme == "cosmap":
        return 2.0 / (math.pi * (1.0 - 2.0 * sigma + 2.0 * sigma.square()))
    if scheme == "sigma_sqrt":
        return sigma.pow(-2.0)
    return torch.ones_like(sigma)
