"""The shared denoising loop on tiny models in the real file formats: determinism, tasks, guidance, the MoE
expert switch, and loading official folders / MoE folders for inference."""

import shutil

import pytest
import torch

from tests.helpers import randomize_, write_official_folder
from wan_train.inference import Adapter, Sampling, WanModels, generate, load
from wan_train.inference.pipeline import Conditioning, first_frame_timesteps, guided_velocity
from wan_train.models import WanDiT, get_size, save_dit

SMALL = Sampling(steps=4, width=32, height=32, num_frames=5, guidance_scale=4.0)


@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2v")
    write_official_folder(root, "tiny")
    return load(root).models


def test_a_seed_decides_the_video_and_a_batch_equals_its_single_prompt_runs(t2v):
    prompts = ["A red fox jumps over the lazy dog.", "Rain over a neon city at night."]
    both = generate(t2v, prompts, settings=SMALL, seed=7)
    assert both.shape == (2, 3, 5, 32, 32) and both.dtype == torch.float32
    assert both.abs().max() <= 1.0
    again = generate(t2v, prompts, settings=SMALL, seed=7)
    assert torch.equal(both, again)
    second = generate(t2v, prompts[1], settings=SMALL, seed=8)  # prompt 1 of the batch got seed 7 + 1
    torch.testing.assert_close(second[0], both[1], atol=1e-5, rtol=0)
    other = generate(t2v, prompts[1], settings=SMALL, seed=9)
    assert (other - second).abs().max() > 1e-3


def test_sizes_the_strides_do_not_allow_and_tasks_the_model_cannot_do_are_refused(t2v):
    with pytest.raises(ValueError, match=r"width=40 is not a multiple of 16.*use 32 or 48"):
        generate(t2v, "x", settings=SMALL.replace(width=40))
    with pytest.raises(ValueError, match=r"num_frames=6 is not 1 \+ 4k; use 5 or 9"):
        generate(t2v, "x", settings=SMALL.replace(num_frames=6))
    with pytest.raises(ValueError, match=r"task='i2v': this t2v model can do t2v"):
        generate(t2v, "x", settings=SMALL, task="i2v", images=torch.zeros(1, 3, 32, 32))


def test_guidance_is_one_batch_of_both_branches_and_scale_one_skips_the_negative():
    dit = randomize_(WanDiT(get_size("tiny").dit)).eval()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 16, 2, 4, 4, generator=g), torch.tensor([700.0, 700.0])
    context, negative = torch.randn(2, 5, 4096, generator=g), torch.randn(1, 5, 4096, generator=g)
    with torch.no_grad():
        v_c = dit(x, t, context)
        v_u = dit(x, t, negative.expand(2, -1, -1))
        guided = guided_velocity(dit, x, t, context, negative, Conditioning(), 4.5)
        plain = guided_velocity(dit, x, t, context, negative, Conditioning(), 1.0)
    torch.testing.assert_close(guided, v_u + 4.5 * (v_c - v_u), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain, v_c, atol=0, rtol=0)


def test_guidance_interval_guides_only_the_steps_whose_sigma_lies_in_it(t2v):
    from wan_train.inference.schedules import sampling_sigmas
    from wan_train.inference.solvers import get_solver

    dit = t2v.dits[None]
    batches = []
    hook = dit.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    try:
        settings = SMALL.replace(steps=8, guidance_interval=(0.2, 0.7))
        inside = generate(t2v, "x", settings=settings, seed=3, decode=False)
        sigma_max = get_solver(settings.solver).sigma_max
        sigmas = sampling_sigmas(8, shift=settings.shift, sigma_max=sigma_max)[:8].tolist()
        assert batches == [2 if 0.2 <= s <= 0.7 else 1 for s in sigmas]  # CFG: one batch of both branches
        assert 1 in batches and 2 in batches
        batches.clear()
        everywhere = generate(t2v, "x", settings=SMALL.replace(steps=8, guidance_interval=(0.0, 1.0)), seed=3,
                              decode=False)
        assert batches == [2] * 8
    finally:
        hook.remove()
    torch.testing.assert_close(everywhere, generate(t2v, "x", settings=SMALL.replace(steps=8), seed=3, decode=False),
                               atol=0, rtol=0)
    assert (inside - everywhere).abs().max() > 1e-4


@pytest.mark.parametrize("interval", [(0.7, 0.2), (0.0, 1.5), (-0.1, 0.5), (0.5,), (True, 1.0), 0.8])
def test_a_guidance_interval_must_be_low_below_high_within_0_and_1(interval):
    with pytest.raises(ValueError, match=r"guidance_interval=.* must be \[low, high\] with 0 <= low < high <= 1"):
        Sampling(guidance_interval=interval)


def test_overrides_take_a_guidance_interval_as_a_list():
    from wan_train.inference import with_overrides

    assert with_overrides(SMALL, {"guidance_interval": [0, 0.8]}).guidance_interval == (0, 0.8)
    assert with_overrides(SMALL.replace(guidance_interval=(0.1, 0.9)), {"guidance_interval": None}
                          ).guidance_interval == (0.1, 0.9)


def write_moe_folder(root):
    """An official Wan2.2 A14B folder: high_noise_model/ + low_noise_model/ and the shared encoders."""
    write_official_folder(root, "tiny")
    for i, expert in enumerate(("high_noise", "low_noise")):
        save_dit(randomize_(WanDiT(get_size("tiny-moe").dit), seed=10 + i), root / f"{expert}_model")
    (root / "config.json").unlink()
    (root / "diffusion_pytorch_model.safetensors").unlink()


@pytest.fixture(scope="module")
def moe_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    write_moe_folder(root)
    return root


@pytest.mark.parametrize("shift, boundary, high, low", [(12.0, 0.875, 26, 14), (5.0, 0.9, 15, 25)])
def test_moe_runs_the_high_noise_expert_at_or_above_the_boundary(moe_folder, shift, boundary, high, low):
    models = load(moe_folder, boundary=boundary).models
    assert models.is_moe and models.size == "tiny-moe"
    calls = {"high_noise": 0, "low_noise": 0}
    for name, dit in models.dits.items():
        dit.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    experts, scales = [], []
    settings = SMALL.replace(steps=40, shift=shift, guidance_scale=4.0, guidance_scale_2=3.0, width=16, height=16,
                             num_frames=1)
    generate(models, "x", settings=settings, decode=False,
             on_step=lambda done, total, expert: experts.append(expert))
    assert experts == ["high_noise"] * high + ["low_noise"] * low
    assert calls == {"high_noise": high, "low_noise": low}  # one batched CFG forward per step
    scales = [settings.guidance_for(e) for e in experts]
    assert scales[0] == 4.0 and scales[-1] == 3.0


def test_the_official_moe_boundary_comes_from_the_named_size(moe_folder):
    assert load(moe_folder).models.boundary == 0.875  # tiny-moe, like Wan2.2 T2V-A14B


def test_i2v_conditions_on_the_mask_the_image_latent_and_clip_tokens(tmp_path):
    write_official_folder(tmp_path, "tiny-i2v")
    models = load(tmp_path).models
    assert models.clip is not None and models.tasks == ("i2v",)
    seen = {}
    dit = models.dits[None]
    dit.register_forward_pre_hook(lambda m, args, kwargs: seen.update(kwargs), with_kwargs=True)
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    video = generate(models, "a cat", settings=SMALL, task="i2v", images=image)
    assert video.shape == (1, 3, 5, 32, 32)
    y, clip_fea = seen["y"], seen["clip_fea"]
    assert y.shape == (2, 4 + 16, 2, 4, 4)  # CFG batch of 2; mask (4) + image latent (16)
    assert torch.equal(y[0, :4, 0], torch.ones(4, 4, 4)) and torch.equal(y[0, :4, 1], torch.zeros(4, 4, 4))
    assert clip_fea.shape[0] == 2 and clip_fea.shape[2] == 1280
    with pytest.raises(ValueError, match="needs an image"):
        generate(models, "a cat", settings=SMALL, task="i2v")


def test_ti2v_pastes_the_image_latent_and_gives_its_tokens_timestep_zero(tmp_path):
    write_official_folder(tmp_path, "tiny-ti2v")
    models = load(tmp_path).models
    assert models.tasks == ("t2v", "i2v", "ti2v")
    timesteps = []
    models.dits[None].register_forward_pre_hook(lambda m, args: timesteps.append(args[1]))
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    settings = SMALL.replace(width=64, height=64)
    latents = generate(models, "a cat", settings=settings, task="i2v", images=image, decode=False)
    first = models.vae.encode(image[:, :, None]).float()
    torch.testing.assert_close(latents[:, :, :1], first, atol=0, rtol=0)
    t = timesteps[0]
    per_frame = (64 // 16 // 2) ** 2
    assert t.shape == (2, 2 * per_frame) and torch.all(t[:, :per_frame] == 0) and torch.all(t[:, per_frame:] > 900)
    t2v = generate(models, "a cat", settings=settings, decode=False)  # the same model in text-to-video mode
    assert not torch.equal(t2v[:, :, :1], first)


def test_first_frame_timesteps():
    t = first_frame_timesteps(torch.tensor([500.0]), (48, 3, 4, 6), (1, 2, 2))
    assert t.shape == (1, 18) and torch.all(t[0, :6] == 0) and torch.all(t[0, 6:] == 500)


def test_two_experts_or_one_dit_only():
    dit = WanDiT(get_size("tiny").dit)
    with pytest.raises(ValueError, match="expected one DiT"):
        WanModels({"high_noise": dit}, vae=None, text_encoder=None)
    with pytest.raises(ValueError, match="boundary"):
        WanModels({"high_noise": dit, "low_noise": dit}, vae=None, text_encoder=None)


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load(tmp_path / "nothing")
    shutil.rmtree(tmp_path)


def test_a_lora_file_applies_to_one_request_only(t2v, tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(3)
    q = t2v.dits[None].blocks[0].self_attn.q
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.randn(4, q.in_features, generator=g),
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.randn(q.out_features, 4, generator=g),
               "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(4.0)}, tmp_path / "style.safetensors")
    base = generate(t2v, "x", settings=SMALL, decode=False)
    styled = generate(t2v, "x", settings=SMALL, decode=False, adapters=[Adapter(str(tmp_path / "style.safetensors"))])
    off = generate(t2v, "x", settings=SMALL, decode=False,
                   adapters=[Adapter(str(tmp_path / "style.safetensors"), strength=0.0)])
    assert (styled - base).abs().max() > 1e-3
    assert torch.equal(off, base)
    assert torch.equal(generate(t2v, "x", settings=SMALL, decode=False), base)  # nothing left applied


def test_lora_arguments_parse_path_and_strength(tmp_path):
    from wan_train.inference.cli import parse_adapters

    from safetensors.torch import save_file

    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(2, 8),
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(8, 2)}, tmp_path / "a.safetensors")
    path = str(tmp_path / "a.safetensors")
    assert parse_adapters(None) == []
    assert parse_adapters(path) == [Adapter(path)]
    assert parse_adapters([f"{path}:0.6", path]) == [Adapter(path, 0.6), Adapter(path)]
    with pytest.raises(FileNotFoundError, match="lora=missing.safetensors: no such adapter file"):
        parse_adapters("missing.safetensors:0.5")
