"""Callbacks: the held-out loss on its schedule, throughput in the progress bar, atomic checkpoint writes."""

import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from wan_train.fileio.durable import atomic_path, remove_leftovers
from wan_train.models.checkpoint.pickles import load_pickled


class HeldOutLoss(L.Callback):
    """Logs `val/loss` (and per sigma quantile, and `val/<set>/loss` of named extra sets) before the first step,
    every `every` steps and at the end."""

    def __init__(self, every: int):
        self.every = every
        self.history: list[tuple[int, dict[str, float]]] = []

    def summary(self) -> dict[str, float]:
        """Each set's first and last loss: val/loss_first, val/loss, val/<set>/loss_first, val/<set>/loss."""
        if not self.history:
            return {"val/loss_first": float("nan"), "val/loss": float("nan")}
        (_, first), (_, last) = self.history[0], self.history[-1]
        out = {}
        for key in last:
            if key == "val/loss" or (key.endswith("/loss") and key.count("/") == 2):
                out[f"{key}_first"], out[key] = first.get(key, float("nan")), last[key]
        return out

    def _log(self, trainer, module) -> None:
        metrics = module.held_out_loss()
        self.history.append((trainer.global_step, metrics))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def on_train_start(self, trainer, module):
        if trainer.global_step == 0:
            self._log(trainer, module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            self._log(trainer, module)


class Throughput(L.Callback):
    """Step time and samples/s in the progress bar and the logs."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        seconds = time.perf_counter() - self.start
        samples = len(batch["key"]) * trainer.world_size // module.cfg.strategy.sequence_parallel
        module.log_dict({"perf/step_s": seconds, "perf/samples_per_s": samples / seconds}, prog_bar=True,
                        on_step=True, on_epoch=False)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file, fsynced and renamed (wan_train.fileio.durable): a run killed
    mid-write, or a machine losing power, leaves the previous checkpoint intact and never a truncated one that
    `resume=auto` would pick."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
        remove_leftovers(path.parent)  # the temp file of a save killed an hour ago or more (a whole checkpoint)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        """Weights only, whatever Lightning asks (its default left it to torch, False below 2.6): a crafted file
        is refused, and any unreadable one is a CheckpointError naming it."""
        return load_pickled(path, map_location=map_location or "cpu")
