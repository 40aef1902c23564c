"""No file we read runs code: every entry point that reads a pickle-based file (encoder .pth, run checkpoints for
resume / generate / consolidate, FSDP and DeepSpeed shard folders, eval weights) refuses a crafted one, naming the
file, and the payload's marker file never appears; damaged checkpoints fail (or, for resume=auto, are skipped)
naming the file."""

import logging
import pickle
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from omegaconf import OmegaConf

from eval.i3d import load_i3d
from eval.identity import load_pretrained
from tests.helpers import Payload
from wan_train.config import compose_config
from wan_train.inference.loading import load
from wan_train.models import CheckpointError, load_vae
from wan_train.models.checkpoint.distributed import read_distributed
from wan_train.models.checkpoint.pickles import load_pickled, weights_only_loads
from wan_train.models.encoders.clip import load_clip_vision
from wan_train.models.encoders.t5 import load_umt5_encoder
from wan_train.parallel.deepspeed import pickled_types
from wan_train.training.callbacks import AtomicCheckpointIO
from wan_train.training.consolidate import consolidate, load_full, main
from wan_train.training.resume import newest_intact, resume_path

ROOT = Path(__file__).resolve().parents[2]
FORMATS = ["zip", "legacy"]  # torch.save's format since 1.6, and the pre-1.6 plain pickle stream


@pytest.fixture()
def marker(tmp_path):
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "the payload ran"


def save(obj, path: Path, fmt: str = "zip") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
    return path


def evil(path: Path, marker: Path, fmt: str = "zip", **state) -> Path:
    """A file that looks like a checkpoint (tensors, a state_dict) and carries the payload."""
    return save({"state_dict": {"w": torch.ones(2)}, **state, "payload": Payload(marker)}, path, fmt)


def at(path: Path) -> str:
    return re.escape(str(path))


def refused(path: Path):
    """pytest.raises for a CheckpointError that names `path` and says its pickle could run code."""
    return pytest.raises(CheckpointError, match=rf"{at(path)}.*(could run code)")


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_payload_runs_when_a_file_is_loaded_unrestricted(tmp_path, fmt):
    """What every other test proves absent: torch.load(weights_only=False) runs it."""
    path = evil(tmp_path / "x.pt", tmp_path / "RAN", fmt)
    torch.load(path, weights_only=False)
    assert (tmp_path / "RAN").exists()


# ------------------------------------------------------------------------------------------------------ the rule
@pytest.mark.parametrize("fmt", FORMATS)
def test_load_pickled_refuses_the_payload_naming_the_file(tmp_path, marker, fmt):
    path = evil(tmp_path / "x.ckpt", marker, fmt)
    with pytest.raises(CheckpointError, match=rf"^{at(path)}: holds a pickled \S+, which weights-only loading refuses"):
        load_pickled(path)


def test_plain_checkpoints_load(tmp_path):
    path = save({"state_dict": {"w": torch.arange(3.0)}, "epoch": 1, "loops": {"a": [1, 2.0, "b", None]}},
                tmp_path / "x.ckpt")
    loaded = load_pickled(path)
    assert loaded["epoch"] == 1 and torch.equal(loaded["state_dict"]["w"], torch.arange(3.0))


@pytest.mark.parametrize("content, why", [
    (b"", "an empty file"),
    (None, r"truncated \(a torch zip whose directory"),
    (b"not a checkpoint at all", "not a torch file"),
])
def test_damaged_files_fail_naming_the_file(tmp_path, content, why):
    path = tmp_path / "x.ckpt"
    if content is None:  # the first 300 bytes of a real checkpoint
        content = save({"w": torch.ones(100)}, tmp_path / "whole.ckpt").read_bytes()[:300]
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"^{at(path)}: not a readable torch checkpoint: {why}"):
        load_pickled(path)
    with pytest.raises(CheckpointError, match=rf"^{at(tmp_path / 'none.ckpt')}: file not found"):
        load_pickled(tmp_path / "none.ckpt")


def test_third_party_torch_load_is_forced_weights_only_inside_the_block(tmp_path, marker):
    path = evil(tmp_path / "x.pt", marker)
    with weights_only_loads(), refused(path):
        torch.load(path, weights_only=False)  # as DeepSpeed's readers call it
    scaler = pickled_types()[0](4.0)  # DeepSpeed's LossScaler: allowed by name only
    save({"loss_scaler": scaler}, tmp_path / "optim.pt")
    with weights_only_loads(), pytest.raises(CheckpointError, match="LossScaler"):
        torch.load(tmp_path / "optim.pt", weights_only=False)
    with weights_only_loads(allow=pickled_types()):
        assert torch.load(tmp_path / "optim.pt", weights_only=False)["loss_scaler"].cur_scale == 4.0
    assert torch.load is load_pickled.__globals__["_torch_load"]  # restored


# ---------------------------------------------------------------------------------------------- encoder loaders
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("loader, name", [
    (load_umt5_encoder, "models_t5_umt5-xxl-enc-bf16.pth"),
    (load_clip_vision, "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"),
    (load_vae, "Wan2.1_VAE.pth"),
])
def test_encoder_pth_files_are_read_weights_only(tmp_path, marker, loader, name, fmt):
    path = save({"encoder.weight": torch.ones(2), "payload": Payload(marker)}, tmp_path / name, fmt)
    with refused(path):
        loader(path)


def test_a_transformers_folder_with_a_crafted_pytorch_model_bin_is_refused(tmp_path, marker):
    from safetensors.torch import load_file
    from transformers import Dinov2Model

    from data_tools.make_eval_models import write_dinov2

    folder = write_dinov2(tmp_path / "dino")
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    save({**weights, "payload": Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=rf"{at(folder)}: its PyTorch weights file .*could run code"):
        load_pretrained(Dinov2Model, folder)


# -------------------------------------------------------------------------------------------------- eval weights
@pytest.mark.parametrize("fmt", FORMATS)
def test_i3d_state_dicts_are_read_weights_only(tmp_path, marker, fmt):
    path = save({"Conv3d_1a_7x7.conv3d.weight": torch.ones(2), "payload": Payload(marker)},
                tmp_path / "rgb_imagenet.pt", fmt)
    with refused(path):
        load_i3d(path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch")
def test_a_torchscript_archive_runs_only_when_named_as_one(tmp_path):
    path = tmp_path / "rgb_imagenet.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    with pytest.raises(ValueError, match=rf"{at(path)}: a TorchScript archive, i.e. a program that runs when loaded"):
        load_i3d(path)
    with pytest.raises(CheckpointError, match=rf"{at(path)}: a TorchScript archive"):
        load_pickled(path)


# ----------------------------------------------------------------------------------- run checkpoints: generate
def run_folder(root: Path) -> Path:
    """A training run folder as train.py leaves it: the resolved config and checkpoints/."""
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(OmegaConf.to_yaml(compose_config(["recipe=quickstart"]), resolve=True))
    return root


@pytest.mark.parametrize("fmt", FORMATS)
def test_generate_refuses_a_run_whose_checkpoint_is_crafted(tmp_path, marker, fmt):
    run = run_folder(tmp_path / "run")
    path = evil(run / "checkpoints" / "step=0000002.ckpt", marker, fmt)
    with refused(path):
        load(run)


def test_generate_names_a_truncated_checkpoint(tmp_path):
    run = run_folder(tmp_path / "run")
    path = run / "checkpoints" / "step=0000002.ckpt"
    path.parent.mkdir()
    path.write_bytes(save({"w": torch.ones(100)}, tmp_path / "whole.ckpt").read_bytes()[:300])
    with pytest.raises(CheckpointError, match=rf"{at(path)}: not a readable torch checkpoint: truncated"):
        load(run)


# ------------------------------------------------------------------------------------- consolidate: ddp, FSDP
def test_consolidate_reads_a_single_file_weights_only(tmp_path, marker):
    path = evil(tmp_path / "step=0000002.ckpt", marker)
    with refused(path):
        load_full(path)


def fsdp_folder(run: Path, *, entry=None, meta=None) -> Path:
    """checkpoints/step=2.ckpt/ as strategy=fsdp writes it: DCP shards (+ .metadata) and Lightning's meta.pt."""
    folder = run / "checkpoints" / "step=0000002.ckpt"
    folder.mkdir(parents=True)
    state = {"state_dict": {"dit.w": torch.arange(6.0).reshape(2, 3)},
             "optimizer_0": {"state": {"dit.w": {"step": torch.tensor(2.0), "exp_avg": torch.ones(2, 3)}},
                             "param_groups": [{"lr": 0.1, "params": ["dit.w"]}]}}
    if entry is not None:
        state["extra"] = entry  # a non-tensor entry: DCP pickles it into the shard
    dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    save({"global_step": 2, "loops": {"fit": 1}, **({"payload": meta} if meta is not None else {})},
         folder / "meta.pt")
    return folder


def test_an_fsdp_folder_consolidates_weights_only(tmp_path):
    run = run_folder(tmp_path / "run")
    fsdp_folder(run)
    full = load_pickled(consolidate(run, 2))
    assert full["global_step"] == 2 and torch.equal(full["state_dict"]["dit.w"], torch.arange(6.0).reshape(2, 3))
    assert full["optimizer_states"][0]["param_groups"][0]["params"] == [0]


def test_consolidate_refuses_a_crafted_meta_pt(tmp_path, marker):
    run = run_folder(tmp_path / "run")
    folder = fsdp_folder(run, meta=Payload(marker))
    with refused(folder / "meta.pt"):
        main([str(run), "--step", "2"])  # python -m wan_train.training.consolidate RUN --step 2


def test_consolidate_refuses_a_crafted_dcp_metadata_file(tmp_path, marker):
    run = run_folder(tmp_path / "run")
    folder = fsdp_folder(run)
    metadata = pickle.loads((folder / ".metadata").read_bytes())
    metadata.planner_data = Payload(marker)  # DCP's own reader would unpickle this with pickle.load
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match=rf"{at(folder / '.metadata')}: holds a pickled \S+.*could run code"):
        main([str(run), "--step", "2"])


def test_consolidate_refuses_a_crafted_entry_in_the_shards(tmp_path, marker):
    run = run_folder(tmp_path / "run")
    folder = fsdp_folder(run, entry=Payload(marker))
    with pytest.raises(CheckpointError, match=rf"{at(folder)}: .*could run code"):
        read_distributed(folder)
    with pytest.raises(CheckpointError, match=rf"{at(folder)}: .*could run code"):
        consolidate(run, 2)


# -------------------------------------------------------------------------------------------------- DeepSpeed
def deepspeed_folder(run: Path, *, model: dict, optim: dict | None = None, tag: str = "global_step2") -> Path:
    """checkpoints/step=2.ckpt/ as Lightning's DeepSpeed strategy writes it (ZeRO-2, one rank)."""
    folder = run / "checkpoints" / "step=0000002.ckpt"
    (folder / "global_step2").mkdir(parents=True)
    (folder / "latest").write_text(tag)
    save(model, folder / "global_step2" / "mp_rank_00_model_states.pt")
    save(optim or {"optimizer_state_dict": {}}, folder / "global_step2" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    return folder


MODEL_STATES = {"module": {"w": torch.ones(2)}, "buffer_names": [], "param_shapes": [OrderedDict(w=torch.Size([2]))],
                "shared_params": {}, "frozen_param_shapes": None, "ds_version": "0.19.8", "global_step": 2}


def test_consolidate_refuses_a_crafted_deepspeed_model_states_file(tmp_path, marker):
    run = run_folder(tmp_path / "run")
    folder = deepspeed_folder(run, model={**MODEL_STATES, "payload": Payload(marker)})
    with refused(folder / "global_step2" / "mp_rank_00_model_states.pt"):
        consolidate(run, 2)


def test_the_consolidate_command_refuses_it_in_one_line(tmp_path, marker):
    """The reported case as a user meets it: python -m wan_train.training.consolidate RUN --step N."""
    run = run_folder(tmp_path / "run")
    folder = deepspeed_folder(run, model={**MODEL_STATES, "payload": Payload(marker)})
    done = subprocess.run([sys.executable, "-m", "wan_train.training.consolidate", str(run), "--step", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {folder / 'global_step2' / 'mp_rank_00_model_states.pt'}: holds a pickled getattr, which "
        "weights-only loading refuses: unpickling it could run code")


def test_consolidate_refuses_a_crafted_deepspeed_optimizer_shard(tmp_path, marker):
    run = run_folder(tmp_path / "run")
    folder = deepspeed_folder(run, model=MODEL_STATES, optim={"optimizer_state_dict": {"payload": Payload(marker)}})
    with refused(folder / "global_step2" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        consolidate(run, 2)


def test_deepspeeds_latest_must_name_a_sub_folder(tmp_path):
    run = run_folder(tmp_path / "run")
    folder = deepspeed_folder(run, model=MODEL_STATES, tag="../../elsewhere")
    with pytest.raises(CheckpointError, match=rf"{at(folder / 'latest')}: names '../../elsewhere', which is not a sub"):
        consolidate(run, 2)


# ------------------------------------------------------------------------------------------------------- resume
def test_the_run_checkpoint_io_resumes_weights_only(tmp_path, marker):
    path = evil(tmp_path / "x.ckpt", marker)
    with refused(path):
        AtomicCheckpointIO().load_checkpoint(path)  # what Lightning calls for auto / ddp runs


@pytest.mark.parametrize("content, why", [
    (b"", "an empty file"), (b"\x00" * 64, "not a torch file"), (None, "truncated"),
])
def test_a_damaged_resume_file_fails_naming_it(tmp_path, content, why):
    path = tmp_path / "x.ckpt"
    path.write_bytes(content if content is not None
                     else save({"w": torch.ones(100)}, tmp_path / "whole.ckpt").read_bytes()[:300])
    with pytest.raises(CheckpointError, match=rf"^resume={path}: {why}"):
        resume_path(str(path), tmp_path / "run")


def checkpoints(run: Path, steps, damaged: dict) -> None:
    for step in steps:
        path = save({"global_step": step}, run / "checkpoints" / f"step={step:07d}.ckpt")
        if step in damaged:
            path.write_bytes(damaged[step] if damaged[step] is not None else path.read_bytes()[:200])


@pytest.mark.parametrize("damage", [b"", None, b"garbage"], ids=["zero-byte", "truncated", "garbage"])
def test_resume_auto_skips_a_damaged_newest_checkpoint_naming_it(tmp_path, caplog, damage):
    run = tmp_path / "run"
    checkpoints(run, (2, 4, 6), {6: damage})
    with caplog.at_level(logging.WARNING):
        assert resume_path("auto", run) == run / "checkpoints" / "step=0000004.ckpt"
    assert "skipping the damaged checkpoint" in caplog.text and "step=0000006.ckpt" in caplog.text
    assert newest_intact(run) == (4, run / "checkpoints" / "step=0000004.ckpt")


def test_resume_auto_never_starts_afresh_over_damaged_checkpoints(tmp_path):
    run = tmp_path / "run"
    checkpoints(run, (2, 4), {2: b"", 4: b""})
    with pytest.raises(CheckpointError, match=r"every checkpoint of .* is damaged, the newest .*step=0000004"):
        resume_path("auto", run)
    assert resume_path("auto", tmp_path / "fresh") is None


def test_resume_auto_checks_shard_folders(tmp_path):
    run = tmp_path / "run"
    checkpoints(run, (2,), {})
    fsdp_folder(run.parent / "fsdp")  # step 2 of another run, moved in as step 4 without its DCP metadata
    (run.parent / "fsdp" / "checkpoints" / "step=0000002.ckpt").rename(run / "checkpoints" / "step=0000004.ckpt")
    (run / "checkpoints" / "step=0000004.ckpt" / ".metadata").unlink()
    assert resume_path("auto", run) == run / "checkpoints" / "step=0000002.ckpt"
