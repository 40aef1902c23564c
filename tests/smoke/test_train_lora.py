"""LoRA through train.py's run(cfg) on the CPU: the base stays frozen, checkpoints hold only the adapter and resume
exactly, the run lands an immutable registry version with its lineage, and generate.py applies it by name (and
refuses it on another base); a run folder loads as base + merged adapter; expert=both registers a high/low pair."""

import csv
import json

import pytest
import torch

from data_tools.make_demo import make_demo
from tests.helpers import randomize_, write_official_folder
from wan_train.config import compose_config
from wan_train.inference.loading import load
from wan_train.lora import Registry, applied, base_identity, load_lora
from wan_train.models import WanDiT, get_size, load_dit, save_dit
from wan_train.training.run import run


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo(root / "train", num_clips=8, seed=0, width=256, height=144, frames=17, fps=16.0, shard_size=4,
              character="zxq mascot")
    make_demo(root / "val", num_clips=2, seed=1, width=256, height=144, frames=17, fps=16.0, shard_size=2,
              character="zxq mascot")
    make_demo(root / "other", num_clips=2, seed=1, width=256, height=144, frames=17, fps=16.0, shard_size=2)
    torch.manual_seed(0)
    save_dit(randomize_(WanDiT(get_size("quickstart").dit), seed=3), root / "base")
    return root


def config(demo, tmp_path, **overrides):
    values = {"model": "quickstart", "data": "mascot", "trainer": "cpu", "model.checkpoint": str(demo / "base"),
              "data.shards": f"[{demo / 'train'}]", "data.val_shards": f"[{demo / 'val'}]",
              "data.val_sets.other": f"[{demo / 'other'}]", "data.durations": "[0.5]",
              "run_dir": str(tmp_path / "run"), "lora.root": str(tmp_path / "adapters"), "lora.rank": "4",
              "lora.alpha": "4", "trainer.enable_progress_bar": "false", "trainer.val_every_n_steps": "3",
              "trainer.checkpoint_every_n_steps": "3", "trainer.log_every_n_steps": "1", "trainer.max_steps": "6",
              "flow.held_out_samples": "1", "flow.held_out_quantiles": "2", "logger.wandb": "false",
              "optim.lr": "1e-3"}
    values.update(overrides)
    return compose_config(["recipe=lora_character", *(f"{k}={v}" for k, v in values.items())])


def losses(run_dir) -> dict[int, float]:
    out = {}
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with open(path) as file:
            out.update({int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(file) if r.get("train/loss")})
    return out


def test_lora_run_registers_a_version_and_generate_applies_it_by_name(demo, tmp_path):
    cfg = config(demo, tmp_path, **{"lora.client": "acme", "lora.name": "mascot", "trainer.ema_decay": "0.5"})
    metrics = run(cfg)
    run_dir, base = tmp_path / "run", load_dit(demo / "base")
    assert metrics["adapter"] == "acme/mascot/v0001"
    assert "val/other/loss" in metrics and "val/other/loss_first" in metrics  # the second held-out set
    assert not (run_dir / "dit").exists()  # the frozen base is never re-exported
    # checkpoints hold the adapter only (plus optimizer state), not the base
    state = torch.load(run_dir / "checkpoints" / "step=0000006.ckpt", weights_only=True)["state_dict"]
    assert state and all(".lora_A.default." in k or ".lora_B.default." in k for k in state)
    # the registry version: weights (the EMA ones, as configured), peft config, lineage
    registry = Registry(tmp_path / "adapters")
    version = registry.get("acme/mascot")
    registry.verify(version)
    manifest = version.manifest
    assert manifest["kind"] == "character" and manifest["trigger_words"] == ["zxq mascot"]
    assert manifest["base"]["identity"] == {"dit": base_identity(base)} and manifest["experts"] == ["dit"]
    assert manifest["ema"] is True and manifest["steps"] == {"dit": 6}
    assert manifest["lora"]["rank"] == 4 and manifest["recipe"] == "lora_character"
    assert len(manifest["data"]["fingerprint"]) == 64 and manifest["config"]["lora"]["client"] == "acme"
    assert json.loads((version.path / "adapter_config.json").read_text())["r"] == 4
    lora = load_lora(version.file("adapter_model.safetensors"), model=base)
    assert any(m.B.abs().max() > 0 for m in lora.modules.values())  # trained away from B = 0
    # the run folder loads as base + merged (non-EMA) adapter: equal to applying run_dir/adapter per token
    loaded = load(run_dir)
    dit = loaded.models.dits[None]
    x = torch.randn(1, 12, 2, 4, 8)
    context = torch.randn(1, 5, base.config.text_dim)
    t = torch.tensor([500.0])
    with torch.no_grad(), applied(base, [(run_dir / "adapter" / "adapter_model.safetensors", 1.0)]):
        expected = base(x, t, context)
    with torch.no_grad():
        torch.testing.assert_close(dit(x, t, context), expected, rtol=0, atol=1e-5)
    # a second run lands v0002; v0001 is untouched
    before = (version.path / "adapter_model.safetensors").read_bytes()
    run(config(demo, tmp_path / "again", **{"lora.client": "acme", "lora.name": "mascot",
                                            "lora.root": str(tmp_path / "adapters"), "trainer.max_steps": "1"}))
    assert [v.version for v in registry.versions("acme", "mascot")] == ["v0001", "v0002"]
    assert (version.path / "adapter_model.safetensors").read_bytes() == before


def test_lora_resume_reproduces_the_losses_exactly(demo, tmp_path):
    run(config(demo, tmp_path / "full"))
    run(config(demo, tmp_path / "resumed", **{"trainer.max_steps": "3"}))
    metrics = run(config(demo, tmp_path / "resumed"))
    assert metrics["resumed_from"].endswith("step=0000003.ckpt")
    full, resumed = losses(tmp_path / "full" / "run"), losses(tmp_path / "resumed" / "run")
    assert sorted(full) == list(range(6)) and resumed == full


def test_lora_needs_a_base_and_valid_settings(demo, tmp_path):
    from wan_train.config import ConfigError, validate

    with pytest.raises(ConfigError, match="model.checkpoint"):
        validate(config(demo, tmp_path, **{"model.checkpoint": "null"}))
    with pytest.raises(ConfigError, match="lora.target='everything'"):
        validate(config(demo, tmp_path, **{"lora.target": "everything"}))
    with pytest.raises(ConfigError, match="set both"):
        validate(config(demo, tmp_path, **{"lora.client": "acme"}))
    with pytest.raises(ConfigError, match="lora.name='a/b'"):
        validate(config(demo, tmp_path, **{"lora.client": "acme", "lora.name": "a/b"}))


def test_both_experts_register_a_high_low_pair(demo, tmp_path):
    encoders, base = tmp_path / "Wan-tiny", tmp_path / "Wan-tiny-moe"
    encoders.mkdir()
    write_official_folder(encoders)  # the tiny VAE and umT5 the raw-video batches are encoded with
    for seed, expert in enumerate(("high_noise", "low_noise")):  # an official A14B-style folder of two experts
        save_dit(randomize_(WanDiT(get_size("tiny-moe").dit), seed=seed), base / f"{expert}_model")
    cfg = config(demo, tmp_path, **{"model": "tiny", "model.size": "tiny-moe", "model.checkpoint": str(base),
                                    "model.encoders": str(encoders), "expert": "both", "expert.alternate_every": "2",
                                    "trainer.max_steps": "2", "lora.client": "acme", "lora.name": "pair"})
    metrics = run(cfg)
    version = Registry(tmp_path / "adapters").get(metrics["adapter"])
    assert version.manifest["experts"] == ["high_noise", "low_noise"]
    assert set(version.manifest["weights"].values()) == {"high_noise/adapter_model.safetensors",
                                                         "low_noise/adapter_model.safetensors"}
    for expert in ("high_noise", "low_noise"):
        dit = load_dit(base, expert=expert)
        assert version.manifest["base"]["identity"][expert] == base_identity(dit)
