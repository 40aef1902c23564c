"""The Lightning strategy of a run, from `strategy=` (conf/strategy/): the engines the field trusts, configured
for the Wan DiT. Nothing here is home-made parallelism.

- ddp: torch DistributedDataParallel (gloo on CPU, NCCL on GPU).
- fsdp: torch FSDP2 (fully_shard), one unit per DiT block (WanBlock), on GPUs and on the CPU (gloo); see
  wan_train.parallel.fsdp.
- deepspeed_zero2 / deepspeed_zero3 (+ _offload: optimizer state, and for ZeRO-3 the parameters, on the CPU):
  a DeepSpeed config generated from the run's settings and validated by DeepSpeed's own parser at start.
"""

from __future__ import annotations

from datetime import timedelta

ENGINES = ("auto", "ddp", "fsdp", "deepspeed")
SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD")  # fsdp (NO_SHARD would be DDP: strategy=ddp)


def deepspeed_config(strategy, *, micro_batch: int, accumulate: int, precision: str,
                     gradient_clip: float | None) -> dict:
    """The DeepSpeed JSON config of a `strategy` (StrategyConfig with name deepspeed)."""
    zero: dict = {"stage": strategy.stage, "overlap_comm": True, "contiguous_gradients": True,
                  "reduce_bucket_size": strategy.bucket_size, "allgather_bucket_size": strategy.bucket_size}
    if strategy.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if strategy.offload_parameters:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if strategy.stage == 3:
        # sharded checkpoints (each rank its partition); consolidate afterwards instead of gathering at save
        zero["stage3_gather_16bit_weights_on_model_save"] = False
        zero["stage3_param_persistence_threshold"] = strategy.bucket_size // 100
    config = {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": accumulate,
              "zero_optimization": zero, "bf16": {"enabled": precision.startswith("bf16")},
              "fp16": {"enabled": precision.startswith("16")},
              # our own optimizer is used (fused AdamW, or DeepSpeedCPUAdam when offloading): DeepSpeed checks it
              "zero_allow_untested_optimizer": True}
    if gradient_clip:
        config["gradient_clipping"] = gradient_clip
    return config


def check_deepspeed_config(config: dict) -> None:
    """DeepSpeed's own parser (pydantic models): an unknown or ill-typed key fails here, at start."""
    from deepspeed.runtime.config import DeepSpeedConfig

    DeepSpeedConfig(config)


def build_strategy(cfg):
    """What L.Trainer(strategy=...) gets for the run config `cfg`."""
    strategy = cfg.strategy
    timeout = timedelta(minutes=strategy.timeout_minutes)
    if strategy.name == "auto":
        return "auto"
    if strategy.name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=strategy.find_unused_parameters, gradient_as_bucket_view=True,
                           timeout=timeout)
    if strategy.name == "fsdp":
        from wan_train.parallel.fsdp import FSDPStrategy

        return FSDPStrategy(sharding_strategy=strategy.sharding_strategy, state_dict_type=strategy.state_dict_type,
                            cpu_offload=strategy.offload_parameters, timeout=timeout)
    if strategy.name == "deepspeed":
        from wan_train.parallel.deepspeed import DeepSpeedStrategy  # Lightning's, resuming weights-only

        config = deepspeed_config(strategy, micro_batch=cfg.data.batch_size,
                                  accumulate=cfg.trainer.accumulate_grad_batches, precision=cfg.trainer.precision,
                                  gradient_clip=cfg.optim.gradient_clip_val)
        return DeepSpeedStrategy(config=config, timeout=timeout)
    raise ValueError(f"strategy.name={strategy.name!r}: expected one of {list(ENGINES)}")


def own_checkpoint_io(cfg) -> bool:
    """Whether the run writes plain single-file checkpoints (our atomic CheckpointIO, which also reads them
    weights-only); sharded engines write their own directories and read them weights-only themselves
    (wan_train.parallel.fsdp, wan_train.parallel.deepspeed)."""
    return cfg.strategy.name in ("auto", "ddp")
