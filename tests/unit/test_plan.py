"""The memory planner (wan_train.plan): its activation formula against what our block really saves for backward,
its weight counts against the whole model, the arithmetic of offloading, the choice, and the CLI."""

import importlib
import math
import re

import pytest
import torch

from wan_train.config.compose import compose_config
from wan_train.lora import add_adapter
from wan_train.memory import Placement, place_base
from wan_train.models import DiTConfig, WanDiT, get_size
from wan_train.plan import (GPUS, NoFit, Setting, Workload, block_activations, candidates, choose, estimate, fits,
                            gpu_for, parse_memory, plan_run, weight_count, workload_of)
from wan_train.plan.__main__ import main
from wan_train.memory import GIB
from wan_train.plan.estimate import block_linears

# the module, not the function wan_train.plan exports under the same name
choose_module = importlib.import_module("wan_train.plan.choose")
GENERIC_24 = gpu_for(None, "24GB")
A14B_480P = Workload(size="wan2.2-t2v-a14b", width=832, height=480, frames=81, lora_rank=32)


# --------------------------------------------------------------------------------------- activation formula
def measure_block_saved_bytes(cfg: DiTConfig, *, tokens: int, image_tokens: int, lora_rank: int | None,
                              lora_target: str, base_dtype: str, full_finetune: bool, per_token_time: bool) -> int:
    """Bytes of the unique storages one WanBlock saves for backward under CPU bf16 autocast, weights (parameters,
    buffers) and the inputs every block shares (e0, context, RoPE tables) left out; its own input x counted. A
    middle block: x requires grad; in a full fine-tune the context and e0 do too (their embeddings train)."""
    torch.manual_seed(0)
    dit = WanDiT(cfg)
    if full_finetune:
        dit.requires_grad_(True)
    else:
        if lora_rank is None:
            dit.requires_grad_(False)
        else:
            add_adapter(dit, target=lora_target, rank=lora_rank, alpha=float(lora_rank))
        place_base(dit, Placement(base_dtype=base_dtype))
    weights = {t.untyped_storage().data_ptr() for t in [*dit.parameters(), *dit.buffers()]}
    x = torch.randn(1, tokens, cfg.dim, requires_grad=True)
    e0 = torch.randn(1, tokens if per_token_time else 1, 6, cfg.dim, requires_grad=full_finetune)
    context = torch.randn(1, image_tokens + cfg.text_len, cfg.dim, dtype=torch.bfloat16, requires_grad=full_finetune)
    rope = dit.rope.for_grid((1, 8, tokens // 8), torch.device("cpu"))
    shared = {t.untyped_storage().data_ptr() for t in (e0, context, *rope)}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights | shared:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        dit.blocks[0](x, e0, context, rope)
    return sum(saved.values())


COMBOS = [  # (dim, ffn, heads, tokens, text, image tokens, rank, target, base dtype, full, per-token time)
    (256, 512, 2, 64, 32, 0, None, "attn_qkvo_ffn", "bfloat16", False, False),
    (256, 512, 2, 64, 32, 0, 4, "attn_qkvo_ffn", "bfloat16", False, False),
    (256, 768, 4, 128, 16, 0, 8, "attn_qkvo", "float8_e4m3fn", False, False),
    (256, 768, 4, 128, 16, 0, 4, "self_attn", "float32", False, False),
    (256, 512, 2, 64, 32, 0, 4, "cross_attn", "bfloat16", False, True),
    (384, 640, 3, 64, 48, 16, 4, "attn_qkvo_ffn", "bfloat16", False, False),
    (384, 640, 3, 64, 48, 16, 16, "all_linear", "float32", False, True),
    (256, 768, 4, 128, 16, 0, None, "attn_qkvo_ffn", "float32", True, False),
    (384, 640, 3, 64, 48, 16, None, "attn_qkvo_ffn", "float32", True, True),
]


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "-".join(map(str, c)))
def test_block_activation_formula_equals_what_the_block_saves(combo):
    d, f, n, t, s, i, rank, target, base, full, per_token = combo
    cfg = DiTConfig(dim=d, ffn_dim=f, num_heads=n, num_layers=1, text_len=s, **({"image_dim": 64} if i else {}))
    measured = measure_block_saved_bytes(cfg, tokens=t, image_tokens=i, lora_rank=rank, lora_target=target,
                                         base_dtype=base, full_finetune=full, per_token_time=per_token)
    formula = block_activations(cfg, tokens=t, lora_rank=rank, lora_target=target, base_dtype=base,
                                full_finetune=full, per_token_time=per_token, image_tokens=i).total
    if full:
        # A full fine-tune's saved bf16 weight copies are the autocast cache, which the estimate counts apart.
        formula += sum(2 * lin.fan_in * lin.fan_out for lin in block_linears(cfg))
        # On the CPU F.rms_norm is composite: with a trained weight it also saves the normalised float32 input
        # (the CUDA kernel, _fused_rms_norm, saves input and rstd only): q, k, cross q per video token, the
        # context's k (and k_img) per text / image token.
        formula += 4 * d * (3 * t + s + i)
    assert measured == formula


# ----------------------------------------------------------------------------------------------------- weights
def test_14b_parameter_count_is_the_closed_form():
    cfg = get_size("wan2.1-t2v-14b").dit
    d, f, p = cfg.dim, cfg.ffn_dim, math.prod(cfg.patch_size)
    block = 8 * (d * d + d) + 4 * d + 2 * d + (2 * d * f + f + d) + 6 * d  # 8 linears, q/k norms, norm3, FFN, mod
    outside = ((p * cfg.in_dim * d + d) + (cfg.text_dim * d + d + d * d + d) + (cfg.freq_dim * d + d + d * d + d)
               + (6 * d * d + 6 * d) + (d * p * cfg.out_dim + p * cfg.out_dim) + 2 * d)
    with torch.device("meta"):
        dit = WanDiT(cfg)
    assert dit.num_parameters() == cfg.num_layers * block + outside == 14_288_491_584
    fp32 = sum(q.numel() for name, q in dit.named_parameters() if name in dit.fp32_parameter_names())
    counted = weight_count(cfg, lora_rank=32, lora_target="attn_qkvo_ffn", base_dtype="bfloat16")
    assert counted.frozen == 2 * (dit.num_parameters() - fp32) + 4 * fp32  # bf16 except the float32 names
    fp8 = weight_count(cfg, lora_rank=32, lora_target="attn_qkvo_ffn", base_dtype="float8_e4m3fn")
    linear = [m for m in dit.blocks.modules() if isinstance(m, torch.nn.Linear)]
    weights, rows = sum(m.weight.numel() for m in linear), sum(m.out_features for m in linear)
    # block linears: 1 B per weight + a float32 scale per row; their biases and the rest bf16 as before
    assert fp8.frozen == counted.frozen - 2 * weights + weights + 4 * rows


@pytest.mark.parametrize("base", ["bfloat16", "float8_e4m3fn"])
def test_weight_count_of_one_block_extrapolates_to_the_whole_model(base):
    cfg = get_size("wan2.1-t2v-1.3b").dit
    with torch.device("meta"):
        dit = WanDiT(cfg)
    trained = add_adapter(dit, target="attn_qkvo", rank=16, alpha=16.0)
    place_base(dit, Placement(base_dtype=base))
    frozen = sum(t.numel() * t.element_size() for t in [*dit.parameters(), *dit.buffers()] if not t.requires_grad)
    counted = weight_count(cfg, lora_rank=16, lora_target="attn_qkvo", base_dtype=base)
    assert (counted.frozen, counted.trained) == (frozen, trained)


@pytest.mark.parametrize("target", ["attn_qkvo_ffn", "self_attn", "cross_attn"])
def test_lora_parameter_count_is_what_add_adapter_reports(target):
    cfg = get_size("tiny-i2v").dit
    trained = add_adapter(WanDiT(cfg), target=target, rank=8, alpha=8.0)
    assert weight_count(cfg, lora_rank=8, lora_target=target, base_dtype="bfloat16").trained == trained


# ----------------------------------------------------------------------------------------------------- estimate
@pytest.mark.parametrize("width, height, tokens", [(832, 480, 32760), (1280, 720, 75600)])
def test_tokens_of_81_frames_on_the_wan21_vae(width, height, tokens):
    workload = Workload(size="wan2.1-t2v-14b", width=width, height=height, frames=81, lora_rank=None)
    assert workload.tokens == tokens
    assert workload.latent_shape == (21, height // 8, width // 8)


def test_reference_tokens_are_what_the_dit_runs_on():
    """R2V appends each reference's latent frames to the video's: the planner's tokens are the blocks' sequence,
    with a timestep per token (the references' are 0)."""
    workload = Workload(size="quickstart", width=256, height=144, frames=17, lora_rank=None, references=2,
                        reference_frames=5)
    assert workload.latent_shape == (5, 18, 32) and workload.sequence_shape == (9, 18, 32)
    assert workload.per_token_time and "+ 2 references x 5 frames" in workload.describe()
    dit = WanDiT(get_size("quickstart").dit.replace(references=3, num_layers=1))
    seen = []
    dit.blocks[0].register_forward_hook(lambda module, args, out: seen.append((args[0].shape, args[1].shape)))
    f, h, w = workload.latent_shape
    with torch.no_grad():
        dit(torch.randn(1, 12, f, h, w), torch.tensor([500.0]), torch.randn(1, 8, dit.config.text_dim),
            refs=[torch.randn(1, 12, 2, h, w), torch.randn(1, 12, 2, h, w)])
    (x_shape, e_shape), = seen
    assert x_shape[1] == workload.tokens == 9 * 9 * 16 and e_shape[1] == workload.tokens  # per-token modulation
    plain = Workload(size="quickstart", width=256, height=144, frames=17, lora_rank=None)
    assert plain.tokens == 5 * 9 * 16 and not plain.per_token_time


def test_r2v_runs_plan_their_references():
    cfg = compose_config(["recipe=r2v", "memory=24gb", "data.reference_frames=5"])
    workload = workload_of(cfg)
    assert (workload.references, workload.reference_frames) == (3, 5)
    without = workload_of(compose_config(["recipe=lora_character"]))
    assert workload.tokens == without.tokens + 3 * 2 * 30 * 52  # 3 references of 2 latent frames at 480p
    setting = Setting(base_dtype="bfloat16", activation_checkpointing=True, offload_activations=False,
                      offload_blocks=0)
    assert estimate(workload, setting, gpu=GENERIC_24).peak > estimate(
        Workload(**{**workload.__dict__, "references": 0}), setting, gpu=GENERIC_24).peak


def test_bad_workloads_are_refused():
    with pytest.raises(ValueError, match="references=4 must be 0..3"):
        Workload(size="wan2.1-t2v-1.3b", width=832, height=480, frames=81, lora_rank=8, references=4)
    with pytest.raises(ValueError, match="reference_frames=2 must be 1 \\+ 4k"):
        Workload(size="wan2.1-t2v-1.3b", width=832, height=480, frames=81, lora_rank=8, references=1,
                 reference_frames=2)
    with pytest.raises(ValueError, match="frames=80 must be 1 \\+ 4k"):
        Workload(size="wan2.1-t2v-1.3b", width=832, height=480, frames=80, lora_rank=8)
    with pytest.raises(ValueError, match="width=830 must be a positive multiple of 16"):
        Workload(size="wan2.1-t2v-1.3b", width=830, height=480, frames=81, lora_rank=8)
    with pytest.raises(ValueError, match="unknown model size"):
        Workload(size="wan9", width=832, height=480, frames=81, lora_rank=8)


def test_block_offload_moves_exactly_the_blocks_beyond_the_window():
    counted = weight_count(get_size("wan2.2-t2v-a14b").dit, lora_rank=32, lora_target="attn_qkvo_ffn",
                           base_dtype="float8_e4m3fn")
    base = dict(base_dtype="float8_e4m3fn", activation_checkpointing=True, offload_activations=True)
    for prefetch in (1, 2):
        window = 1 + prefetch
        none = estimate(A14B_480P, Setting(**base, offload_blocks=0, prefetch_blocks=prefetch), gpu=GENERIC_24)
        for k in (1, window, window + 1, 30, 40):
            e = estimate(A14B_480P, Setting(**base, offload_blocks=k, prefetch_blocks=prefetch), gpu=GENERIC_24)
            assert none.parts["weights"] - e.parts["weights"] == max(0, k - window) * counted.frozen_block
            assert e.host_bytes - none.host_bytes == k * counted.frozen_block


def test_estimates_are_monotone():
    gpu = GPUS["rtx4090"]
    for setting in candidates(Workload(size="wan2.1-t2v-1.3b", width=832, height=480, frames=81, lora_rank=16)):
        peaks = [estimate(Workload(size="wan2.1-t2v-1.3b", width=832, height=480, frames=frames, lora_rank=16),
                          setting, gpu=gpu).peak for frames in (33, 49, 81)]
        assert peaks == sorted(peaks) and len(set(peaks)) == 3
    for ckpt, act in ((False, False), (True, False), (True, True)):
        rows = [estimate(A14B_480P, Setting(base_dtype="bfloat16", activation_checkpointing=ckpt,
                                            offload_activations=act, offload_blocks=k), gpu=gpu) for k in range(41)]
        pairs = list(zip(rows, rows[1:], strict=False))
        assert all(a.peak >= b.peak for a, b in pairs)  # more offload: less device memory
        assert all(a.host_bytes < b.host_bytes for a, b in pairs)  # and more host memory
        assert all(a.step_seconds <= b.step_seconds for a, b in pairs)
    # checkpointing keeps one float32 residual per block instead of everything a block saves
    plain, ckpt = (estimate(A14B_480P, Setting(base_dtype="bfloat16", activation_checkpointing=c,
                                               offload_activations=False, offload_blocks=0), gpu=gpu)
                   for c in (False, True))
    assert ckpt.parts["checkpointed inputs"] == 40 * 4 * A14B_480P.tokens * 5120
    assert ckpt.peak < plain.peak and ckpt.step_seconds > plain.step_seconds


def test_full_finetune_has_no_frozen_base_to_narrow_or_offload():
    workload = Workload(size="wan2.1-t2v-1.3b", width=832, height=480, frames=81, lora_rank=None)
    settings = candidates(workload)
    assert {s.base_dtype for s in settings} == {"float32"} and {s.offload_blocks for s in settings} == {0}
    with pytest.raises(ValueError, match="frozen base"):
        estimate(workload, Setting(base_dtype="float8_e4m3fn", activation_checkpointing=True,
                                   offload_activations=False, offload_blocks=0), gpu=GENERIC_24)
    e = estimate(workload, settings[1], gpu=GENERIC_24)
    assert e.parts["trainable+optimizer"] == 16 * weight_count(workload.model.dit, lora_rank=None,
                                                               lora_target="attn_qkvo_ffn",
                                                               base_dtype="float32").trained


# ------------------------------------------------------------------------------------------------------- choose
def test_choose_picks_the_fastest_setting_that_fits(monkeypatch):
    plan = choose(A14B_480P, GENERIC_24)
    fitting = [e for _, e in plan.table if fits(e, GENERIC_24)]
    assert plan.fits and fits(plan.estimate, GENERIC_24)
    fastest = min(e.step_seconds for e in fitting)
    assert plan.estimate.step_seconds <= fastest * (1 + choose_module.SPEED_TOLERANCE)
    # within the tolerance the least host memory wins: the fewest blocks offloaded
    assert plan.setting == Setting(base_dtype="float8_e4m3fn", activation_checkpointing=True,
                                   offload_activations=True, offload_blocks=30)
    monkeypatch.setattr(choose_module, "SPEED_TOLERANCE", 0.0)
    strict = choose(A14B_480P, GENERIC_24)
    assert strict.estimate.step_seconds == fastest


def test_usable_memory_keeps_a_margin():
    assert choose_module.usable_bytes(GPUS["h100"]) == int(0.92 * 80 * GIB) - int(0.75 * GIB)


def test_nothing_fits_names_the_smallest_estimate_and_what_to_change():
    big = Workload(size="wan2.2-t2v-a14b", width=1280, height=720, frames=81, lora_rank=32)
    with pytest.raises(NoFit, match=r"smallest estimate is \d+\.\d+ GiB .*fewer frames.*lower resolution"
                                    r".*smaller LoRA rank") as caught:
        choose(big, GENERIC_24)
    assert len(caught.value.table) == len(candidates(big))
    full = Workload(size="wan2.1-t2v-14b", width=832, height=480, frames=81, lora_rank=None)
    with pytest.raises(NoFit, match="weights and trainable state alone .*train a LoRA"):
        choose(full, GPUS["h100"])


def test_plan_run_reads_the_config():
    cfg = compose_config(["recipe=lora_character", "memory=24gb"])
    plan = plan_run(cfg)
    workload = workload_of(cfg)
    assert (workload.size, workload.lora_rank, workload.width, workload.height, workload.frames) == (
        "wan2.1-t2v-1.3b", 32, 832, 480, 81)
    assert plan.setting == choose(workload, gpu_for(None, "24GB")).setting
    # 1.3B at 480p81f: checkpointing alone fits 24 GB; no-checkpointing with 28 blocks offloaded (recomputed as
    # checkpoints) is estimated 2% faster but pins host memory, so it counts as a tie and loses
    assert plan.setting == Setting(base_dtype="bfloat16", activation_checkpointing=True, offload_activations=False,
                                   offload_blocks=0)
    # the printed overrides are real train.py overrides
    applied = compose_config(["recipe=lora_character", *plan.setting.overrides()])
    assert applied.memory.base_dtype == plan.setting.base_dtype
    assert applied.model.activation_checkpointing == plan.setting.activation_checkpointing
    with pytest.raises(ValueError, match="no GPU given"):
        plan_run(compose_config(["recipe=lora_character"]))
    with pytest.raises(ValueError, match="strategy.name='fsdp' shards"):
        plan_run(compose_config(["recipe=lora_character", "memory=24gb", "strategy=fsdp"]))


# ---------------------------------------------------------------------------------------------------- GPUs
def test_parse_memory():
    assert parse_memory("24GB") == parse_memory("24GiB") == parse_memory("24g") == 24 * GIB
    assert parse_memory("512MB") == 512 * 2**20 and parse_memory("23.5GB") == int(23.5 * GIB)
    assert parse_memory(10**9) == 10**9
    for bad in ("24", "lots", "-3GB", "24 parsecs", 0, True):
        with pytest.raises(ValueError, match="memory"):
            parse_memory(bad)


def test_gpu_for():
    assert gpu_for("H100", None) == GPUS["h100"]
    assert gpu_for("rtx3090", "20GB").memory == 20 * GIB
    generic = gpu_for(None, "48GB")
    assert generic.memory == 48 * GIB and "assumed" in generic.note
    with pytest.raises(ValueError, match="unknown gpu 'gtx480'; known: rtx3090"):
        gpu_for("gtx480", None)


# ------------------------------------------------------------------------------------------------------- CLI
def test_cli_issue_example(capsys):
    # the issue's own command: without a recipe or data group, data=video (batch 1); one clip per step fits 24 GB
    # only with float8, 30 of 40 blocks offloaded, checkpointing and activation offload
    assert main(["model=wan2_2_t2v_a14b", "resolution=480p", "frames=81", "gpu_mem=24GB", "lora.rank=32"]) == 0
    out = capsys.readouterr().out
    assert "plan for wan2.2-t2v-a14b, LoRA rank 32 (attn_qkvo_ffn), 832x480x81 (latent 21x60x104, 32760 " \
           "tokens), batch 1" in out
    assert ("fastest that fits: memory.base_dtype=float8_e4m3fn memory.offload_blocks=30 "
            "memory.offload_activations=true model.activation_checkpointing=true") in out
    rows = [line for line in out.splitlines() if line.startswith(("bfloat16", "float8"))]
    assert len(rows) == 12 and sum(line.endswith("yes") for line in rows) == 2
    # two clips per step fit nowhere: the message says what to change
    assert main(["model=wan2_2_t2v_a14b", "resolution=480p", "frames=81", "gpu_mem=24GB", "lora.rank=32",
                 "batch_size=2"]) == 1
    out = capsys.readouterr().out
    assert "nothing fits generic 24 GiB" in out and "batch_size=1 (now 2)" in out


def test_cli_lists_every_setting_with_all(capsys):
    assert main(["recipe=lora_character", "gpu=rtx4090", "--all"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("bfloat16", "float8"))]
    assert len(rows) == len(candidates(Workload(size="wan2.1-t2v-1.3b", width=832, height=480, frames=81,
                                                lora_rank=32)))


@pytest.mark.parametrize("argv, message", [
    (["gpu=gtx480"], "unknown gpu 'gtx480'"),
    (["gpu_mem=lots"], "memory 'lots'"),
    (["gpu_mem=24GB", "foo.bar=1"], "Could not override 'foo.bar'"),
    (["gpu_mem=24GB", "resolution=big"], "resolution='big'"),
    (["gpu_mem=24GB", "frames=0"], "frames=0"),
    (["gpu_mem=24GB", "frames=80"], "frames=80 must be 1 \\+ 4k"),
    (["gpu_mem=24GB", "verbose"], "expected KEY=VALUE"),
    ([], "no GPU given"),
])
def test_cli_bad_arguments(capsys, argv, message):
    assert main(["recipe=lora_character", *argv]) == 2
    assert re.search(message, capsys.readouterr().err)
