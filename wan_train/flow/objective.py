"""The training loss: weighted MSE between the predicted and the target velocity (wan_arch.md §4.1).

loss_i = w(sigma_i) * mean over (C, kept F, H, W) of (pred_i - target_i)^2 for video latents [B, C, F, H, W],
computed in float32 whatever the input dtype. Conditioning latent frames (the clean first frame of TI2V, which the
model is given rather than asked to denoise, and which DiffSynth leaves out of the loss: wan_arch.md §5.2) are
excluded with a frame mask; the mean is over the kept frames only, so the loss scale does not depend on how many
frames are masked. Masking uses torch.where (no boolean indexing), so no host-device sync.
"""

from __future__ import annotations

import torch

from wan_train.flow.weighting import loss_weight


def conditioning_frame_mask(latent_frames: int, conditioning: tuple[int, ...] = ()) -> torch.Tensor:
    """bool [latent_frames]: True on frames that count in the loss, False on the conditioning latent frames
    (e.g. (0,) for I2V/TI2V's first frame, (0, -1) for first-last-frame; negative indices count from the end)."""
    if isinstance(latent_frames, bool) or not isinstance(latent_frames, int) or latent_frames < 1:
        raise ValueError(f"latent_frames={latent_frames!r} must be an int >= 1")
    mask = torch.ones(latent_frames, dtype=torch.bool)
    for index in conditioning:
        if isinstance(index, bool) or not isinstance(index, int) or not -latent_frames <= index < latent_frames:
            raise ValueError(f"conditioning frame {index!r} is not a latent frame index of a "
                             f"{latent_frames}-frame latent (allowed: {-latent_frames} .. {latent_frames - 1})")
        mask[index] = False
    if not mask.any():
        raise ValueError(f"conditioning={tuple(conditioning)} covers all {latent_frames} latent frames: "
                         "no frame is left for the loss")
    return mask


def _frame_mask(frame_mask: torch.Tensor, batch: int, frames: int, device: torch.device) -> torch.Tensor:
    """[F] or [B, F] bool -> [B or 1, 1, F, 1, 1] on device."""
    if frame_mask.dtype != torch.bool or frame_mask.shape not in ((frames,), (batch, frames)):
        raise ValueError(f"frame_mask must be bool [F] or [B, F] with B={batch}, F={frames}; got "
                         f"{frame_mask.dtype} {tuple(frame_mask.shape)}")
    mask = frame_mask.to(device)
    return (mask if mask.ndim == 2 else mask[None]).view(-1, 1, frames, 1, 1)


def per_sample_loss(pred: torch.Tensor, target: torch.Tensor, sigma, *, weighting: str = "none",
                    frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """float32 [B]. pred, target: [B, C, F, H, W]; sigma: [B] or scalar (the noise level of each sample, for the
    weighting); frame_mask: bool [F] or [B, F], True = frame counts (see conditioning_frame_mask)."""
    if pred.shape != target.shape or pred.ndim != 5:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be [B, C, F, H, W]")
    b, c, f, h, w = pred.shape
    err = (pred.float() - target.float()).square()
    if frame_mask is None:
        mse = err.mean(dim=(1, 2, 3, 4))
    else:
        mask = _frame_mask(frame_mask, b, f, pred.device)
        kept = mask.sum(dim=(1, 2, 3, 4)) * (c * h * w)  # [B or 1]; >= 1 frame per sample (else the loss is NaN)
        mse = torch.where(mask, err, 0.0).sum(dim=(1, 2, 3, 4)) / kept
    weight = loss_weight(sigma, weighting).to(pred.device).reshape(-1)
    if weight.numel() not in (1, b):
        raise ValueError(f"sigma must be a scalar or [B] with B={b}; got {weight.numel()} values")
    return mse * weight


def flow_loss(pred: torch.Tensor, target: torch.Tensor, sigma, *, weighting: str = "none",
              frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scalar float32: the batch mean of per_sample_loss."""
    return per_sample_loss(pred, target, sigma, weighting=weighting, frame_mask=frame_mask).mean()
