"""The joint audio-video objective inside the training module: each modality's own noise level and noise (drawn
after all of the video's, so the video's are a video-only run's), the masks (a clip without sound trains the
video tower only), audio_weight, and the LoRA targets of a twin-tower model."""

import pytest
import torch

from wan_train.config import compose_config
from wan_train.lora.targets import targeted_modules
from wan_train.training.encoders import Encoders
from wan_train.training.module import FlowMatchingModule, Inputs, _generator
from wan_train.inference.twin import extend
from wan_train.training.run import build_dit


def module_for(model: str, **overrides) -> FlowMatchingModule:
    cfg = compose_config(["recipe=av", f"model={model}", "data=av_demo", "trainer=cpu",
                          *(f"{k}={v}" for k, v in overrides.items())])
    return FlowMatchingModule(cfg, dit=extend(cfg, build_dit(cfg)), encoders=Encoders(), boundary=None, held_out=[])


def inputs(b: int = 3, *, has_audio=(True, False, True)) -> Inputs:
    g = torch.Generator().manual_seed(1)
    return Inputs(torch.randn(b, 12, 2, 4, 4, generator=g), torch.randn(b, 7, 4096, generator=g),
                  audio=torch.randn(b, 20, 16, generator=g), has_audio=torch.tensor(has_audio))


def generators(b: int = 3) -> list[torch.Generator]:
    return [_generator(0, 5, 0, f"shard/x.tar:{i}") for i in range(b)]


def test_each_modality_draws_its_own_sigma_and_the_video_draws_are_a_video_only_runs():
    twin, video_only = module_for("quickstart_av"), module_for("quickstart")
    assert twin.twin and not video_only.twin
    got, alone = twin.draw(inputs(), generators()), video_only.draw(inputs(), generators())
    assert set(got) == {"sigma", "noise", "first_frame", "audio_sigma", "audio_noise"}
    assert torch.equal(got["sigma"], alone["sigma"]) and torch.equal(got["noise"], alone["noise"])
    assert got["audio_noise"].shape == (3, 20, 16)
    assert not torch.equal(got["audio_sigma"], got["sigma"])  # independent (the default)
    # the sigmas are SigmaSampler.sample's for the same generator, one sample at a time
    for i, g in enumerate(generators()):
        expected = twin.sampler.sample(1, generator=g, low=twin.range.low, high=twin.range.high)
        assert torch.equal(got["sigma"][i:i + 1], expected)
    shared = module_for("quickstart_av", **{"flow.audio_sigma": "shared"}).draw(inputs(), generators())
    assert torch.equal(shared["audio_sigma"], shared["sigma"])
    assert torch.equal(shared["audio_noise"], got["audio_noise"])  # the same stream either way
    # independent over many samples: uncorrelated, from the same distribution
    many = twin.draw(inputs(512, has_audio=[True] * 512), generators(512))
    assert abs(torch.corrcoef(torch.stack([many["sigma"], many["audio_sigma"]]))[0, 1]) < 0.15
    assert abs(many["sigma"].median() - many["audio_sigma"].median()) < 0.08


def test_a_clip_without_sound_trains_the_video_tower_only_and_audio_weight_scales_the_sound():
    module = module_for("quickstart_av")
    torch.manual_seed(0)
    for p in module.dit.parameters():  # a model whose outputs depend on everything
        p.data.normal_(0, 0.02)
    x = inputs()
    draws = module.draw(x, generators())
    first = draws.pop("first_frame")
    video, audio = module.losses(x, **draws, first_frame=first)
    loss = module.loss(x, **draws, first_frame=first)
    assert torch.equal(loss, torch.stack([video[0] + audio[0], video[1], video[2] + audio[2]]))
    heavy = module_for("quickstart_av", **{"flow.audio_weight": 0.25})
    heavy.dit.load_state_dict(module.dit.state_dict())
    assert torch.allclose(heavy.loss(x, **draws), video + 0.25 * audio * x.has_audio)
    # the silent clip's loss does not depend on its (absent) sound, and its gradient reaches no audio output
    other = Inputs(x.latents, x.context, audio=x.audio.clone(), has_audio=x.has_audio)
    other.audio[1] = 100.0
    assert torch.equal(module.loss(other, **draws)[1], loss[1])
    module.dit.zero_grad()
    module.loss(x, **draws)[1].backward()
    head = module.dit.audio_model.head.head.weight.grad
    assert head is None or torch.count_nonzero(head) == 0


def test_lora_on_a_twin_targets_the_chosen_towers_and_the_fusion_projections():
    dit = module_for("quickstart_av").dit
    audio_fusion = targeted_modules(dit, "attn_qkvo", towers=["audio"], fusion=True)
    assert audio_fusion and all(n.startswith("audio_model.") or n.endswith(("k_fusion", "v_fusion"))
                                for n in audio_fusion)
    assert "video_model.blocks.0.cross_attn.v_fusion" in audio_fusion
    assert "video_model.blocks.0.self_attn.q" not in audio_fusion
    both = targeted_modules(dit, "attn_qkvo_ffn", towers=["video", "audio"], fusion=False)
    assert "video_model.blocks.1.ffn.2" in both and not any(n.endswith("_fusion") for n in both)
    with pytest.raises(ValueError, match="nothing of the twin-tower model to adapt"):
        targeted_modules(dit, "attn_qkvo", towers=[], fusion=False)
    with pytest.raises(ValueError, match=r"lora towers \['speech'\] are not known"):
        targeted_modules(dit, "attn_qkvo", towers=["speech"])


def test_reference_voices_are_clean_tokens_with_timestep_0_and_no_prediction(tmp_path):
    from wan_train.models import OviDiT, load_ovi_dit, save_ovi_dit

    module = module_for("quickstart_av", **{"model.audio_references": 2})
    dit = module.dit
    assert isinstance(dit, OviDiT) and dit.ovi_config.audio.references == 2
    torch.manual_seed(0)
    for p in dit.parameters():
        p.data.normal_(0, 0.02)
    x = inputs()
    g = torch.Generator().manual_seed(3)
    x.audio_refs = [torch.randn(3, 20, 8, generator=g), torch.zeros(3, 20, 5)]
    seen = []
    original = dit.audio_model.time_embeddings
    dit.audio_model.time_embeddings = lambda t: (seen.append(t), original(t))[1]
    draws = module.draw(x, generators())
    draws.pop("first_frame")
    video, audio = module.losses(x, **draws)
    t = seen[-1]
    assert t.shape == (3, 16 + 8 + 5)  # the clip's 16 latents, then the references'
    assert torch.equal(t[:, 16:], torch.zeros(3, 13)) and bool((t[:, :16] > 0).all())
    with torch.no_grad():  # the prediction is the clip's only, and the references change it
        _, pred = dit(x.latents, x.audio, torch.full((3,), 500.0), torch.full((3,), 500.0), x.context,
                      audio_refs=x.audio_refs)
        _, alone = dit(x.latents, x.audio, torch.full((3,), 500.0), torch.full((3,), 500.0), x.context)
    assert pred.shape == alone.shape == (3, 20, 16) and not torch.allclose(pred, alone)
    assert audio.shape == (3,)
    with pytest.raises(ValueError, match="3 audio references given; this model has 2 reference-voice slots"):
        dit(x.latents, x.audio, torch.full((3,), 500.0), torch.full((3,), 500.0), x.context,
            audio_refs=[x.audio_refs[0]] * 3)
    with pytest.raises(ValueError, match=r"audio_refs\[0\] \(@Video1\) has shape \(3, 12, 8\)"):
        dit(x.latents, x.audio, torch.full((3,), 500.0), torch.full((3,), 500.0), x.context,
            audio_refs=[torch.zeros(3, 12, 8)])
    # the slots travel in the saved config
    save_ovi_dit(dit, tmp_path / "twin")
    assert load_ovi_dit(tmp_path / "twin").ovi_config.audio.references == 2
