"""LoRA files applied at inference: peft's own LoRA forward is the reference; the same weights written in every
layout users have (peft, diffusers, kohya / musubi-tuner, ComfyUI) give its output; strengths scale and adapters
add as merged weights would; the model is bit-identical afterwards; bad files fail naming the file and key."""

import copy
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, inject_adapter_in_model
from safetensors.torch import save_file

from tests.helpers import rel_err
from wan_train.lora import LoraWeights, applied, load_lora
from wan_train.lora import merged as merged_weights
from wan_train.models import CheckpointError, WanDiT, get_size
from wan_train.models.checkpoint.dit_layouts import DIFFUSERS, from_official

RANK, ALPHA = 4, 8
TARGETS = ["q", "k", "v", "o", "ffn.0", "ffn.2"]  # self- and cross-attention and the FFN of every block


def peft_lora(model, seed):
    """A peft LoRA (random A and B) on a copy of `model`: the peft model and its state dict as peft writes it."""
    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS,
                                                                 init_lora_weights=False))
    return peft_model, {k: v.contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}


@pytest.fixture(scope="module")
def reference(model, inputs):
    peft_model, state = peft_lora(model, seed=1)
    with torch.no_grad():
        base, out = model(**inputs), peft_model(**inputs)
    assert (out - base).abs().max() > 0.05  # the LoRA changes the output: the comparisons below mean something
    return state, out, peft_model


def factors(state) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """peft state dict -> our module name -> (A, B)."""
    out = {}
    for key, tensor in state.items():
        module, role = key.removeprefix("base_model.model.").rsplit(".", 2)[:2]
        out.setdefault(module, {})[role] = tensor
    return {m: (t["lora_A"], t["lora_B"]) for m, t in out.items()}


def kohya(module: str) -> str:
    return "lora_unet_" + module.replace(".", "_")


LAYOUTS = {  # module name -> (key of A, key of B, key of alpha or None)
    "peft": lambda m: (f"base_model.model.{m}.lora_A.weight", f"base_model.model.{m}.lora_B.weight", None),
    "peft-bare": lambda m: (f"{m}.lora_A.weight", f"{m}.lora_B.weight", None),
    "diffusers": lambda m: tuple(f"transformer.{from_official(m, DIFFUSERS)}.lora_{r}.weight" for r in "AB") + (None,),
    "kohya": lambda m: (f"{kohya(m)}.lora_down.weight", f"{kohya(m)}.lora_up.weight", f"{kohya(m)}.alpha"),
    "kohya-diffusers": lambda m: tuple(f"{kohya(from_official(m, DIFFUSERS))}.{s}"
                                       for s in ("lora_down.weight", "lora_up.weight", "alpha")),
    "comfyui": lambda m: tuple(f"diffusion_model.{m}.{s}" for s in ("lora_down.weight", "lora_up.weight", "alpha")),
    "comfyui-peft": lambda m: (f"diffusion_model.{m}.lora_A.weight", f"diffusion_model.{m}.lora_B.weight", None),
}


def write(path, state, layout, *, alpha_tensor=ALPHA, metadata=None):
    tensors = {}
    for module, (A, B) in factors(state).items():
        a_key, b_key, alpha_key = LAYOUTS[layout](module)
        tensors[a_key], tensors[b_key] = A, B
        if alpha_key:
            tensors[alpha_key] = torch.tensor(float(alpha_tensor))
    save_file(tensors, path, metadata=metadata)
    return path


def run(model, inputs, adapters=()):
    with torch.no_grad(), applied(model, adapters):
        return model(**inputs)


def merged(model, adapters):
    """The reference for strengths and sums: a copy with W += strength * alpha / r * B A for every adapter."""
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    with torch.no_grad():
        for state, strength in adapters:
            for name, (A, B) in factors(state).items():
                modules[name].weight += strength * ALPHA / RANK * B @ A
    return out


@pytest.mark.parametrize("layout", ["peft", "peft-bare", "diffusers"])
def test_peft_files_give_the_peft_output(tmp_path, model, inputs, reference, layout):
    state, expected, _ = reference
    path = write(tmp_path / "lora.safetensors", state, layout)
    torch.testing.assert_close(run(model, inputs, [(load_lora(path, model=model, alpha=ALPHA), 1.0)]), expected,
                               atol=1e-5, rtol=1e-5)


def test_a_peft_folder_gives_the_peft_output(tmp_path, model, inputs, reference):
    _, expected, peft_model = reference
    peft_model.save_pretrained(tmp_path)  # adapter_model.safetensors + adapter_config.json (lora_alpha)
    path = tmp_path / "adapter_model.safetensors"
    torch.testing.assert_close(run(model, inputs, [(path, 1.0)]), expected, atol=1e-5, rtol=1e-5)


def test_alpha_defaults_to_the_rank_without_alpha_anywhere(tmp_path, model, reference, caplog):
    path = write(tmp_path / "lora.safetensors", reference[0], "peft")
    assert {m.scale for m in load_lora(path, model=model).modules.values()} == {1.0}
    assert "alpha = rank" in caplog.text and "lora.safetensors" in caplog.text
    lora = load_lora(path, model=model, alpha=ALPHA)
    assert {m.scale for m in lora.modules.values()} == {ALPHA / RANK}
    assert len(lora.modules) == 2 * 10  # every targeted Linear of both blocks


@pytest.mark.parametrize("layout", ["kohya", "kohya-diffusers", "comfyui"])
def test_files_with_alpha_tensors_give_the_peft_output(tmp_path, model, inputs, reference, layout):
    state, expected, _ = reference
    path = write(tmp_path / "lora.safetensors", state, layout)
    torch.testing.assert_close(run(model, inputs, [(path, 1.0)]), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("metadata", [
    {"transformer.lora_alpha": ALPHA, "transformer.r": RANK},  # diffusers pipeline.save_lora_weights
    {"lora_alpha": ALPHA, "r": RANK},  # diffusers model.save_lora_adapter
])
def test_diffusers_metadata_supplies_alpha(tmp_path, model, inputs, reference, metadata):
    state, expected, _ = reference
    path = write(tmp_path / "lora.safetensors", state, "diffusers",
                 metadata={"format": "pt", "lora_adapter_metadata": json.dumps(metadata)})
    torch.testing.assert_close(run(model, inputs, [(str(path), 1.0)]), expected, atol=1e-5, rtol=1e-5)


def test_alpha_pattern_and_kohya_metadata(tmp_path, model, reference):
    meta = {"lora_adapter_metadata": json.dumps({"lora_alpha": ALPHA, "alpha_pattern": {"ffn.0": 2}})}
    lora = load_lora(write(tmp_path / "a.safetensors", reference[0], "comfyui-peft", metadata=meta), model=model)
    assert lora.modules["blocks.1.ffn.0"].scale == 2 / RANK and lora.modules["blocks.1.ffn.2"].scale == ALPHA / RANK
    kohya_meta = {"ss_network_dim": str(RANK), "ss_network_alpha": "2.0"}
    lora = load_lora(write(tmp_path / "b.safetensors", reference[0], "peft", metadata=kohya_meta), model=model)
    assert {m.scale for m in lora.modules.values()} == {2 / RANK}


def test_alpha_argument_contradicting_the_file_is_an_error(tmp_path, model, reference):
    path = write(tmp_path / "kohya.safetensors", reference[0], "kohya")
    assert load_lora(path, model=model, alpha=ALPHA).modules["blocks.0.self_attn.q"].scale == ALPHA / RANK
    with pytest.raises(CheckpointError, match=r"(?s)kohya\.safetensors.*alpha=16, file says 8\b"):
        load_lora(path, model=model, alpha=16)


def test_strength_scales_the_delta(tmp_path, model, inputs, reference):
    state = reference[0]
    lora = load_lora(write(tmp_path / "lora.safetensors", state, "kohya"), model=model)
    with torch.no_grad():
        base = model(**inputs)
        assert torch.equal(run(model, inputs, [(lora, 0.0)]), base)
        torch.testing.assert_close(run(model, inputs, [(lora, 2.0)]), merged(model, [(state, 2.0)])(**inputs),
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(run(model, inputs, [(lora, -0.5)]), merged(model, [(state, -0.5)])(**inputs),
                                   atol=1e-4, rtol=1e-4)


def test_two_adapters_add(tmp_path, model, inputs, reference):
    first = reference[0]
    second = peft_lora(model, seed=2)[1]
    paths = [write(tmp_path / "one.safetensors", first, "kohya"), write(tmp_path / "two.safetensors", second, "peft")]
    loras = [load_lora(paths[0], model=model), load_lora(paths[1], model=model, alpha=ALPHA)]
    with torch.no_grad():
        expected = merged(model, [(first, 0.8), (second, 1.5)])(**inputs)
    torch.testing.assert_close(run(model, inputs, [(loras[0], 0.8), (loras[1], 1.5)]), expected, atol=1e-4, rtol=1e-4)


def test_the_model_is_bit_identical_afterwards_even_after_an_exception(tmp_path, model, inputs, reference):
    path = write(tmp_path / "lora.safetensors", reference[0], "comfyui")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base = run(model, inputs)
    assert not torch.equal(run(model, inputs, [(path, 1.0)]), base)
    assert torch.equal(run(model, inputs), base)
    with pytest.raises(RuntimeError, match="inside"), applied(model, [(path, 1.0)]):
        raise RuntimeError("inside")
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.equal(run(model, inputs), base)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_autocast_and_bf16_weights(tmp_path, model, inputs, reference):
    state, expected, _ = reference
    path = write(tmp_path / "lora.safetensors", state, "kohya")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert rel_err(run(model, inputs, [(path, 1.0)]), expected) < 3e-2
    bf16 = copy.deepcopy(model).to_dtype(torch.bfloat16)
    assert rel_err(run(bf16, inputs, [(path, 1.0)]), expected) < 3e-2


def test_lora_weights_for_another_model_are_refused(tmp_path, model, reference):
    lora = load_lora(write(tmp_path / "lora.safetensors", reference[0], "kohya"), model=model)
    assert isinstance(lora, LoraWeights) and "lora.safetensors" in repr(lora)
    narrower = WanDiT(get_size("tiny").dit.replace(dim=128, num_heads=1))
    with pytest.raises(CheckpointError, match=r"lora\.safetensors.*another shape: blocks\.0\."):
        with applied(narrower, [(lora, 1.0)]):
            pass


def broken(tmp_path, reference, change):
    tensors = {f"diffusion_model.{k.removeprefix('base_model.model.')}": v for k, v in reference[0].items()}
    change(tensors)
    save_file(tensors, tmp_path / "broken.safetensors")
    return tmp_path / "broken.safetensors"


@pytest.mark.parametrize("change, message", [
    (lambda t: t.update({"diffusion_model.blocks.0.norm3.lora_A.weight": torch.zeros(RANK, 256)}),
     r"match no nn.Linear.*diffusion_model\.blocks\.0\.norm3\.lora_A\.weight"),
    (lambda t: t.update({"diffusion_model.blocks.7.self_attn.q.lora_A.weight": torch.zeros(RANK, 256)}),
     r"match no nn.Linear.*blocks\.7\.self_attn\.q\.lora_A\.weight"),
    (lambda t: t.update({"diffusion_model.blocks.0.ffn.2.lora_A.weight": torch.zeros(RANK, 255)}),
     r"shape mismatches.*blocks\.0\.ffn\.2\.lora_A\.weight \(4, 255\)"),
    (lambda t: t.pop("diffusion_model.blocks.1.cross_attn.o.lora_B.weight"),
     r"without both factors.*blocks\.1\.cross_attn\.o\.lora_A\.weight \(no B\)"),
    (lambda t: t.update({"diffusion_model.blocks.0.norm3.diff": torch.zeros(256)}),
     r"full-weight delta \(\.diff\).*diffusion_model\.blocks\.0\.norm3\.diff"),
    (lambda t: t.update({"diffusion_model.head.head.diff_b": torch.zeros(64)}), r"\.diff_b.*head\.head\.diff_b"),
    (lambda t: t.update({"diffusion_model.blocks.0.self_attn.q.dora_scale": torch.zeros(1, 256)}), r"DoRA"),
    (lambda t: t.update({"blocks.0.self_attn.q.lora_magnitude_vector.default.weight": torch.zeros(256)}),
     r"DoRA \(peft's lora_magnitude_vector\).*self_attn\.q\.lora_magnitude_vector\.default\.weight"),
])
def test_bad_files_name_the_file_and_key(tmp_path, model, reference, change, message):
    path = broken(tmp_path, reference, change)
    with pytest.raises(CheckpointError, match=r"(?s)broken\.safetensors.*" + message):
        load_lora(path, model=model)
    with pytest.raises(CheckpointError, match="broken.safetensors"), applied(model, [(path, 1.0)]):
        pass
    assert all(not m._forward_hooks for m in model.modules())


def test_not_a_lora_file(tmp_path, model):
    save_file({"blocks.0.self_attn.q.weight": torch.zeros(256, 256)}, tmp_path / "dit.safetensors")
    with pytest.raises(CheckpointError, match=r"(?s)dit\.safetensors.*not a LoRA tensor.*self_attn\.q\.weight"):
        load_lora(tmp_path / "dit.safetensors", model=model)
    with pytest.raises(CheckpointError, match="no such LoRA file"):
        load_lora(tmp_path / "missing.safetensors", model=model)


# ------------------------------------------------------------------------------------------------ peft adapter names

def diffsynth_lora(model, seed):
    """A LoRA as DiffSynth-Studio's trainer leaves it: peft's inject_adapter_in_model on the DiT with lora_alpha = rank
    (its only choice), the trainable parameters of model.state_dict() with "pipe.dit." removed, saved as they are:
    keys `blocks.0.self_attn.q.lora_A.default.weight`, no alpha anywhere. Returns the peft-injected model too."""
    config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=TARGETS)
    injected = inject_adapter_in_model(config, copy.deepcopy(model))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in injected.named_parameters():
            if p.requires_grad:  # B starts at zero: random factors make the adapter matter
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    trainable = {n for n, p in injected.named_parameters() if p.requires_grad}
    return injected, {k: v.contiguous() for k, v in injected.state_dict().items() if k in trainable}


def test_diffsynth_studio_files_give_the_same_output_as_the_peft_layout(tmp_path, model, inputs):
    injected, state = diffsynth_lora(model, seed=5)
    assert all(".default.weight" in k and not k.startswith(("base_model", "pipe.")) for k in state)
    save_file(state, tmp_path / "epoch-4.safetensors")
    lora = load_lora(tmp_path / "epoch-4.safetensors", model=model)
    assert len(lora.modules) == 2 * 10 and {m.scale for m in lora.modules.values()} == {1.0}
    with torch.no_grad():
        expected = injected(**inputs)
    assert (expected - model(**inputs)).abs().max() > 0.05  # the adapter matters: the comparisons mean something
    torch.testing.assert_close(run(model, inputs, [(lora, 1.0)]), expected, atol=1e-5, rtol=1e-5)

    # the same factors in peft's saved layout (adapter name removed, prefixed) read back as the same adapter, so the
    # outputs are bit-identical; merging it (merge.py) gives the per-token output to float tolerance
    peft_layout = {f"base_model.model.{k.replace('.default.weight', '.weight')}": v for k, v in state.items()}
    save_file(peft_layout, tmp_path / "peft.safetensors")
    peft_lora = load_lora(tmp_path / "peft.safetensors", model=model, alpha=RANK)
    assert lora.modules.keys() == peft_lora.modules.keys()
    assert all(torch.equal(m.A, peft_lora.modules[n].A) and torch.equal(m.B, peft_lora.modules[n].B)
               and m.scale == peft_lora.modules[n].scale for n, m in lora.modules.items())
    out = run(model, inputs, [(tmp_path / "epoch-4.safetensors", 0.7)])
    assert torch.equal(out, run(model, inputs, [(peft_lora, 0.7)]))
    with torch.no_grad(), merged_weights(model, [(tmp_path / "epoch-4.safetensors", 0.7)]):
        torch.testing.assert_close(model(**inputs), out, atol=1e-5, rtol=1e-5)


def test_any_adapter_name_is_read_and_two_in_one_file_are_refused(tmp_path, model, reference):
    named = {k.removeprefix("base_model.model.").replace(".weight", ".style.weight"): v
             for k, v in reference[0].items()}
    save_file(named, tmp_path / "style.safetensors")
    assert len(load_lora(tmp_path / "style.safetensors", model=model, alpha=ALPHA).modules) == 2 * 10

    default = {k.replace(".style.", ".default."): v.clone() for k, v in named.items() if k.startswith("blocks.0.")}
    save_file({**named, **default}, tmp_path / "two.safetensors")
    with pytest.raises(CheckpointError, match=r"two\.safetensors: keys of 2 peft adapters, (?=.*'style')(?=.*'default')"
                                              r".*ambiguous"):
        load_lora(tmp_path / "two.safetensors", model=model)
    # the same module with and without the name: one tensor too many, named, never one silently kept
    bare = {k.replace(".default.", "."): v.clone() for k, v in default.items()}
    save_file({**default, **bare}, tmp_path / "twice.safetensors")
    with pytest.raises(CheckpointError, match=r"(?s)given twice.*(?=.*cross_attn\.k\.lora_A\.default\.weight)"
                                              r"(?=.*cross_attn\.k\.lora_A\.weight)"):
        load_lora(tmp_path / "twice.safetensors", model=model)
