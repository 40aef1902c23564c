"""conf/ + recipes/ compose into the typed schema; every recipe instantiates; bad values fail at start naming
the key, the value and what is allowed."""

import json
import re

import pytest
import torch

from tests.helpers import write_official_folder
from wan_train.config import ConfigError, compose_config, recipes, validate
from wan_train.models import get_size
from wan_train.training.encoders import build_encoders
from wan_train.training.module import FlowMatchingModule, Inputs
from wan_train.training.run import build_dit

EXPECTED = {"quickstart", "lora_character", "lora_style", "full_high_noise", "full_low_noise", "full_1_3b", "av",
            "av_lora", "av_demo", "quickstart_base", "quickstart_1k"}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("Wan-tiny")
    write_official_folder(root)
    return root


def test_the_recipes_the_docs_promise_exist():
    assert EXPECTED <= set(recipes())


def test_recipes_set_what_they_say():
    high = compose_config(["recipe=full_high_noise", "data.shards=[x]"])
    assert high.model.size == "wan2.2-t2v-a14b" and high.expert.name == "high_noise" and high.data.kind == "latents"
    low = compose_config(["recipe=full_low_noise", "data.shards=[x]"])
    assert low.expert.name == "low_noise"
    assert compose_config(["recipe=lora_character", "data.shards=[x]"]).lora.rank == 32
    quick = compose_config(["recipe=quickstart"])
    assert quick.model.size == "quickstart" and quick.model.encoders == "builtin" and quick.recipe == "quickstart"
    assert quick.data.shards == ["data/demo_large_96p"] and quick.validation.guidance_interval == [0.0, 0.8]
    demos_base = compose_config(["recipe=quickstart_1k"])  # the LoRA, R2V and multi-shot demos' base: 144p data
    assert demos_base.data.shards == ["data/demo"] and demos_base.run_dir == "runs/quickstart_1k"
    base = compose_config(["recipe=quickstart_base"])
    assert base.data.shards == ["data/demo_large_96p"] and base.data.resolutions == ["96p"]
    assert (base.validation.width, base.validation.height, base.validation.num_frames) == (176, 96, 17)
    # the command line wins over the recipe
    assert compose_config(["recipe=quickstart", "trainer.max_steps=7"]).trainer.max_steps == 7


def test_the_demo_folders_are_made_on_first_use_with_their_options(tmp_path, monkeypatch):
    """data=demo_large: clips of the larger shapes (make_demo's shape_scale) at their own size and length, made where
    the config says."""
    from omegaconf import OmegaConf

    from train import ensure_demo_data
    from wan_train.data.probe import probe_video

    monkeypatch.chdir(tmp_path)
    ensure_demo_data(OmegaConf.create({"data": {"shards": ["data/demo_large_96p_val"], "val_shards": [],
                                                 "val_sets": {}}}))
    import webdataset as wds

    samples = list(wds.WebDataset(str(tmp_path / "data/demo_large_96p_val/shard-000000.tar"), shardshuffle=False))
    assert len(samples) == 8
    probe = probe_video(samples[0]["mp4"])
    assert (probe.num_frames, probe.width, probe.height) == (25, 176, 96)
    shape = json.loads(samples[0]["json"])["caption"].split()[1:4]  # "a large red circle ..."
    assert shape[0] in ("small", "large")


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_every_recipe_composes_and_instantiates_with_the_tiny_model(recipe, tiny_folder, tmp_path):
    (tmp_path / "shard-000000.tar").write_bytes(b"")
    cfg = compose_config([f"recipe={recipe}", "model=tiny", f"model.checkpoint={tiny_folder}", "expert=none",
                          "lora=none", "trainer=cpu", "strategy=auto", f"data.shards=[{tmp_path}]",
                          f"run_dir={tmp_path / 'run'}"])
    validate(cfg)
    dit = build_dit(cfg)
    module = FlowMatchingModule(cfg, dit=dit, encoders=build_encoders(cfg, text_dim=dit.config.text_dim),
                                boundary=None, held_out=[])
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == sum(p.numel() for p in dit.parameters())
    latents = torch.randn(1, 16, 2, 4, 4)
    loss = module.loss(Inputs(latents, torch.randn(1, 5, 4096)), torch.tensor([0.5]), torch.randn_like(latents))
    assert loss.shape == (1,) and torch.isfinite(loss).all()


@pytest.mark.parametrize("override, message", [
    ("model.size=wan9", "model.size='wan9': expected one of"),
    ("expert=high_noise", "model.size='quickstart' has no experts"),
    ("flow.sampler.kind=beta", "flow.sampler.kind='beta': expected one of"),
    ("optim.schedule=linear", "optim.schedule='linear': expected one of"),
    ("data.resolutions=[360p]", "data.buckets.resolutions"),
    ("data.spatial_stride=8", "data.spatial_stride=8: bucket sides must be multiples of"),
    ("model.checkpoint=/nowhere", "model.checkpoint='/nowhere': no such file or folder"),
    ("trainer.max_steps=0", "trainer.max_steps=0: must be >= 1"),
    ("validation.metrics=[{model: x}]", "validation.metrics[0]={'model': 'x'}: expected {_target_: CLASS"),
])
def test_bad_values_fail_at_start_naming_key_value_and_allowed(override, message):
    cfg = compose_config(["recipe=quickstart", override])
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(cfg)


def test_a_moe_model_needs_an_expert(tmp_path):
    cfg = compose_config(["recipe=full_low_noise", "expert=none", "data.shards=[x]", f"model.checkpoint={tmp_path}"])
    with pytest.raises(ConfigError, match="expert.name=None: expected one of"):
        validate(cfg)
    assert get_size("wan2.2-t2v-a14b").boundary == 0.875


@pytest.mark.parametrize("expert, low, high", [("high_noise", 0.875, 1.0), ("low_noise", 0.0, 0.875)])
def test_expert_ranges_come_from_the_model_boundary(expert, low, high, tmp_path):
    (tmp_path / "x.tar").write_bytes(b"")
    cfg = compose_config([f"expert={expert}", "model=tiny", "model.size=tiny-moe", f"model.checkpoint={tmp_path}",
                          "data=latents", f"data.shards=[{tmp_path / 'x.tar'}]"])
    validate(cfg)
    module = FlowMatchingModule(cfg, dit=build_dit(compose_config(["model=tiny"])), encoders=None,
                                boundary=get_size("tiny-moe").boundary, held_out=[])
    assert (module.range.low, module.range.high) == (low, high)
    sigma = module.sampler.sample(4096, generator=torch.Generator().manual_seed(0), low=low, high=high)
    assert module.range.contains(sigma).all()
    both = compose_config(["expert=both", "model=tiny", "model.size=tiny-moe", f"model.checkpoint={tmp_path}",
                           "data=latents", f"data.shards=[{tmp_path / 'x.tar'}]", "expert.high_noise_lr=3e-5"])
    validate(both)
    assert both.expert.alternate_every == 100 and both.expert.high_noise_lr == 3e-5


@pytest.mark.parametrize("prompt", [
    "A knight at dawn. Shot 1: wide establishing — he rides. Shot 2 (2s): close-up — he lifts his visor.",
    "it's \"quoted\", [a, b], key=value, a\\b, ${not_an_interpolation} ends in \\",
    "plain words",
])
def test_free_text_on_the_command_line_reaches_the_config_unchanged(prompt):
    from wan_train.config.compose import compose_generate_config, quote_text_overrides

    args = quote_text_overrides([f"prompt={prompt}", f"negative_prompt={prompt}", "ckpt=x", "steps=3"])
    cfg = compose_generate_config(args)
    assert cfg.prompt == cfg.negative_prompt == prompt and cfg.steps == 3
    assert quote_text_overrides(["prompt='already: quoted'"]) == ["prompt='already: quoted'"]
