"""Callbacks: the held-out loss on its schedule, throughput in the progress bar, plain step lines in the log,
atomic checkpoint writes."""

import logging
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO

from wan_train.fileio.durable import atomic_path, remove_leftovers
from wan_train.models.checkpoint.pickles import load_pickled
from wan_train.progress import EVERY_S


class HeldOutLoss(L.Callback):
    """Logs `val/loss` (and per sigma quantile, and `val/<set>/loss` of named extra sets) before the first step,
    every `every` steps and at the end. Its history travels in the checkpoints, so `summary()` covers the whole
    run across resumes."""

    def __init__(self, every: int):
        self.every = every
        self.history: list[tuple[int, dict[str, float]]] = []
        self.started = False  # this fit trained (False: resumed at max_steps, a finished run run again)

    def summary(self) -> dict[str, float]:
        """Each set's first and last loss: val/loss_first, val/loss, val/<set>/loss_first, val/<set>/loss (and an
        audio-video model's val/loss_video and val/loss_audio, first and last)."""
        if not self.history:
            return {"val/loss_first": float("nan"), "val/loss": float("nan")}
        (_, first), (_, last) = self.history[0], self.history[-1]
        out = {}
        for key in last:
            if key in ("val/loss", "val/loss_video", "val/loss_audio") or (key.endswith("/loss")
                                                                          and key.count("/") == 2):
                out[f"{key}_first"], out[key] = first.get(key, float("nan")), last[key]
        return out

    def state_dict(self) -> dict:
        """Kept in every checkpoint: a resumed run's summary starts from the whole run's first loss."""
        return {"history": [(step, dict(metrics)) for step, metrics in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.history = [(step, dict(metrics)) for step, metrics in state["history"]]

    def _log(self, trainer, module) -> None:
        metrics = module.held_out_loss()
        self.history.append((trainer.global_step, metrics))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def on_train_start(self, trainer, module):
        self.started = True
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


progress_log = logging.getLogger("wan_train.progress")


class ProgressLines(L.Callback):
    """Rank 0 logs a plain line every `every` optimizer steps, at least every `every_s` seconds, and at the last:
    step, training loss, seconds per step, samples/s and the time left. They go to run_dir/train.log and, where no
    progress bar is drawn (a file, nohup, a SLURM job's output, a pipe), to the console."""

    def __init__(self, every: int, *, bar: bool, every_s: float = EVERY_S):
        self.every, self.every_s = max(1, every), every_s
        self.bar = bar
        self.start, self.first, self.said = 0.0, 0, 0.0

    def setup(self, trainer, module, stage):
        if self.bar:  # the bar already shows these numbers on the terminal
            for handler in logging.getLogger().handlers:
                if type(handler) is logging.StreamHandler and not any(isinstance(f, _NotProgress)
                                                                        for f in handler.filters):
                    handler.addFilter(_NotProgress())

    def on_train_start(self, trainer, module):
        self.start, self.first = time.monotonic(), trainer.global_step
        self.said = self.start

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if (batch_idx + 1) % trainer.accumulate_grad_batches or not trainer.is_global_zero:
            return
        now = time.monotonic()
        if step % self.every and step != trainer.max_steps and now - self.said < self.every_s:
            return
        self.said = now
        metrics = trainer.callback_metrics
        seconds = (now - self.start) / max(1, step - self.first)
        left = seconds * max(0, trainer.max_steps - step)
        loss = metrics.get("train/loss")
        rate = metrics.get("perf/samples_per_s")
        progress_log.info("step %d/%d  loss %s  %.2f s/step  %s samples/s  %d:%02d:%02d left", step,
                          trainer.max_steps, f"{float(loss):.4f}" if loss is not None else "-", seconds,
                          f"{float(rate):.1f}" if rate is not None else "-", left // 3600, left % 3600 // 60,
                          left % 60)


class StepBar(RichProgressBar):
    """Lightning's rich bar for a step-based run: 'train' and the step count, not 'Epoch 0/-2' (the run is one
    endless "epoch" of max_steps batches), and the run's metrics without the logger's version number."""

    def _get_train_description(self, current_epoch: int) -> str:
        return "train"

    def get_metrics(self, trainer, module) -> dict:
        metrics = super().get_metrics(trainer, module)
        metrics.pop("v_num", None)  # the logger's version number: not a metric
        return metrics


class _NotProgress(logging.Filter):
    def filter(self, record):
        return record.name != progress_log.name


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
