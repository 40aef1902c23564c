"""The LightningDataModule over WebDataset shards, for raw video (`kind: video`) or cached latents
(`kind: latents`). Both paths share the stream, the bucket table and the resume bookkeeping.

Position: every batch carries its worker's stream position; `on_before_batch_transfer` (the hook Lightning
calls for each batch the model actually gets) records it, so the DataModule's `state_dict` (saved in every
Lightning checkpoint) is exactly what was consumed, not what the workers prefetched. Under DDP the state of
every rank is gathered into the checkpoint, and each rank restores its own."""

import logging
import os
import signal
from collections import Counter
from dataclasses import dataclass, field

import lightning as L
import torch
import torch.distributed as dist
import webdataset
from safetensors.torch import load as load_safetensors
from torch.utils.data import DataLoader

from wan_train.data.audio import SAMPLE_RATE
from wan_train.data.buckets import ASPECT_RATIOS, BucketTable
from wan_train.data.decode import video_to_model
from wan_train.data.latents import EMPTY_PROMPT_FILE, LatentSource
from wan_train.data.multishot import MultiShotSource, check_shot_options
from wan_train.data.references import ReferenceSource, check_reference_options
from wan_train.data.shards import expand_urls, opener_url
from wan_train.data.skiplog import SkipLog
from wan_train.data.stream import BucketedStream
from wan_train.data.video import VideoSource
from wan_train.data.voices import check_voice_options

log = logging.getLogger(__name__)
KINDS = ("video", "latents")


@dataclass
class DataConfig:
    shards: list[str] = field(default_factory=list)  # paths, brace patterns, directories, pipe:/http(s)/s3 URLs
    # clips for the held-out loss; empty: the first clips of `shards` (then they are not held out of training)
    val_shards: list[str] = field(default_factory=list)
    # named extra held-out sets, each logged as val/<name>/loss (e.g. the base's data beside a LoRA's own)
    val_sets: dict[str, list[str]] = field(default_factory=dict)
    kind: str = "video"
    batch_size: int = 1
    num_workers: int = 2
    shuffle_buffer: int = 64
    seed: int = 0
    epochs: int | None = None  # None: an endless stream, the trainer's max_steps decides
    caption_dropout: float = 0.1
    # the bucket table (see wan_train.data.buckets); latent shards were cached with one of its buckets
    resolutions: list[str] = field(default_factory=lambda: ["480p"])
    aspect_ratios: list[str] = field(default_factory=lambda: list(ASPECT_RATIOS))
    durations: list[float] = field(default_factory=lambda: [5.0])
    fps: float = 16.0
    spatial_stride: int = 16
    # raw video only
    clip_start: str = "random"
    crop: str = "centre"
    span: str = "shot"
    # one sample's limits: seconds of decoding (its clip and references; the decoding process is killed past
    # them), and decode memory as a multiple of its bucket's uint8 clip (frames x H x W x 3 bytes; at least
    # 256 MiB), estimated from the stream's real size before decoding and capped while it runs
    decode_timeout: float = 60.0
    decode_memory: float = 8.0
    # both paths: a sample member (video, latents) larger than this is skipped unread (too_large)
    max_sample_mb: float = 2048.0
    # raw video only: reference-to-video (R2V, wan_train.data.references). Each sample also gets up to `references`
    # crops of the subjects its metadata names (0: off, at most 3: @Video1..@Video3), each `reference_frames` frames
    # (1: an image, else 1 + 4k) from a moment of the source at least `reference_gap` seconds from the clip
    # (or another shot), cropped to the subject ("subject") or the whole frame ("frame"); with probability
    # `reference_dropout` all of a sample's references are marked absent (guidance over references)
    references: int = 0
    reference_frames: int = 1
    reference_gap: float = 0.5
    reference_crop: str = "subject"
    reference_dropout: float = 0.1
    # raw video only: multi-shot samples (wan_train.data.multishot). 0: off; else each sample is exactly `shots`
    # (>= 2) consecutive recorded shots of a video, each with its own caption (metadata `shot_captions`) and an
    # equal share of the frames of the bucket the run's total length gets
    shots: int = 0
    # cached latents only: the empty prompt's context; None = empty_prompt.safetensors beside the first shard
    empty_prompt: str | None = None
    # the clips' sound too (wan_train.data.audio): raw video gives `audio` float32 [B, T] (mono 16 kHz, exactly the
    # clip's time span, from a .wav / .flac member or the video's own track) and `has_audio` [B]; cached latents
    # give the `audio_latents` [B, C, L] cached by data_tools.cache_latents --audio and `has_audio` [B]. A sample
    # without sound trains with has_audio False (flagged no_audio); one whose sound is bad is skipped
    audio: bool = False
    # raw video with audio only: reference voices (wan_train.data.voices) for the audio tower's slots
    # (model.audio_references). Each sample also gets up to `voices` (0: off, at most 3) stretches of
    # `voice_seconds` of its own source's sound at least `voice_gap` seconds from the clip: the k-th R2V subject's
    # recorded `speech`, or the source's sound where it names at most one subject; with probability
    # `voice_dropout` none (guidance over voices)
    voices: int = 0
    voice_seconds: float = 3.0
    voice_gap: float = 0.5
    voice_dropout: float = 0.1

    def __post_init__(self):
        if not self.max_sample_mb > 0:
            raise ValueError(f"data.max_sample_mb={self.max_sample_mb}: must be > 0")
        check_reference_options(references=self.references, frames=self.reference_frames, gap=self.reference_gap,
                                crop=self.reference_crop, dropout=self.reference_dropout,
                                temporal_stride=BucketTable.temporal_stride)
        if self.references and self.kind != "video":
            raise ValueError(f"data.references={self.references} with data.kind={self.kind!r}: reference-to-video "
                             "trains from raw video (kind: video), which references are cropped from; cached latents "
                             "hold the target clip only")
        check_shot_options(shots=self.shots)
        check_voice_options(voices=self.voices, seconds=self.voice_seconds, gap=self.voice_gap,
                            dropout=self.voice_dropout)
        if self.voices and not (self.audio and self.kind == "video"):
            raise ValueError(f"data.voices={self.voices} needs data.audio=true and data.kind='video': reference voices "
                             "are cut from the raw samples' own sound (cached latents hold the clip's only)")
        if self.shots and self.audio:
            raise ValueError(f"data.shots={self.shots} with data.audio=true: multi-shot samples with their sound are "
                             "not supported yet; set one of them off")
        if self.shots and self.kind != "video":
            raise ValueError(f"data.shots={self.shots} with data.kind={self.kind!r}: multi-shot samples are cut from "
                             "raw video (kind: video); cached latents hold one clip, not shots encoded one by one")
        _check_not_together(self)

    def table(self) -> BucketTable:
        return BucketTable(resolutions=tuple(self.resolutions), aspect_ratios=tuple(self.aspect_ratios),
                           durations=tuple(self.durations), fps=self.fps, spatial_stride=self.spatial_stride)


def max_member_bytes(config: DataConfig) -> int:
    return int(config.max_sample_mb * 2**20)


def read_url(url: str) -> bytes:
    with webdataset.gopen(opener_url(url)) as stream:
        return stream.read()


def load_empty_prompt(config: DataConfig, urls: list[str]) -> torch.Tensor | None:
    if config.caption_dropout == 0:
        return None
    path = config.empty_prompt or os.path.join(os.path.dirname(urls[0]), EMPTY_PROMPT_FILE)
    try:
        return load_safetensors(read_url(path))["context"]
    except Exception as error:
        raise FileNotFoundError(f"data.empty_prompt: cannot read the empty prompt's context from {path} ({error}); "
                                f"data_tools.cache_latents writes it beside the shards") from None


def _check_not_together(config: DataConfig) -> None:
    if config.shots and config.references:
        raise ValueError(f"data.shots={config.shots} with data.references={config.references}: multi-shot and "
                         "reference-to-video samples are not supported together yet; set one of them to 0")


def make_source(config: DataConfig, urls: list[str]):
    _check_not_together(config)
    if config.kind == "latents":
        return LatentSource(load_empty_prompt(config, urls), caption_dropout=config.caption_dropout,
                            audio=config.audio)
    if config.kind != "video":
        raise ValueError(f"data.kind={config.kind!r}: expected one of {list(KINDS)}")
    video = dict(caption_dropout=config.caption_dropout, clip_start=config.clip_start, crop=config.crop,
                 span=config.span, decode_timeout=config.decode_timeout, decode_memory=config.decode_memory,
                 audio_rate=SAMPLE_RATE if config.audio else None)
    if config.voices:
        video.update(voices=config.voices, voice_seconds=config.voice_seconds, voice_gap=config.voice_gap,
                     voice_dropout=config.voice_dropout)
    if config.shots:
        return MultiShotSource(config.table(), shots=config.shots, **video)
    if config.references:
        return ReferenceSource(config.table(), references=config.references,
                               reference_frames=config.reference_frames, reference_gap=config.reference_gap,
                               reference_crop=config.reference_crop, reference_dropout=config.reference_dropout,
                               **video)
    return VideoSource(config.table(), **video)


def batch_to_model(batch: dict) -> dict:
    """A raw-video batch's pixels as the VAE takes them, in place (on the device: uint8 crosses the bus):
    video uint8 [B, F, H, W, 3] -> float32 [B, 3, F, H, W] and R2V refs uint8 [B, R, f, H, W, 3] -> float32
    [B, R, 3, f, H, W], both in [-1, 1]; already converted or latent batches pass unchanged."""
    if "video" in batch and batch["video"].dtype == torch.uint8:
        batch["video"] = video_to_model(batch["video"])
    if "refs" in batch and batch["refs"].dtype == torch.uint8:
        refs = batch["refs"]
        batch["refs"] = video_to_model(refs.flatten(0, 1)).unflatten(0, refs.shape[:2])
    return batch


def _rank_and_world(trainer) -> tuple[int, int]:
    if trainer is not None:
        return trainer.global_rank, trainer.world_size
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def leave_signals_to_the_main_process(worker_id: int) -> None:
    """A loader worker ignores SIGTERM and the requeue warnings. On SLURM they reach every process of the job: the
    main process records them and stops at the next step boundary, while a worker killed by one would end the run
    at once (the loader raises on a dead worker). The main process ends its workers itself."""
    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)


class WanDataModule(L.LightningDataModule):
    def __init__(self, config: DataConfig, *, group_size: int = 1, skipped_path: str | os.PathLike | None = None):
        """group_size: consecutive ranks that share each batch (sequence parallelism): the data is split over
        world / group_size data-parallel ranks. skipped_path: the run's skipped.jsonl (wan_train.data.skiplog),
        where every rank names the samples it skipped; None: log lines only."""
        super().__init__()
        self.group_size, self.skipped_path = group_size, skipped_path
        self.skip_log: SkipLog | None = None
        if not config.shards:
            raise ValueError("data.shards is empty: give shard paths, a brace pattern or a directory")
        config.table()  # fail at construction on a bad bucket table
        self.config = config
        self.positions: dict[int, dict] = {}  # worker -> position after its last consumed batch
        self.resume: dict[int, dict] = {}

    def dataset(self, *, rank: int | None = None, world_size: int | None = None) -> BucketedStream:
        urls = expand_urls(self.config.shards)
        if not urls:
            raise FileNotFoundError(f"data.shards={self.config.shards!r} matches no shards")
        if rank is None:  # resolved here, in the main process: loader workers may not see the process group
            rank, world_size = _rank_and_world(self.trainer)
            rank, world_size = rank // self.group_size, world_size // self.group_size
        stream = BucketedStream(urls, make_source(self.config, urls), batch_size=self.config.batch_size,
                                seed=self.config.seed, shuffle_buffer=self.config.shuffle_buffer,
                                epochs=self.config.epochs, rank=rank, world_size=world_size,
                                max_member_bytes=max_member_bytes(self.config))
        stream.resume = dict(self.resume)
        return stream

    def train_dataloader(self, **slot) -> DataLoader:
        workers = self.config.num_workers
        return DataLoader(self.dataset(**slot), batch_size=None, num_workers=workers, persistent_workers=workers > 0,
                          prefetch_factor=2 if workers else None,
                          worker_init_fn=leave_signals_to_the_main_process if workers else None)

    def on_before_batch_transfer(self, batch, dataloader_idx: int = 0):
        if isinstance(batch, dict) and "_position" in batch:
            position = batch.pop("_position")
            self.positions[int(position["worker"])] = position["state"]
        if isinstance(batch, dict) and "_events" in batch:
            events = batch.pop("_events")
            if events:
                self._skip_log().record(events, step=self.trainer.global_step if self.trainer else 0)
        return batch

    def _skip_log(self) -> SkipLog:
        if self.skip_log is None:
            self.skip_log = SkipLog(self.skipped_path, rank=_rank_and_world(self.trainer)[0])
        return self.skip_log

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        return batch_to_model(batch) if isinstance(batch, dict) else batch

    @property
    def skipped(self) -> Counter:
        """Samples skipped so far on this rank, by reason (summed over its workers)."""
        return sum((Counter(state["skipped"]) for state in self.positions.values()), Counter())

    @property
    def flagged(self) -> Counter:
        """Samples trained despite a flag (an empty caption) so far on this rank, by flag."""
        return sum((Counter(state.get("flagged", {})) for state in self.positions.values()), Counter())

    def state_dict(self) -> dict:
        mine = {"workers": dict(self.positions), "num_workers": self.config.num_workers}
        ranks = [mine]
        if dist.is_available() and dist.is_initialized():
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, mine)
        return {"ranks": ranks, "seed": self.config.seed}

    def load_state_dict(self, state: dict) -> None:
        rank, world = _rank_and_world(self.trainer)
        ranks = state["ranks"]
        same_layout = len(ranks) == world and ranks[rank]["num_workers"] == self.config.num_workers
        if not same_layout or state["seed"] != self.config.seed:
            log.warning("data: the checkpoint's loader layout (%d ranks x %d workers, seed %s) differs from this run's "
                        "(%d x %d, seed %s); the stream restarts from its beginning", len(ranks),
                        ranks[0]["num_workers"], state["seed"], world, self.config.num_workers, self.config.seed)
            return
        self.resume = {int(k): v for k, v in ranks[rank]["workers"].items()}
        self.positions = dict(self.resume)


class DataMetrics(L.Callback):
    """Logs the skipped-sample counters (`data/skipped` and `data/skipped_<reason>`) and the flag counters
    (`data/<flag>`, e.g. data/empty_caption) every batch."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        datamodule = trainer.datamodule
        if not isinstance(datamodule, WanDataModule):
            return
        skipped = datamodule.skipped
        metrics = {f"data/skipped_{reason}": float(n) for reason, n in skipped.items()}
        metrics["data/skipped"] = float(sum(skipped.values()))
        metrics.update({f"data/{flag}": float(n) for flag, n in datamodule.flagged.items()})
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, reduce_fx="sum", sync_dist=False)
