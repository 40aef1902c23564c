"""AdamW (fused on CUDA; DeepSpeed's CPU Adam when ZeRO offloads the optimizer state) with linear warmup, then
constant or cosine decay to min_lr_ratio x lr."""

import math

import torch


def lr_factor(step: int, *, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(optim, model: torch.nn.Module, *, max_steps: int, cpu_offload: bool = False) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    if cpu_offload:  # ZeRO-Offload steps on the CPU copy of the state: DeepSpeed's vectorised CPU AdamW
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(params, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                                     weight_decay=optim.weight_decay, adamw_mode=True)
    else:
        fused = all(p.is_cuda for p in params)
        optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                                      weight_decay=optim.weight_decay, fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        step, warmup=optim.warmup_steps, total=max_steps, schedule=optim.schedule, min_ratio=optim.min_lr_ratio))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
