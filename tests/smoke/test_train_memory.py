"""A LoRA run's memory settings through train.py's run(cfg) on the CPU: block offload and host-side encoders
change nothing in the losses; a float8 base trains, records the base it was trained on (not its float8 copy) and
its adapter applies to the full-precision base; memory.budget plans the settings at start."""

import json
import math

import pytest
import torch
import yaml
from safetensors import safe_open

from tests.smoke.test_train_lora import config, demo, losses  # noqa: F401 (demo is a fixture)
from wan_train.config import ConfigError, validate
from wan_train.lora import BaseMismatchError, base_identity
from wan_train.models import WanDiT, get_size, load_dit
from wan_train.training.run import run

SHORT = {"trainer.max_steps": "3", "trainer.val_every_n_steps": "3", "trainer.checkpoint_every_n_steps": "3"}


def test_block_offload_and_host_encoders_leave_the_losses_unchanged(demo, tmp_path):  # noqa: F811
    plain = run(config(demo, tmp_path / "plain", **SHORT))
    offloaded = run(config(demo, tmp_path / "offload", **SHORT, **{
        "memory.offload_blocks": "2", "memory.prefetch_blocks": "1", "memory.encoders": "swap",
        "model.activation_checkpointing": "true"}))
    assert sorted(losses(tmp_path / "plain" / "run")) == [0, 1, 2]
    assert losses(tmp_path / "offload" / "run") == losses(tmp_path / "plain" / "run")
    assert offloaded["val/loss"] == plain["val/loss"]


def test_float8_base_trains_samples_and_records_the_full_precision_base(demo, tmp_path):  # noqa: F811
    videos = {"validation.every_n_steps": "3", "validation.prompts": "[zxq mascot]", "validation.steps": "2",
              "validation.num_frames": "5"}
    metrics = run(config(demo, tmp_path, **SHORT, **videos, **{
        "memory.base_dtype": "float8_e4m3fn", "memory.offload_blocks": "1", "memory.encoders": "cpu"}))
    assert all(math.isfinite(v) for v in losses(tmp_path / "run").values())
    assert math.isfinite(metrics["val/loss"])
    # validation videos sample through the shared loop with the float8, offloaded DiT
    assert (tmp_path / "run" / "samples" / "step_0000003" / "prompt_00.mp4").is_file()
    meta = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert meta["r"] == 4
    with safe_open(tmp_path / "run" / "adapter" / "adapter_model.safetensors", "pt") as file:
        recorded = file.metadata()
    assert base_identity(load_dit(demo / "base")) in json.dumps(recorded)


def test_memory_settings_are_checked_at_start(demo, tmp_path):  # noqa: F811
    full_finetune = {"lora.enabled": "false"}
    with pytest.raises(ConfigError, match="memory.offload_blocks=5"):
        validate(config(demo, tmp_path, **{"memory.offload_blocks": "5"}))
    with pytest.raises(ConfigError, match="memory.base_dtype=float8_e4m3fn needs a frozen base"):
        validate(config(demo, tmp_path, **full_finetune, **{"memory.base_dtype": "float8_e4m3fn"}))
    with pytest.raises(ConfigError, match="memory.encoders='gpu'"):
        validate(config(demo, tmp_path, **{"memory.encoders": "gpu"}))
    with pytest.raises(ConfigError, match="memory.budget='lots'"):
        validate(config(demo, tmp_path, **{"memory.budget": "lots"}))


def test_memory_budget_plans_the_settings_at_start_and_records_them(demo, tmp_path):  # noqa: F811
    metrics = run(config(demo, tmp_path, **SHORT, **{"memory": "24gb", "memory.encoders": "device"}))
    assert math.isfinite(metrics["val/loss"])
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    # a tiny model fits 24 GB as it is: the planner's fastest setting offloads nothing
    assert recorded["memory"]["budget"] == "24GB" and recorded["memory"]["offload_blocks"] == 0
    assert recorded["memory"]["base_dtype"] in ("bfloat16", "float8_e4m3fn")
    with pytest.raises(ConfigError, match="memory.budget=1MB: nothing fits"):
        run(config(demo, tmp_path / "tiny_budget", **SHORT, **{"memory.budget": "1MB"}))


def test_bf16_precision_reads_the_base_in_bf16_and_trains_the_adapter_in_float32(demo, tmp_path):  # noqa: F811
    from wan_train.training.run import prepare

    cfg = config(demo, tmp_path, **SHORT, **{"trainer.precision": "bf16-mixed"})
    dit = prepare(cfg).module.dit  # memory.base_dtype=auto: bf16 under bf16 precision
    keep = dit.fp32_parameter_names()
    assert all(p.dtype == torch.float32 for n, p in dit.named_parameters() if p.requires_grad or n in keep)
    assert {p.dtype for n, p in dit.named_parameters() if not p.requires_grad and n not in keep} == {torch.bfloat16}
    metrics = run(cfg)
    assert math.isfinite(metrics["val/loss"]) and all(math.isfinite(v) for v in losses(tmp_path / "run").values())


@pytest.mark.parametrize("fmt", ["fp8_scaled", "gguf_q8_0"])
def test_a_lora_trained_on_a_quantized_file_applies_to_the_full_precision_base(demo, tmp_path, fmt, caplog):  # noqa: F811
    """Two steps on a ComfyUI fp8 scaled base (kept as stored: memory.base_dtype=float8_e4m3fn) or a GGUF base
    (dequantized at load); the adapter records the file and quantization, and applies to the full-precision base."""
    from tests.quantized_files import write_comfy_fp8_scaled, write_gguf
    from wan_train.lora import applied, check_base
    from wan_train.lora.identity import architecture_identity
    from wan_train.memory import Fp8Linear
    from wan_train.training.run import prepare

    full = load_dit(demo / "base").eval()
    if fmt == "fp8_scaled":
        path = tmp_path / "base_fp8_scaled.safetensors"
        stored = write_comfy_fp8_scaled(full.state_dict(), path)
        memory = {"memory.base_dtype": "float8_e4m3fn"}
    else:
        path = tmp_path / "base-Q8_0.gguf"
        write_gguf(full.state_dict(), path, qtype="Q8_0")
        memory = {}
    overrides = {**SHORT, **memory, "model.checkpoint": str(path), "trainer.max_steps": "2",
                 "trainer.checkpoint_every_n_steps": "2", "trainer.val_every_n_steps": "2"}
    if fmt == "fp8_scaled":  # the file's float8 weights are the training base, bit for bit, with its scales
        layer = prepare(config(demo, tmp_path / "prepared", **overrides)).module.dit.blocks[0].ffn[0]
        base_layer = layer.get_base_layer()
        assert isinstance(base_layer, Fp8Linear)
        q, scale = stored["blocks.0.ffn.0.weight"]
        assert torch.equal(base_layer.weight.view(torch.uint8), q.view(torch.uint8))
        assert torch.equal(base_layer.weight_scale, scale)
    run(config(demo, tmp_path, **overrides))
    assert all(math.isfinite(v) for v in losses(tmp_path / "run").values())
    adapter = tmp_path / "run" / "adapter" / "adapter_model.safetensors"
    with safe_open(adapter, "pt") as file:
        recorded = file.metadata()["wan_train.base_hash"]
    assert "|quantized|" in recorded and path.name in recorded
    assert ("ComfyUI fp8 scaled" if fmt == "fp8_scaled" else "GGUF (") in recorded
    assert recorded == base_identity(load_dit(path))  # the same whichever dtype the file is read in
    assert architecture_identity(full) in recorded

    with caplog.at_level("WARNING", logger="wan_train.lora.identity"):
        check_base(recorded, full, what="lora x")
    assert "lora x was trained on a quantized base" in caplog.text and path.name in caplog.text
    inputs = {"x": torch.randn(1, 12, 2, 4, 6), "t": torch.tensor([500.0]), "context": torch.randn(1, 5, 4096)}
    with torch.no_grad():
        before = full(**inputs)
        with applied(full, [(adapter, 1.0)]):
            after = full(**inputs)
    assert not torch.equal(before, after)  # the trained adapter changes the full-precision base's output
    other = WanDiT(get_size("tiny").dit)  # another architecture: refused
    with pytest.raises(BaseMismatchError, match="trained on another base model"):
        check_base(recorded, other, what="lora x")
