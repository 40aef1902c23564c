"""THE rectified-flow definition used by training and inference alike: the sigma scale and its shift, the training
distribution of sigma, the MoE expert ranges, the path and velocity target, and the loss (wan_arch.md §4).

Conventions (DESIGN.md): sigma in [0, 1], 1 = pure noise; timestep = 1000 * sigma;
x_sigma = (1 - sigma) x0 + sigma * noise; target = noise - x0; shift sigma' = s*sigma / (1 + (s - 1)*sigma);
the MoE boundary compares with the shifted sigma. Imports only torch-level libraries.
"""

from wan_train.flow.experts import ExpertRange, expert_for_sigma, expert_range
from wan_train.flow.held_out import held_out_noise, held_out_sigmas
from wan_train.flow.joint import SIGMA_MODES, joint_loss, modality_sigmas, mse_per_sample
from wan_train.flow.objective import conditioning_frame_mask, flow_loss, per_sample_loss
from wan_train.flow.path import interpolate, velocity_target
from wan_train.flow.samplers import SAMPLER_KINDS, SigmaSampler
from wan_train.flow.schedule import NUM_TRAIN_TIMESTEPS, shift_sigma, to_timestep, unshift_sigma
from wan_train.flow.weighting import WEIGHTINGS, loss_weight

__all__ = [
    "NUM_TRAIN_TIMESTEPS", "SAMPLER_KINDS", "SIGMA_MODES", "WEIGHTINGS", "ExpertRange", "SigmaSampler",
    "conditioning_frame_mask", "expert_for_sigma", "expert_range", "flow_loss", "held_out_noise", "held_out_sigmas",
    "interpolate", "joint_loss", "loss_weight", "modality_sigmas", "mse_per_sample", "per_sample_loss", "shift_sigma",
    "to_timestep", "unshift_sigma", "velocity_target",
]
