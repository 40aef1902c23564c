"""Adapters by name: generate.py applies registry versions (a Wan2.2 pair to its two experts), blends them, fuses
them into the weights with the same result, and refuses one recorded for another base; `python -m wan_train.lora`
lists, shows, exports in every format (export -> import gives identical outputs), merges into a checkpoint,
promotes behind score gates, and names the file when a version is corrupt."""

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import publish_random_adapter as publish
from tests.helpers import random_lora_modules, randomize_, write_official_folder
from wan_train.inference import Adapter, Sampling, generate, load
from wan_train.inference.cli import parse_adapters
from wan_train.lora import (
    FORMATS, BaseMismatchError, Registry, applied, base_identity, load_lora,
)
from wan_train.lora.cli import main
from wan_train.models import WanDiT, get_size, load_dit, save_dit

SMALL = Sampling(steps=3, width=32, height=32, num_frames=5, guidance_scale=4.0)


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan")
    write_official_folder(root, "tiny")
    return root


@pytest.fixture(scope="module")
def t2v(wan):
    return load(wan).models


@pytest.fixture()
def registry(t2v, tmp_path):
    root = tmp_path / "adapters"
    publish(root, "acme", "style", {"dit": t2v.dits[None]}, seed=1, tmp=tmp_path)
    publish(root, "acme", "mascot", {"dit": t2v.dits[None]}, seed=2, tmp=tmp_path)
    return root


def test_generate_applies_registry_versions_by_name_blends_and_fuses(t2v, registry):
    base = generate(t2v, "x", settings=SMALL, decode=False)
    style = parse_adapters("acme/style:0.8", root=str(registry))
    assert len(style) == 1 and style[0].strength == 0.8 and style[0].base == base_identity(t2v.dits[None])
    styled = generate(t2v, "x", settings=SMALL, decode=False, adapters=style)
    both = parse_adapters(["acme/style:0.8", "acme/mascot/v0001:0.5"], root=str(registry))
    blended = generate(t2v, "x", settings=SMALL, decode=False, adapters=both)
    fused = generate(t2v, "x", settings=SMALL, decode=False, adapters=both, fuse_lora=True)
    assert (styled - base).abs().max() > 1e-3 and (blended - styled).abs().max() > 1e-3
    torch.testing.assert_close(fused, blended, rtol=0, atol=1e-4)  # merged weights = per-token terms
    assert torch.equal(generate(t2v, "x", settings=SMALL, decode=False), base)  # weights restored exactly


def test_an_adapter_recorded_for_another_base_is_refused_unless_allowed(t2v, registry, tmp_path):
    other = randomize_(WanDiT(get_size("tiny").dit), seed=99)
    publish(registry, "acme", "foreign", {"dit": other}, seed=3, tmp=tmp_path)
    adapters = parse_adapters("acme/foreign", root=str(registry))
    with pytest.raises(BaseMismatchError, match="trained on another base model.*allow_base_mismatch=true"):
        generate(t2v, "x", settings=SMALL, decode=False, adapters=adapters)
    generate(t2v, "x", settings=SMALL, decode=False, adapters=adapters, allow_base_mismatch=True)


def test_a_wan22_pair_applies_each_file_to_its_expert(wan, tmp_path):
    root = tmp_path / "moe"
    shutil.copytree(wan, root)
    for i, expert in enumerate(("high_noise", "low_noise")):
        save_dit(randomize_(WanDiT(get_size("tiny-moe").dit), seed=10 + i), root / f"{expert}_model")
    (root / "config.json").unlink()
    (root / "diffusion_pytorch_model.safetensors").unlink()
    models = load(root, boundary=0.875).models
    version = publish(tmp_path / "adapters", "acme", "pair", dict(models.dits), seed=5, size="tiny-moe",
                      tmp=tmp_path)
    adapters = parse_adapters(version.ref, root=str(tmp_path / "adapters"))
    assert [(a.expert, a.path.split("/")[-2]) for a in adapters] == [("high_noise", "high_noise"),
                                                                    ("low_noise", "low_noise")]
    base = generate(models, "x", settings=SMALL, decode=False)
    paired = generate(models, "x", settings=SMALL, decode=False, adapters=adapters)
    assert (paired - base).abs().max() > 1e-3
    swapped = [Adapter(a.path, a.strength, "low_noise" if a.expert == "high_noise" else "high_noise", a.base)
               for a in adapters]  # each expert has its own base: the other's adapter is refused
    with pytest.raises(BaseMismatchError):
        generate(models, "x", settings=SMALL, decode=False, adapters=swapped)


def test_cli_list_show_verify(registry, capsys):
    assert main(["--root", str(registry), "list"]) == 0
    out = capsys.readouterr().out
    assert "acme/style/v0001" in out and "acme/mascot/v0001" in out
    assert main(["--root", str(registry), "show", "acme/style"]) == 0
    assert '"trigger_words"' in capsys.readouterr().out
    assert main(["--root", str(registry), "verify", "acme/style"]) == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_export_then_import_gives_identical_outputs(t2v, wan, registry, tmp_path, fmt, capsys):
    dit = t2v.dits[None]
    assert main(["--root", str(registry), "export", "acme/style", "--format", fmt, "--out", str(tmp_path / "x")]) == 0
    export = json.loads((tmp_path / "x" / "export.json").read_text())
    assert export["format"] == fmt and export["files"][0]["expert"] == "dit" and export["files"][0]["slot"]
    exported = tmp_path / "x" / export["files"][0]["file"]
    assert main(["--root", str(registry), "import", str(exported), "--client", "acme", "--name", f"back-{fmt}",
                 "--size", "tiny", "--base", str(wan)]) == 0
    original, back = Registry(registry).get("acme/style"), Registry(registry).get(f"acme/back-{fmt}")
    assert back.manifest["base"]["identity"] == original.manifest["base"]["identity"]
    x, t, context = torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 5, dit.config.text_dim)
    outputs = []
    for version in (original, back):
        with torch.no_grad(), applied(dit, [(version.file("adapter_model.safetensors"), 0.7)]):
            outputs.append(dit(x, t, context))
    assert torch.equal(outputs[0], outputs[1])


def test_a_diffsynth_studio_file_applies_by_path_imports_and_merges(t2v, wan, registry, tmp_path):
    """DiffSynth-Studio's Wan LoRA files (peft's adapter name in the keys, lora_alpha = rank, no alpha stored):
    generate.py's lora=FILE applies them, `import` registers them and `merge` folds them in, all with one result."""
    dit = t2v.dits[None]
    modules = random_lora_modules(dit, seed=11, rank=4, alpha=4.0, std=0.2)
    path = tmp_path / "epoch-4.safetensors"
    save_file({f"{m}.lora_{r}.default.weight": getattr(mod, r) for m, mod in modules.items() for r in "AB"}, path)
    base = generate(t2v, "x", settings=SMALL, decode=False)
    by_path = generate(t2v, "x", settings=SMALL, decode=False, adapters=parse_adapters(f"{path}:0.8"))
    assert (by_path - base).abs().max() > 1e-3
    assert main(["--root", str(registry), "import", str(path), "--client", "acme", "--name", "ds", "--size", "tiny",
                 "--base", str(wan)]) == 0
    by_ref = generate(t2v, "x", settings=SMALL, decode=False,
                      adapters=parse_adapters("acme/ds:0.8", root=str(registry)))
    assert torch.equal(by_ref, by_path)
    assert main(["--root", str(registry), "merge", "acme/ds:0.8", "--base", str(wan), "--out", str(tmp_path / "m"),
                 "--dtype", "fp32"]) == 0
    x, t, context = torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 5, dit.config.text_dim)
    with torch.no_grad(), applied(dit, [(path, 0.8)]):
        expected = dit(x, t, context)
    with torch.no_grad():
        torch.testing.assert_close(load_dit(tmp_path / "m")(x, t, context), expected, rtol=0, atol=1e-5)


def test_cli_export_of_a_pair_writes_two_files_with_their_slots(wan, tmp_path):
    dits = {e: randomize_(WanDiT(get_size("tiny-moe").dit), seed=i) for i, e in enumerate(("high_noise", "low_noise"))}
    publish(tmp_path / "adapters", "acme", "pair", dits, seed=7, size="tiny-moe", tmp=tmp_path)
    assert main(["--root", str(tmp_path / "adapters"), "export", "acme/pair", "--format", "comfyui", "--out",
                 str(tmp_path / "out"), "--dtype", "bf16"]) == 0
    export = json.loads((tmp_path / "out" / "export.json").read_text())
    assert [f["file"] for f in export["files"]] == ["acme_pair_v0001_high_noise.safetensors",
                                                    "acme_pair_v0001_low_noise.safetensors"]
    assert "high-noise" in export["files"][0]["slot"] and "low-noise" in export["files"][1]["slot"]
    for f in export["files"]:
        lora = load_lora(tmp_path / "out" / f["file"], model=dits[f["expert"]])
        assert {m.A.dtype for m in lora.modules.values()} == {torch.bfloat16}


def test_cli_merge_writes_the_blended_checkpoint(t2v, wan, registry, tmp_path):
    assert main(["--root", str(registry), "merge", "acme/style:0.8", "acme/mascot:0.5", "--base", str(wan),
                 "--out", str(tmp_path / "merged"), "--dtype", "fp32"]) == 0
    merged = load_dit(tmp_path / "merged")
    dit = t2v.dits[None]
    x, t, context = torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 5, dit.config.text_dim)
    versions = [Registry(registry).get(r) for r in ("acme/style", "acme/mascot")]
    with torch.no_grad(), applied(dit, [(versions[0].file("adapter_model.safetensors"), 0.8),
                                        (versions[1].file("adapter_model.safetensors"), 0.5)]):
        expected = dit(x, t, context)
    with torch.no_grad():
        torch.testing.assert_close(merged(x, t, context), expected, rtol=0, atol=1e-5)
    other = tmp_path / "other.safetensors"
    save_dit(randomize_(WanDiT(get_size("tiny").dit), seed=42), tmp_path / "other")
    assert main(["--root", str(registry), "merge", "acme/style", "--base", str(tmp_path / "other"),
                 "--out", str(other.with_suffix(""))]) == 1  # another base: refused


def test_cli_promote_gates_on_scores(registry, capsys):
    assert main(["--root", str(registry), "promote", "acme/style", "--require", "clip_score=0.3"]) == 1
    assert "clip_score" in capsys.readouterr().out
    Registry(registry).record_scores("acme/style/v0001", {"clip_score": 0.31})
    assert main(["--root", str(registry), "promote", "acme/style", "--require", "clip_score=0.3"]) == 0
    assert Registry(registry).promoted("acme", "style").version == "v0001"


def test_a_corrupt_or_edited_version_is_refused_naming_the_file(t2v, registry, capsys):
    version = Registry(registry).get("acme/style")
    path = version.file("adapter_model.safetensors")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    assert main(["--root", str(registry), "export", "acme/style", "--format", "comfyui", "--out",
                 str(registry.parent / "x")]) == 1
    assert "adapter_model.safetensors" in capsys.readouterr().out
    with pytest.raises(Exception, match="adapter_model.safetensors"):
        parse_adapters("acme/style", root=str(registry))
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(Exception, match="cannot read as safetensors"):
        load_lora(path, model=t2v.dits[None])


def test_generate_py_reads_lora_as_a_value_not_as_a_config_group():
    """conf/lora/ is a train.py group; generate.py's own search path keeps `lora=acme/mascot` a plain value."""
    from wan_train.config import compose_generate_config

    cfg = compose_generate_config(["ckpt=x", "lora=acme/mascot:0.8"])
    assert cfg.lora == "acme/mascot:0.8" and cfg.lora_root == "adapters" and cfg.fuse_lora is False
    assert compose_generate_config(["ckpt=x", "lora=[acme/style:0.8,acme/mascot]"]).lora == ["acme/style:0.8",
                                                                                            "acme/mascot"]
