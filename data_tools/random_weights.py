"""Seeded random weights in which every parameter matters: the stand-ins for real checkpoints in tests and in
the zero-download demos (a random network in the real file format exercises the real loading code)."""

import math

import torch
from torch import nn


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter with seeded random values, so no tensor is zero or one by construction (a zero-init
    head or unit norm weights would hide a wrongly mapped key); matrices are scaled by 1/sqrt(fan_in)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if p.ndim >= 2:
            value = torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel())
        else:
            value = 0.1 * torch.randn(p.shape, generator=g) + (1.0 if "norm" in name and "weight" in name else 0.0)
        p.copy_(value.to(p.dtype))
    return module


@torch.no_grad()
def randomize_i3d_(net: nn.Module, seed: int) -> nn.Module:
    """He-scaled conv weights and BatchNorm affine/running stats away from 1/0, so a mis-mapped key or a wrong
    eps changes the output, while activations keep their scale through the 22 layers."""
    g = torch.Generator().manual_seed(seed)
    for name, t in net.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        if t.ndim == 5:
            t.copy_(torch.randn(t.shape, generator=g) * math.sqrt(2.0 / t[0].numel()))
        elif name.endswith("running_var"):
            t.copy_(0.5 + torch.rand(t.shape, generator=g))
        elif name.endswith("bn.weight"):
            t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=g))
        else:  # bn.bias, running_mean, logits bias
            t.copy_(0.1 * torch.randn(t.shape, generator=g))
    return net.eval()
