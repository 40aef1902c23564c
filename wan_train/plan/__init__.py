"""The memory planner: estimates of a training step's peak device memory, host memory and time for each way of
placing the model (frozen-base dtype, block offload, activation checkpointing and offload), and the fastest one
that fits a GPU. ``python -m wan_train.plan`` prints the table; memory.budget applies the choice at start."""

from wan_train.plan.choose import NoFit, Plan, candidates, choose, fits, plan_run, usable_bytes, workload_of
from wan_train.plan.estimate import Estimate, Setting, Workload, block_activations, estimate, weight_count
from wan_train.plan.gpus import GPUS, Gpu, gpu_for, parse_memory

__all__ = ["GPUS", "Estimate", "Gpu", "NoFit", "Plan", "Setting", "Workload", "block_activations", "candidates",
           "choose", "estimate", "fits", "gpu_for", "parse_memory", "plan_run", "usable_bytes", "weight_count",
           "workload_of"]
