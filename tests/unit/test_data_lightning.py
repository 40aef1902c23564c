"""The DataModule inside real Lightning and real torch.distributed runs: the loader position travels in the
checkpoint, a resumed fit gets exactly the batches the uninterrupted one got, skips are logged, and DDP ranks
(gloo, 2 processes x 2 workers) split the data without overlap."""

import csv
import os
import random

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.data_helpers import video_sample, write_shard
from wan_train.data.datamodule import DataConfig, DataMetrics, WanDataModule


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("lightning_shards")
    samples = [video_sample(f"{i:06d}", frames=12 + i % 5, width=64 if i % 2 else 96, height=64, fps=12.0)
               for i in range(16)]
    samples[5][1]["mp4"] = random.Random(5).randbytes(2000)  # one corrupt video
    return [str(write_shard(root / f"shard-{s:06d}.tar", samples[4 * s:4 * s + 4])) for s in range(4)]


def config(shards, **kw):
    options = dict(shards=shards, batch_size=2, num_workers=0, shuffle_buffer=4, resolutions=["144p"],
                   durations=[0.5], fps=8.0, caption_dropout=0.0)
    options.update(kw)
    return DataConfig(**options)


class Recorder(L.LightningModule):
    """The smallest module that trains on the batches and remembers which samples it got at which step."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.seen: list[tuple[int, tuple[str, ...]]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.global_step, tuple(batch["key"])))
        video = batch["video"]  # uint8 from the workers, float in [-1, 1] once on the device
        assert video.dtype == torch.float32 and -1 <= video.min() and video.max() <= 1
        return (self.scale * batch["video"].mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(shards, tmp_path, *, max_steps, ckpt_path=None, callbacks=()):
    module = Recorder()
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=L.pytorch.loggers.CSVLogger(
        tmp_path, name="csv"), callbacks=[DataMetrics(), *callbacks], enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=1, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=WanDataModule(config(shards)), ckpt_path=ckpt_path)
    return module.seen, trainer


def test_a_resumed_fit_gets_exactly_the_batches_of_an_uninterrupted_one(shards, tmp_path):
    full, trainer = fit(shards, tmp_path / "full", max_steps=6)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    head, _ = fit(shards, tmp_path / "head", max_steps=3, callbacks=[checkpoint])
    saved = torch.load(tmp_path / "ckpt" / "epoch=0-step=3.ckpt", weights_only=False)
    assert saved["WanDataModule"]["ranks"][0]["workers"]
    tail, _ = fit(shards, tmp_path / "tail", max_steps=6, ckpt_path=tmp_path / "ckpt" / "epoch=0-step=3.ckpt")
    assert head == full[:3]
    assert tail == full[3:]

    # the corrupt sample was skipped, counted and logged
    rows = list(csv.DictReader(open(trainer.logger.experiment.metrics_file_path)))
    skipped = [float(r["data/skipped"]) for r in rows if r.get("data/skipped")]
    assert skipped and max(skipped) >= 1
    assert all(not {"000005"} & set(keys) for _, keys in full)


def _rank_main(rank, world, port, shards, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        dm = WanDataModule(config(shards, batch_size=1, num_workers=2, epochs=1))
        keys = []
        for batch in dm.train_dataloader():  # rank and world size come from torch.distributed
            keys += dm.on_before_batch_transfer(batch)["key"]
        state = dm.state_dict()  # a collective: every rank's position ends up in the checkpoint
        torch.save({"keys": keys, "ranks": len(state["ranks"])}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_times_workers_split_the_data_without_overlap(shards, tmp_path):
    port = 29500 + random.Random(os.getpid()).randrange(1000)
    mp.start_processes(_rank_main, args=(2, port, shards, str(tmp_path)), nprocs=2, start_method="spawn")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    keys = [set(r["keys"]) for r in results]
    assert keys[0] and keys[1] and keys[0].isdisjoint(keys[1])
    assert sorted(keys[0] | keys[1]) == sorted(f"{i:06d}" for i in range(16) if i != 5)
    assert all(r["ranks"] == 2 for r in results)
