"""LoRA export: an adapter written in every format reads back (read_lora) as the same adapter, bit for bit, with
ranks and alphas that differ per module; the keys are the ones each ecosystem's loader expects, and the reference
loaders themselves (peft's PeftModel, diffusers' WanTransformer3DModel.load_lora_adapter and its ComfyUI / musubi
converters) give the output our applied() gives; metadata passes through; writes leave no temp files; bad input
is refused naming the module."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import wan_train.lora.formats as formats
from tests.helpers import rel_err
from wan_train.lora import LoraModule, LoraWeights, Registry, applied, outside_blocks, unreadable_by
from wan_train.lora.cli import main
from wan_train.lora.consumers import DIFFUSERS_LOADER
from wan_train.lora.formats import FORMATS, SUFFIX, read_lora, write_lora
from wan_train.lora.resolve import DENSE, EXPERT_KEY
from wan_train.models import CheckpointError, WanDiT, get_size, save_dit

STRENGTH = 0.7
BLOCK_LINEARS = ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                 "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2"]
# (rank, alpha) where a module differs from rank 4 / alpha 8: both, only alpha, only rank
SPECIAL = {"ffn.0": (2, 1.5), "cross_attn.v": (4, 1.5), "self_attn.o": (2, 8.0), "head.head": (2, 1.5)}


def random_adapter(model, names, *, seed=1) -> dict[str, LoraModule]:
    g = torch.Generator().manual_seed(seed)
    linears = dict(model.named_modules())
    out = {}
    for name in names:
        rank, alpha = SPECIAL.get(name.split(".", 2)[-1] if name.startswith("blocks.") else name, (4, 8.0))
        linear = linears[name]
        A = torch.randn(rank, linear.in_features, generator=g) / linear.in_features ** 0.5
        B = torch.randn(linear.out_features, rank, generator=g) * 0.3 / rank ** 0.5
        out[name] = LoraModule(A=A, B=B, scale=alpha / rank)
    return out


def block_names(model):
    return [f"blocks.{i}.{m}" for i in range(model.config.num_layers) for m in BLOCK_LINEARS]


@pytest.fixture(scope="module")
def adapter(model):
    """Every Linear of both blocks plus three outside them (head, text embedding, time projection)."""
    return random_adapter(model, block_names(model) + ["head.head", "text_embedding.0", "time_projection.1"])


@pytest.fixture(scope="module")
def blocks_adapter(model):
    """The block Linears only: diffusers' ComfyUI / musubi converters handle no .alpha outside the blocks."""
    return random_adapter(model, block_names(model), seed=2)


def run(model, inputs, adapters=()):
    with torch.no_grad(), applied(model, adapters):
        return model(**inputs)


def target(tmp_path, fmt):
    return tmp_path / f"lora{SUFFIX[fmt]}"


def weights_file(path):
    return path / "adapter_model.safetensors" if path.is_dir() else path


def read_file(path):
    with safe_open(str(weights_file(path)), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


# ------------------------------------------------------------------------------------------------ round trip

@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_is_bit_identical(tmp_path, model, inputs, adapter, fmt):
    path = target(tmp_path, fmt)
    write_lora(path, adapter, format=fmt)
    lora = read_lora(path, model=model)
    assert lora.modules.keys() == adapter.keys()
    for name, m in adapter.items():
        back = lora.modules[name]
        assert torch.equal(back.A, m.A) and torch.equal(back.B, m.B) and back.scale == m.scale, name
    original = LoraWeights(source=Path("original"), modules=adapter)
    expected = run(model, inputs, [(original, STRENGTH)])
    assert (expected - run(model, inputs)).abs().max() > 0.05  # the adapter matters
    assert torch.equal(run(model, inputs, [(lora, STRENGTH)]), expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_bf16_factors_keep_alpha_exact(tmp_path, model, inputs, adapter, fmt):
    path = target(tmp_path, fmt)
    write_lora(path, adapter, format=fmt, dtype=torch.bfloat16)
    tensors, _ = read_file(path)
    assert {t.dtype for k, t in tensors.items() if not k.endswith(".alpha")} == {torch.bfloat16}
    assert {t.dtype for k, t in tensors.items() if k.endswith(".alpha")} <= {torch.float32}
    lora = read_lora(path, model=model)
    cast = {n: LoraModule(A=m.A.bfloat16(), B=m.B.bfloat16(), scale=m.scale) for n, m in adapter.items()}
    for name, m in cast.items():
        back = lora.modules[name]
        assert back.A.dtype == torch.bfloat16 and torch.equal(back.A, m.A) and torch.equal(back.B, m.B), name
        assert back.scale == m.scale, name  # 1.5 / 2 stays 0.75 (a bf16 alpha tensor would still be exact here,
        # but not for e.g. alpha 0.7; the writer never puts alpha in the factor dtype)
    expected = run(model, inputs, [(LoraWeights(source=Path("bf16"), modules=cast), STRENGTH)])
    assert torch.equal(run(model, inputs, [(lora, STRENGTH)]), expected)


def test_alpha_is_written_as_a_short_decimal_that_divides_back():
    assert formats._alpha(8 / 4, 4) == 8 and formats._alpha(0.7 / 3, 3) == 0.7
    for scale, rank in [(1 / 3, 7), (2.5, 16), (0.69921875 / 5, 5), (0.3, 12)]:
        assert formats._alpha(scale, rank) / rank == scale
    # no float64 alpha gives alpha / 3 == 0.1 (0.3 / 3 and 0.30000000000000004 / 3 straddle it): one ulp off
    assert abs(formats._alpha(0.1, 3) / 3 - 0.1) <= math.ulp(0.1)


# ------------------------------------------------------------------------------------------------ keys per format

def test_comfyui_keys(tmp_path, adapter):
    path = target(tmp_path, "comfyui")
    write_lora(path, adapter, format="comfyui", dtype=torch.bfloat16)
    tensors, _ = read_file(path)
    assert len(tensors) == 3 * len(adapter)
    assert tensors["diffusion_model.blocks.0.self_attn.q.lora_down.weight"].shape == (4, 256)  # A [r, in]
    assert tensors["diffusion_model.blocks.1.ffn.0.lora_up.weight"].shape == (512, 2)  # B [out, r]
    alpha = tensors["diffusion_model.blocks.1.ffn.0.alpha"]
    assert alpha.dtype == torch.float32 and alpha.shape == () and alpha.item() == 1.5
    assert tensors["diffusion_model.head.head.alpha"].item() == 1.5
    assert "diffusion_model.text_embedding.0.lora_down.weight" in tensors


def test_kohya_keys_and_metadata(tmp_path, model, adapter):
    path = target(tmp_path, "kohya")
    write_lora(path, adapter, format="kohya")
    tensors, meta = read_file(path)
    assert len(tensors) == 3 * len(adapter)
    assert tensors["lora_unet_blocks_0_self_attn_q.alpha"].dtype == torch.float32
    assert tensors["lora_unet_blocks_0_self_attn_q.alpha"].item() == 8.0
    assert tensors["lora_unet_blocks_1_cross_attn_v.lora_down.weight"].shape == (4, 256)
    assert "lora_unet_blocks_0_ffn_2.lora_up.weight" in tensors and "lora_unet_head_head.alpha" in tensors
    assert meta["ss_network_module"] == "networks.lora_wan"
    assert meta["ss_network_dim"] == meta["ss_network_alpha"] == "Dynamic"
    uniform = {n: m for n, m in adapter.items() if m.rank == 4 and m.scale == 2.0}
    write_lora(path, uniform, format="kohya")
    assert {k: v for k, v in read_file(path)[1].items() if k.startswith("ss_")} == {
        "ss_network_module": "networks.lora_wan", "ss_network_dim": "4", "ss_network_alpha": "8.0"}


def test_diffusers_keys_and_metadata(tmp_path, adapter):
    path = target(tmp_path, "diffusers")
    write_lora(path, adapter, format="diffusers")
    tensors, meta = read_file(path)
    assert len(tensors) == 2 * len(adapter)  # no .alpha tensors
    assert tensors["transformer.blocks.0.attn1.to_q.lora_A.weight"].shape == (4, 256)
    assert "transformer.blocks.1.attn2.to_out.0.lora_B.weight" in tensors
    assert "transformer.blocks.0.ffn.net.0.proj.lora_A.weight" in tensors
    assert "transformer.proj_out.lora_B.weight" in tensors
    assert "transformer.condition_embedder.text_embedder.linear_1.lora_A.weight" in tensors
    assert "transformer.condition_embedder.time_proj.lora_A.weight" in tensors
    assert meta["format"] == "pt"
    config = json.loads(meta["lora_adapter_metadata"])
    assert config["transformer.r"] == 4 and config["transformer.lora_alpha"] == 8
    assert config["transformer.rank_pattern"] == {
        f"blocks.{i}.{m}": 2 for i in (0, 1) for m in ("ffn.net.0.proj", "attn1.to_out.0")} | {"proj_out": 2}
    assert config["transformer.alpha_pattern"] == {
        f"blocks.{i}.{m}": 1.5 for i in (0, 1) for m in ("ffn.net.0.proj", "attn2.to_v")} | {"proj_out": 1.5}
    assert "blocks.0.attn1.to_q" in config["transformer.target_modules"]
    assert len(config["transformer.target_modules"]) == len(adapter)


def test_peft_folder_keys_and_config(tmp_path, adapter):
    folder = tmp_path / "adapter"
    written = write_lora(folder, adapter, format="peft")
    assert written == [folder / "adapter_model.safetensors", folder / "adapter_config.json"]
    tensors, _ = read_file(folder)
    assert len(tensors) == 2 * len(adapter)
    assert tensors["base_model.model.blocks.0.self_attn.q.lora_A.weight"].shape == (4, 256)
    assert "base_model.model.blocks.1.ffn.2.lora_B.weight" in tensors
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["rank_pattern"]["blocks.1.ffn.0"] == 2 and config["alpha_pattern"]["blocks.0.cross_attn.v"] == 1.5
    assert "blocks.0.self_attn.q" not in config["rank_pattern"] | config["alpha_pattern"]
    assert config["target_modules"] == sorted(adapter)


# ------------------------------------------------------------------------------------------------ reference loaders

def test_peft_loads_the_peft_folder(tmp_path, model, inputs, adapter):
    from peft import PeftModel

    write_lora(tmp_path / "adapter", adapter, format="peft")
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "adapter").eval()
    with torch.no_grad():
        out = peft_model(**inputs)
    expected = run(model, inputs, [(LoraWeights(source=Path("original"), modules=adapter), 1.0)])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def diffusers_folder(model, tmp_path_factory):
    """Our tiny model's weights as a diffusers WanTransformer3DModel folder (save_dit, diffusers layout)."""
    pytest.importorskip("diffusers")
    folder = tmp_path_factory.mktemp("dit") / "diffusers"
    save_dit(model, folder, layout="diffusers")
    return folder


def diffusers_pipeline(folder):
    """A WanPipeline holding only the transformer: enough for its LoRA loader, which is what users call."""
    import diffusers

    transformer = diffusers.WanTransformer3DModel.from_pretrained(folder).eval()
    return diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=None, transformer=transformer)


def diffusers_forward(ref, inputs):
    context = F.pad(inputs["context"], (0, 0, 0, 512 - inputs["context"].shape[1]))  # as WanPipeline pads
    with torch.no_grad():
        return ref(inputs["x"], inputs["t"], context, return_dict=False)[0]


def test_diffusers_loads_the_diffusers_file(tmp_path, model, inputs, adapter, diffusers_folder):
    path = target(tmp_path, "diffusers")
    write_lora(path, adapter, format="diffusers")
    original = LoraWeights(source=Path("original"), modules=adapter)
    pipe = diffusers_pipeline(diffusers_folder)
    base = diffusers_forward(pipe.transformer, inputs)
    assert rel_err(base, run(model, inputs)) <= 1e-5  # the same model before any LoRA
    pipe.load_lora_weights(str(path), adapter_name="ours")
    expected = run(model, inputs, [(original, 1.0)])
    assert rel_err(expected, base) > 1e-2  # the adapter matters far beyond the tolerance below
    assert rel_err(diffusers_forward(pipe.transformer, inputs), expected) <= 1e-4
    pipe.set_adapters(["ours"], [STRENGTH])
    assert rel_err(diffusers_forward(pipe.transformer, inputs), run(model, inputs, [(original, STRENGTH)])) <= 1e-4

    # the model-level loader reads the alpha metadata only with use_safetensors=True: without it diffusers takes
    # the .bin code path, drops the metadata and uses alpha = r (scale 1) for every module
    transformer = diffusers_pipeline(diffusers_folder).transformer
    transformer.load_lora_adapter(str(path), prefix="transformer", adapter_name="ours", use_safetensors=True)
    assert rel_err(diffusers_forward(transformer, inputs), expected) <= 1e-4


@pytest.mark.parametrize("fmt", ["comfyui", "kohya"])
def test_diffusers_converts_the_comfyui_and_kohya_files(tmp_path, model, inputs, blocks_adapter, diffusers_folder,
                                                         fmt):
    """WanPipeline.load_lora_weights' converters (diffusion_model. keys; musubi's lora_unet_ keys) fold each .alpha
    into the factors; per-module ranks and alphas must survive that."""
    path = target(tmp_path, fmt)
    write_lora(path, blocks_adapter, format=fmt)
    pipe = diffusers_pipeline(diffusers_folder)
    pipe.load_lora_weights(str(path), adapter_name="ours")
    expected = run(model, inputs, [(LoraWeights(source=Path("original"), modules=blocks_adapter), 1.0)])
    assert rel_err(diffusers_forward(pipe.transformer, inputs), expected) <= 1e-4


# ------------------------------------------------------------------------------------------------ what loaders read

IMAGE_LINEARS = ["cross_attn.k_img", "cross_attn.v_img"]


def blocks(model, linears, indices=None):
    return [f"blocks.{i}.{m}" for i in (indices or range(model.config.num_layers)) for m in linears]


SELECTIONS = {  # (I2V model?, our module names): adapters from our presets, partial ones, and imported ones
    "every block Linear": (False, lambda m: block_names(m)),
    "+ head.head": (False, lambda m: block_names(m) + ["head.head"]),
    "+ text_embedding.0": (False, lambda m: block_names(m) + ["text_embedding.0"]),
    "+ time_embedding.2": (False, lambda m: block_names(m) + ["time_embedding.2"]),
    "+ time_projection.1": (False, lambda m: block_names(m) + ["time_projection.1"]),
    "attn_qkvo (no ffn)": (False, lambda m: blocks(m, BLOCK_LINEARS[:8])),
    "self_attn": (False, lambda m: blocks(m, BLOCK_LINEARS[:4])),
    "block 1 only": (False, lambda m: blocks(m, BLOCK_LINEARS, [1])),
    "i2v with k_img, v_img": (True, lambda m: blocks(m, BLOCK_LINEARS + IMAGE_LINEARS)),
    "i2v without them": (True, lambda m: blocks(m, BLOCK_LINEARS)),
    "i2v k_img alone": (True, lambda m: blocks(m, BLOCK_LINEARS + IMAGE_LINEARS[:1])),
    "i2v image pair in block 0 only": (True, lambda m: blocks(m, BLOCK_LINEARS) + blocks(m, IMAGE_LINEARS, [0])),
    "i2v + img_emb.proj.1": (True, lambda m: blocks(m, BLOCK_LINEARS + IMAGE_LINEARS) + ["img_emb.proj.1"]),
}


@pytest.fixture(scope="module")
def i2v_model():
    return WanDiT(get_size("tiny-i2v").dit)


@pytest.mark.parametrize("fmt", ["comfyui", "kohya"])
@pytest.mark.parametrize("selection", SELECTIONS)
def test_unreadable_by_predicts_whether_diffusers_reads_the_file(tmp_path, model, i2v_model, selection, fmt):
    """unreadable_by names diffusers exactly when diffusers refuses what we wrote: WanPipeline.lora_state_dict is the
    key conversion every load_lora_weights call runs (ComfyUI keys: ValueError on the .alpha of a module outside the
    blocks; musubi keys: IndexError outside the blocks, KeyError for a missing block Linear)."""
    pytest.importorskip("diffusers")
    from diffusers import WanPipeline

    i2v, names = SELECTIONS[selection]
    path = target(tmp_path, fmt)
    write_lora(path, random_adapter(i2v_model if i2v else model, names(i2v_model if i2v else model)), format=fmt)
    try:
        WanPipeline.lora_state_dict(str(path))
        refused = None
    except (ValueError, KeyError, IndexError) as error:
        refused = error
    said = unreadable_by(names(i2v_model if i2v else model), format=fmt)
    assert bool(said) == (refused is not None), f"unreadable_by says {said}; diffusers raised {refused!r}"
    assert set(said) <= {DIFFUSERS_LOADER}
    for name in outside_blocks(names(i2v_model if i2v else model)):
        assert name in said[DIFFUSERS_LOADER]  # the warning names the modules diffusers cannot take


def test_peft_and_diffusers_files_are_read_whole(adapter):
    assert outside_blocks(adapter) == ["head.head", "text_embedding.0", "time_projection.1"]
    assert unreadable_by(adapter, format="diffusers") == {} and unreadable_by(adapter, format="peft") == {}
    with pytest.raises(ValueError, match="format='lora'"):
        unreadable_by(adapter, format="lora")


@pytest.fixture()
def registry_root(tmp_path, model, adapter):
    """Two registry versions as an import of another trainer's file leaves them: acme/distill (every block Linear
    plus head.head, text_embedding.0 and time_projection.1), acme/head (head.head alone)."""
    root = tmp_path / "adapters"
    for name, modules in (("distill", adapter), ("head", {"head.head": adapter["head.head"]})):
        stage = tmp_path / f"stage-{name}"
        write_lora(stage, modules, format="peft", metadata={EXPERT_KEY: DENSE})
        Registry(root).publish("acme", name, stage, {
            "kind": "style", "trigger_words": [], "experts": [DENSE], "weights": {DENSE: "adapter_model.safetensors"},
            "base": {"name": "tiny", "checkpoint": None, "identity": {DENSE: None}}, "steps": {}, "scores": {}})
    return root


@pytest.mark.parametrize("fmt", ["comfyui", "kohya"])
def test_export_warns_when_diffusers_cannot_load_it_and_blocks_only_gives_a_file_it_loads(
        tmp_path, model, inputs, adapter, registry_root, diffusers_folder, capsys, fmt):
    root = str(registry_root)
    assert main(["--root", root, "export", "acme/distill", "--format", fmt, "--out", str(tmp_path / "all")]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert f"{DIFFUSERS_LOADER} cannot load it" in printed and "--blocks-only drops" in printed
    assert all(m in printed for m in ("head.head", "text_embedding.0", "time_projection.1"))
    entry = json.loads((tmp_path / "all" / "export.json").read_text())["files"][0]
    assert entry["dropped_modules"] == [] and "head.head" in entry["unreadable_by"][DIFFUSERS_LOADER]
    whole = tmp_path / "all" / entry["file"]
    with pytest.raises((ValueError, IndexError)):  # the warning is true
        diffusers_pipeline(diffusers_folder).load_lora_weights(str(whole), adapter_name="ours")
    assert read_lora(whole, model=model).modules.keys() == adapter.keys()  # ComfyUI / musubi-tuner read it all

    assert main(["--root", root, "export", "acme/distill", "--format", fmt, "--out", str(tmp_path / "blocks"),
                 "--blocks-only"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "dropping 3 module(s) outside the transformer blocks" in printed and "cannot load" not in printed
    entry = json.loads((tmp_path / "blocks" / "export.json").read_text())["files"][0]
    assert entry["dropped_modules"] == ["head.head", "text_embedding.0", "time_projection.1"]
    assert entry["unreadable_by"] == {}
    pipe = diffusers_pipeline(diffusers_folder)
    pipe.load_lora_weights(str(tmp_path / "blocks" / entry["file"]), adapter_name="ours")
    pipe.set_adapters(["ours"], [STRENGTH])
    kept = LoraWeights(source=Path("blocks"), modules={m: v for m, v in adapter.items() if m.startswith("blocks.")})
    expected = run(model, inputs, [(kept, STRENGTH)])
    assert rel_err(expected, run(model, inputs, [(LoraWeights(source=Path("all"), modules=adapter), STRENGTH)])) > 1e-3
    assert rel_err(diffusers_forward(pipe.transformer, inputs), expected) <= 1e-4

    # nothing inside the blocks: refused, and no file written
    assert main(["--root", root, "export", "acme/head", "--format", fmt, "--out", str(tmp_path / "none"),
                 "--blocks-only"]) == 1
    assert "adapts no Linear inside the transformer blocks" in " ".join(capsys.readouterr().out.split())
    assert not (tmp_path / "none").exists()


# ------------------------------------------------------------------------------------------------ files, metadata

@pytest.mark.parametrize("fmt", FORMATS)
def test_metadata_passes_and_no_temp_files_remain(tmp_path, adapter, fmt):
    path = target(tmp_path, fmt)
    extra = {"wan_train.base_hash": "sha256:abc", "wan_train.step": "1200"}
    for _ in range(2):  # the second write replaces the first
        written = write_lora(path, adapter, format=fmt, metadata=extra)
    _, meta = read_file(path)
    assert meta["wan_train.base_hash"] == "sha256:abc" and meta["wan_train.step"] == "1200"
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert files == sorted(written)
    assert written == ([path / "adapter_model.safetensors", path / "adapter_config.json"] if fmt == "peft" else [path])


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch, adapter):
    path = target(tmp_path, "comfyui")
    write_lora(path, adapter, format="comfyui")
    before = path.read_bytes()

    def broken_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(formats, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_lora(path, adapter, format="comfyui")
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


# ------------------------------------------------------------------------------------------------ bad input

def module(A_shape=(4, 256), B_shape=(256, 4), scale=2.0):
    return LoraModule(A=torch.zeros(A_shape), B=torch.zeros(B_shape), scale=scale)


@pytest.mark.parametrize("kwargs, modules, message", [
    (dict(format="lora"), {"blocks.0.self_attn.q": module()}, r"format='lora'; expected one of \('peft'"),
    (dict(format="kohya"), {}, "no modules"),
    (dict(format="kohya"), {"blocks.0.ffn.2": module(A_shape=(4, 2, 256))}, r"module blocks\.0\.ffn\.2: .*2-D"),
    (dict(format="peft"), {"blocks.1.self_attn.k": module(B_shape=(256, 3))},
     r"module blocks\.1\.self_attn\.k: rank mismatch.*r=4 rows.*3 columns"),
    (dict(format="comfyui"), {"blocks.0.self_attn.q": module(scale=0.0)}, r"blocks\.0\.self_attn\.q: scale=0\.0"),
    (dict(format="kohya"), {"blocks.0.self_attn.q": module(), "blocks_0.self_attn_q": module()},
     r"blocks\.0\.self_attn\.q and blocks_0\.self_attn_q both become lora_unet_blocks_0_self_attn_q"),
    (dict(format="diffusers", metadata={"step": 3}), {"blocks.0.self_attn.q": module()}, "must be strings"),
    (dict(format="diffusers", metadata={"lora_adapter_metadata": "{}"}), {"blocks.0.self_attn.q": module()},
     r"\['lora_adapter_metadata'\] are written by the format"),
    (dict(format="comfyui", dtype=torch.int8), {"blocks.0.self_attn.q": module()}, "not a floating dtype"),
])
def test_bad_input_is_refused(tmp_path, kwargs, modules, message):
    with pytest.raises(ValueError, match=message):
        write_lora(tmp_path / ("out" if kwargs["format"] == "peft" else "out.safetensors"), modules, **kwargs)
    assert not list(tmp_path.iterdir())


def test_bad_paths(tmp_path, model):
    modules = {"blocks.0.self_attn.q": module()}
    with pytest.raises(ValueError, match=r"lora\.pt: format='kohya' writes a \.safetensors file"):
        write_lora(tmp_path / "lora.pt", modules, format="kohya")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file; format='peft' writes a folder"):
        write_lora(tmp_path / "file", modules, format="peft")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty: a folder without adapter_model\.safetensors"):
        read_lora(tmp_path / "empty", model=model)
