"""`run(cfg)`: everything `python train.py ...` does, callable from tests. The run folder holds the resolved
config, the git revision, checkpoints/, Lightning's CSV metrics (metrics.csv), W&B files and the exported
weights."""

import copy
import gc
import logging
import os
import random
import secrets
import subprocess
import sys
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from wan_train.config import ConfigError, validate
from wan_train.data import DataConfig, DataMetrics, WanDataModule
from wan_train.data.datamodule import batch_to_model, make_source, max_member_bytes
from wan_train.data.errors import SampleError
from wan_train.data.shards import expand_urls, read_samples
from wan_train.data.skiplog import SKIPPED_FILE, SkipLog
from wan_train.data.skiplog import summary as skip_summary
from wan_train.data.stream import Tally
from wan_train.fileio.durable import write_text
from wan_train.lora import add_adapter, base_identity
from wan_train.memory import Placement, float8_shells, place_base
from wan_train.inference.presets import twin_size_name
from wan_train.inference.twin import extend, twin_checkpoint
from wan_train.models import EXPERTS, OviConfig, OviDiT, WanDiT, get_size, load_dit, load_ovi_dit, save_model
from wan_train.parallel.fsdp import full_state_dict
from wan_train.parallel.launch import check_launch, detect_launch
from wan_train.parallel.strategy import build_strategy, own_checkpoint_io
from wan_train.training.callbacks import AtomicCheckpointIO, HeldOutLoss, ProgressLines, StepBar, Throughput
from wan_train.training.adapters import adapter_towers, export_adapter, register_run
from wan_train.training.ema import EMA
from wan_train.training.encoders import build_encoders
from wan_train.training.module import FlowMatchingModule
from wan_train.training.quiet import quiet_third_party
from wan_train.training.placement import compute_dtype, keeps_float8, load_dtype, placement, planned
from wan_train.training import requeue
from wan_train.training.resume import newest_intact, resume_path
from wan_train.training.trainable import apply_trainable
from wan_train.training.validation import ValidationVideos
from wan_train.marking import Marker

log = logging.getLogger(__name__)


def build_dit(cfg) -> WanDiT | OviDiT:
    """The DiT to train (with its fresh adapter in a LoRA run): from model.checkpoint (a Wan DiT, or a twin-tower
    one: an Ovi folder or file, a wan_train OviDiT folder) or from random init of model.size."""
    size = get_size(cfg.model.size)
    if (twin := twin_checkpoint(cfg)) is not None:
        dit = load_ovi_dit(twin, dtype=load_dtype(cfg))
    elif cfg.model.checkpoint:
        dit = load_dit(cfg.model.checkpoint, expert=cfg.expert.name, dtype=load_dtype(cfg),
                       keep_float8=keeps_float8(cfg))
    else:
        torch.manual_seed(cfg.trainer.seed)
        dit = OviDiT(OviConfig(video=size.dit, audio=size.audio)) if size.has_audio else WanDiT(size.dit)
    dit.activation_checkpointing = cfg.model.activation_checkpointing  # per block (an FSDP unit under fsdp)
    if isinstance(dit, WanDiT):  # the twin's fusion blocks call SDPA themselves (validate allows sdpa only)
        dit.set_attention(cfg.model.attention)
    dit.train()
    if cfg.lora.enabled:  # a frozen base with a fresh peft adapter (B = 0: the base's output until trained)
        lora = cfg.lora
        twin = isinstance(dit, OviDiT)
        # peft draws A from the global generator: seed it, so runs repeat exactly
        with torch.random.fork_rng(), float8_shells(dit):
            torch.manual_seed(cfg.trainer.seed)
            add_adapter(dit, target=lora.target, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout,
                        rslora=lora.rslora, dora=lora.dora, towers=list(lora.towers) if twin else None,
                        fusion=twin and lora.fusion)
    else:
        apply_trainable(dit, cfg.model.trainable)
    return dit


def held_out_batches(data: DataConfig, count: int, shards: list[str], *, split: str = "held-out",
                     skip_log: SkipLog | None = None) -> list[dict]:
    """The first `count` usable clips of `shards` (data.val_shards, else the training shards; or a named set of
    data.val_sets), centre-cropped, no caption, reference or voice dropout: one-sample batches (video as model
    input), fixed for the whole run. Bad samples are skipped like training ones and named in `skip_log` under `split`."""
    fixed = DataConfig(**{**data.__dict__, "caption_dropout": 0.0, "reference_dropout": 0.0, "voice_dropout": 0.0,
                          "clip_start": "centre", "crop": "centre"})
    source, out, tally = make_source(fixed, expand_urls(data.shards)), [], Tally(Counter(), Counter())
    samples = read_samples(expand_urls(shards), max_member_bytes=max_member_bytes(data),
                           on_error=lambda error: tally.error(error, url=None, key=None, epoch=None, worker=None))
    for sample in samples:
        try:
            planned = source.plan(sample, rng=random.Random(0))
            batch = source.collate([source.load(planned, rng=random.Random(0))])
        except SampleError as error:  # a bad held-out sample is skipped like any other
            tally.error(error, url=sample["__url__"], key=sample["__key__"], epoch=None, worker=None)
            continue
        for flag, detail in planned.flags:
            tally.note(flag, detail, url=planned.url, key=planned.key, epoch=None, worker=None)
        out.append(batch_to_model(batch))
        if len(out) == count:
            break
    if skip_log is not None:
        skip_log.record(tally.take_events(), step=0, split=split)
    return out


def write_run_info(cfg: DictConfig, run_dir: Path) -> None:
    """config.yaml and git_revision.txt, each written atomically and durably (every rank writes them; the last
    rename wins)."""
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                               cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        rev, dirty = "unknown", ""
    write_text(run_dir / "git_revision.txt", rev + (" (with uncommitted changes)" if dirty else "") + "\n")


def loggers(cfg, run_dir: Path) -> list:
    out = []
    if cfg.logger.csv:
        out.append(CSVLogger(run_dir, name="csv"))  # csv/version_N/metrics.csv, one per (resumed) segment
    if cfg.logger.wandb:
        offline = not os.environ.get("WANDB_API_KEY")
        # one W&B run per run folder: a resumed or requeued segment continues it (same id) instead of a new run
        import wandb

        # silent: W&B's banner and end-of-run history; the run's folder is named once, by _finish_loggers
        logger = WandbLogger(project=cfg.logger.project, name=cfg.logger.name or run_dir.name, save_dir=run_dir,
                             offline=offline, id=wandb_run_id(run_dir), resume="allow",
                             settings=wandb.Settings(silent=True))
        logger._wandb_init.pop("anonymous", None)  # Lightning passes None, which W&B 0.31 warns is deprecated
        out.append(logger)
    return out


WANDB_ID_FILE = "wandb_run_id.txt"


def wandb_run_id(run_dir: Path) -> str:
    """The run folder's W&B run id: made by rank 0 on the first start and kept in run_dir/wandb_run_id.txt (only
    rank 0 logs to W&B)."""
    path = run_dir / WANDB_ID_FILE
    if path.is_file() and (known := path.read_text().strip()):
        return known
    made = secrets.token_hex(4)  # W&B's own ids are 8 characters of [a-z0-9]
    if detect_launch().rank == 0:
        write_text(path, made + "\n")
    return made


@dataclass
class Session:
    """What the training of one DiT keeps across fit calls (an A14B expert trains in several phases)."""

    cfg: DictConfig
    module: FlowMatchingModule
    data: DataConfig
    run_dir: Path
    partner: WanDiT | None = None  # an A14B expert's frozen other expert, for validation videos
    base: str | None = None  # LoRA runs: the base DiT's identity (wan_train.lora.base_identity)


def prepare(cfg: DictConfig) -> Session:
    data = OmegaConf.to_object(cfg.data)
    size = get_size(cfg.model.size)
    encoders = build_encoders(cfg, text_dim=size.dit.text_dim, text_len=size.dit.text_len,
                              image_branch=size.dit.has_image_branch)
    dit = build_dit(cfg)
    base = base_identity(dit) if cfg.lora.enabled else None  # of the checkpoint's weights, before any narrowing
    dit = extend(cfg, dit)
    place_base(dit, placement(cfg), compute_dtype=compute_dtype(cfg))
    count = cfg.flow.held_out_samples
    # every rank reads the held-out clips; rank 0 names the bad ones
    skips = SkipLog(Path(cfg.run_dir) / SKIPPED_FILE) if detect_launch().rank == 0 else None
    module = FlowMatchingModule(cfg, dit=dit, encoders=encoders, boundary=size.boundary,
                                held_out=held_out_batches(data, count, data.val_shards or data.shards,
                                                          skip_log=skips),
                                held_out_sets={name: held_out_batches(data, count, shards, split=f"held-out/{name}",
                                                                      skip_log=skips)
                                               for name, shards in data.val_sets.items()})
    return Session(cfg, module, data, Path(cfg.run_dir), partner=frozen_partner(cfg), base=base)


def frozen_partner(cfg) -> WanDiT | None:
    """The other A14B expert of a one-expert run, from the base checkpoint, for validation videos (CPU)."""
    if not (cfg.validation.every_n_steps and cfg.expert.name in EXPERTS and cfg.model.checkpoint):
        return None
    other = next(e for e in EXPERTS if e != cfg.expert.name)
    partner = load_dit(cfg.model.checkpoint, expert=other, dtype=load_dtype(cfg)).eval().requires_grad_(False)
    base = placement(cfg)  # stored like the trained expert's base (it waits in host memory between videos)
    return place_base(partner, Placement(base_dtype=base.base_dtype, fp8_granularity=base.fp8_granularity),
                      compute_dtype=compute_dtype(cfg))


def run(cfg: DictConfig) -> dict:
    """Train as configured; returns the final metrics (train/loss, val/loss, ...) and where things went. With
    expert=both, both A14B experts train in alternating phases (one sub-folder and one result per expert)."""
    validate(cfg)
    quiet_third_party()
    try:
        check_launch(cfg.trainer)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if cfg.memory.budget is not None:
        cfg = planned(cfg)
    if cfg.resume not in ("auto", "never"):
        resume_path(cfg.resume, Path(cfg.run_dir))  # a damaged file fails now, before the model is built
    write_run_info(cfg, Path(cfg.run_dir))
    with run_log(Path(cfg.run_dir) / RUN_LOG, enabled=detect_launch().rank == 0):
        if cfg.expert.name == "both":
            metrics = run_both_experts(cfg)
        else:
            metrics = fit(prepare(cfg), max_steps=cfg.trainer.max_steps)
    stopped = metrics.get("stopped")
    if cfg.lora.enabled and cfg.lora.client and cfg.lora.name and not stopped and not metrics.get("finished"):
        version = register_run(cfg, Path(cfg.run_dir), metrics)
        metrics["adapter"] = version.ref
    if stopped:  # checkpoint written and loggers finished: requeueing is the last act (SLURM kills every task)
        requeue.finish_stopped(stopped, step=metrics["step"], checkpoint=metrics["checkpoint"],
                               is_global_zero=detect_launch().rank == 0, barrier=_barrier)
    leave_process_group(wait=not stopped)
    return metrics


RUN_LOG = "train.log"


@contextmanager
def run_log(path: Path, *, enabled: bool = True):
    """Everything logged while the run trains, appended to RUN_DIR/train.log (rank 0's: the step lines, skipped
    samples, warnings); each resumed segment adds to it."""
    if not enabled:
        yield
        return
    root = logging.getLogger()
    handler = logging.FileHandler(path, encoding="utf-8")
    # the console's format (hydra.job_logging in conf/config.yaml), where there is a console handler
    handler.setFormatter(next((h.formatter for h in root.handlers if h.formatter), None) or logging.Formatter())
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def leave_process_group(*, wait: bool) -> None:
    """End a multi-process run's group while every peer still lives (after a barrier unless the job is being
    requeued): left to interpreter exit, gloo's threads can outlive a peer that exited first and abort the process
    ("terminate called without an active exception") after a successful run."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    # the finished Trainer, strategy and sharded module are garbage in reference cycles: collected now, while
    # every group they refer to (FSDP's device mesh) still exists, not at interpreter exit after the group is gone
    gc.collect()
    if wait:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def expert_config(cfg: DictConfig, expert: str) -> DictConfig:
    out = copy.deepcopy(cfg)
    out.expert.name, out.run_dir = expert, str(Path(cfg.run_dir) / expert)
    out.optim.lr = cfg.expert[f"{expert}_lr"] or cfg.optim.lr
    return out


def run_both_experts(cfg: DictConfig) -> dict:
    """Each expert has its own weights, optimizer, schedule, data position, checkpoints and exports under
    run_dir/<expert>/; they take turns for expert.alternate_every steps until each has trained max_steps. An
    expert's steps depend only on its own state, so the interleaving (and a resume) cannot change them."""
    sessions = {e: prepare(expert_config(cfg, e)) for e in EXPERTS}
    for expert, session in sessions.items():  # each samples validation videos with the other's current weights
        session.partner = next(s.module.dit for e, s in sessions.items() if e != expert)
    done = {e: (newest_intact(s.run_dir) or (0, None))[0] if cfg.resume == "auto" else 0
            for e, s in sessions.items()}
    results = {}
    while any(done[e] < cfg.trainer.max_steps for e in EXPERTS):
        for expert in EXPERTS:
            if done[expert] < cfg.trainer.max_steps:
                done[expert] = min(done[expert] + cfg.expert.alternate_every, cfg.trainer.max_steps)
                results[expert] = fit(sessions[expert], max_steps=done[expert])
                sessions[expert].module.cpu()  # the resting expert leaves the accelerator to the other
                if stopped := results[expert].get("stopped"):  # a signal: the other expert does not start
                    return {"stopped": stopped, "step": results[expert]["step"],
                            "checkpoint": results[expert]["checkpoint"]}
    if not results:  # both experts had trained max_steps already
        return {"finished": True, "step": cfg.trainer.max_steps}
    return {f"{e}/{k}": v for e, metrics in results.items() for k, v in metrics.items()}


def fit(session: Session, *, max_steps: int) -> dict:
    """Train `session` up to step `max_steps`, resuming from its newest checkpoint (resume=auto)."""
    cfg, run_dir = session.cfg, session.run_dir
    held_out = HeldOutLoss(cfg.trainer.val_every_n_steps)
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="{step:07d}", save_top_k=-1,
                                 every_n_train_steps=cfg.trainer.checkpoint_every_n_steps, save_last=False,
                                 save_on_train_epoch_end=False)
    # the live bar only on a terminal: in a file it would print once, at the end (the step lines say it there)
    bar = cfg.trainer.enable_progress_bar and sys.stderr.isatty()
    callbacks = [held_out, Throughput(), DataMetrics(), checkpoint,
                 ProgressLines(cfg.trainer.log_every_n_steps, bar=bar)]
    ema = EMA(cfg.trainer.ema_decay) if cfg.trainer.ema_decay else None
    if ema is not None:
        callbacks.append(ema)
    if cfg.validation.every_n_steps:
        size = get_size(cfg.model.size)
        name = size.name
        if isinstance(session.module.dit, OviDiT):  # a twin's presets: its named twin size, if it is one
            twin = session.module.dit.ovi_config
            name = twin_size_name(twin.video, twin.audio) or name
        callbacks.append(ValidationVideos(cfg.validation, run_dir=run_dir, size=name, boundary=size.boundary,
                                          partner=session.partner, expert=cfg.expert.name,
                                          marker=Marker.from_config(cfg.marking)))
    stop = None
    if cfg.cluster.requeue:
        stop = requeue.StopOnSignal(checkpoint_dir=run_dir / "checkpoints",
                                    checkpoint_every=cfg.trainer.checkpoint_every_n_steps)
        callbacks.append(stop)
    if bar:
        callbacks.append(StepBar())
    trainer = L.Trainer(
        max_steps=max_steps, accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        precision=cfg.trainer.precision, accelerator=cfg.trainer.accelerator, devices=_devices(cfg.trainer.devices),
        num_nodes=cfg.trainer.num_nodes, strategy=build_strategy(cfg),
        # one "epoch" of exactly the run's batches: the progress bar gets a total and an ETA, and the endless
        # stream is iterated once (its position, not an epoch restart, carries across a resume)
        limit_train_batches=max_steps * cfg.trainer.accumulate_grad_batches,
        gradient_clip_val=cfg.optim.gradient_clip_val,
        log_every_n_steps=cfg.trainer.log_every_n_steps, callbacks=callbacks, logger=loggers(cfg, run_dir),
        default_root_dir=run_dir, enable_progress_bar=bar, enable_model_summary=False,
        plugins=plugins(cfg), limit_val_batches=0, num_sanity_val_steps=0)
    ckpt_path = resume_path(cfg.resume, run_dir)
    # Lightning cannot see that our loader resumes (its position is the DataModule's state), and says otherwise
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    trainer.fit(session.module, datamodule=WanDataModule(session.data, group_size=cfg.strategy.sequence_parallel,
                                                         skipped_path=run_dir / SKIPPED_FILE),
                ckpt_path=ckpt_path)
    if trainer.is_global_zero and (skipped := skip_summary(run_dir / SKIPPED_FILE)):
        log.info(skipped)
    stopped = {"step": trainer.global_step, "resumed_from": str(ckpt_path) if ckpt_path else None}
    # resumed at max_steps with the export done: a finished run, run again (without its export, the last job was
    # stopped at the safe point before it: that export is done below)
    if ckpt_path is not None and not held_out.started and exported_step(run_dir) == trainer.global_step:
        _finish_loggers(trainer)
        return {**held_out.summary(), **stopped, "finished": True}
    if stop is not None and stop.stopped is not None:  # a signal: checkpointed at a step boundary, not finished
        _finish_loggers(trainer, stopped=True)
        return {**stopped, "stopped": stop.stopped, "checkpoint": stop.checkpoint}
    # a whole checkpoint (optimizer, loops, loader position), said explicitly: Lightning logs its default otherwise
    final = run_dir / "checkpoints" / f"step={trainer.global_step:07d}.ckpt"
    trainer.save_checkpoint(final, weights_only=False)
    if stop is not None and (signum := requeue.agreed(trainer.strategy)):  # the safe point before the export
        _finish_loggers(trainer, stopped=True)
        return {**stopped, "stopped": signum, "checkpoint": final}
    export(session, ema, step=trainer.global_step, is_global_zero=trainer.is_global_zero)
    _finish_loggers(trainer)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics.update({**held_out.summary(), "step": trainer.global_step,
                    "resumed_from": str(ckpt_path) if ckpt_path else None})
    return metrics


EXPORTED_FILE = "exported_step.txt"


def exported_step(run_dir: Path) -> int | None:
    """The step whose weights `export` last wrote into the run folder (None: none yet)."""
    path = run_dir / EXPORTED_FILE
    return int(path.read_text()) if path.is_file() else None


def export(session: Session, ema: EMA | None, *, step: int, is_global_zero: bool) -> None:
    """The trained DiT (LoRA: the adapter, never the frozen base) and its EMA, written by rank 0 into the run
    folder; under FSDP every rank first takes part in gathering the shards."""
    dit, run_dir, expert = session.module.dit, session.run_dir, session.cfg.expert.name
    weights = full_state_dict(dit, trained_only=session.base is not None)
    shadow = ema.full_shadow() if ema is not None else None
    if not is_global_zero:
        return
    if session.base is not None:
        towers = adapter_towers(session.cfg, dit)
        export_adapter(dit, run_dir / "adapter", base=session.base, expert=expert, weights=weights, towers=towers)
        if ema is not None:
            export_adapter(dit, run_dir / "adapter_ema", base=session.base, expert=expert, weights=shadow,
                           towers=towers)
    else:
        save_model(dit, run_dir / "dit", state_dict=weights)
        if ema is not None:
            ema.export(dit, run_dir / "dit_ema", state_dict=weights, shadow=shadow)
    write_text(run_dir / EXPORTED_FILE, f"{step}\n")  # last: a run stopped before this exports again on resume


def _finish_loggers(trainer, *, stopped: bool = False) -> None:
    """Finish the W&B run (its summary, its files). A stopped run also ends W&B's service process now: SLURM kills
    every process of a requeued job at once, and a service killed first fails the exit's teardown."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            run = logger.experiment
            folder, offline = Path(run.dir).parent, run.offline
            run.finish()  # writes the run's summary and closes its files (offline: syncable later)
            if offline:
                log.info("W&B run %s offline in %s (upload: wandb sync %s)", run.id, folder, folder)
            else:
                log.info("W&B run %s: %s", run.id, run.url)
            if stopped:
                import wandb

                wandb.teardown()


def plugins(cfg) -> list:
    """Atomic single-file checkpoints (sharded engines write their own directories); under SLURM, Lightning's
    cluster environment without its own requeue handler (wan_train.training.requeue does that, into
    checkpoints/)."""
    out = [AtomicCheckpointIO()] if own_checkpoint_io(cfg) else []
    if detect_launch().kind == "slurm":
        out.append(SLURMEnvironment(auto_requeue=False))
    return out


def _devices(value: str):
    return int(value) if str(value).isdigit() else value
