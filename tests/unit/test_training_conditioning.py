"""Image conditioning in training: I2V models get y (and CLIP features), TI2V samples trained image-to-video see
their clean first latent frame at timestep 0, and given frames stay out of the loss."""

import pytest
import torch

from tests.helpers import randomize_
from wan_train.config import compose_config
from wan_train.inference import i2v_mask
from wan_train.models import WanDiT, get_size
from wan_train.training.module import FlowMatchingModule, Inputs


def module_for(size: str) -> FlowMatchingModule:
    cfg = compose_config(["model=tiny", f"model.size={size}", "data=latents", "data.shards=[x]"])
    dit = randomize_(WanDiT(get_size(size).dit))  # a zero-init head would hide what the inputs do
    return FlowMatchingModule(cfg, dit=dit, encoders=None, boundary=None, held_out=[])


def test_i2v_uses_y_and_clip_features_and_leaves_frame_0_out_of_the_loss():
    module = module_for("tiny-i2v")
    latents = torch.randn(2, 16, 3, 4, 4)
    y = torch.cat([i2v_mask(9, 4, 4, temporal_compression=4)[None].expand(2, -1, -1, -1, -1),
                   torch.randn(2, 16, 3, 4, 4)], dim=1)
    inputs = Inputs(latents, torch.randn(2, 5, 4096), y, torch.randn(2, 257, 1280))
    sigma, noise = torch.tensor([0.3, 0.8]), torch.randn_like(latents)
    base = module.loss(inputs, sigma, noise)
    assert not torch.allclose(base, module.loss(Inputs(latents, inputs.context, y * 2, inputs.clip_fea), sigma,
                                                noise))
    assert not torch.allclose(base, module.loss(Inputs(latents, inputs.context, y, torch.randn(2, 257, 1280)), sigma,
                                                noise))
    mask = module.frame_mask(inputs, None)
    assert mask.tolist() == [False, True, True]


def test_ti2v_image_mode_sees_the_clean_first_frame_at_timestep_0():
    module = module_for("tiny-ti2v")
    latents = torch.randn(2, 48, 3, 4, 4)
    inputs = Inputs(latents, torch.randn(2, 5, 4096))
    sigma, noise = torch.tensor([0.6, 0.6]), torch.randn_like(latents)
    first = torch.tensor([True, False])
    other_noise = noise.clone()
    other_noise[:, :, 0] += 1.0  # different noise on frame 0 only
    a = module.loss(inputs, sigma, noise, first_frame=first)
    b = module.loss(inputs, sigma, other_noise, first_frame=first)
    # sample 0 (image mode): frame 0 is clean in x_t and out of the loss; sample 1 (text mode): it matters
    assert torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])
    assert module.frame_mask(inputs, first).tolist() == [[False, True, True], [True, True, True]]

    seen = {}
    module.dit.register_forward_hook(lambda m, args, out: seen.update(t=args[1]))
    module.loss(inputs, sigma, noise, first_frame=first)
    t = seen["t"]  # per token: 3 latent frames x (4/2 x 4/2) tokens
    assert t.shape == (2, 12)
    assert t[0, :4].eq(0).all() and t[0, 4:].eq(600).all() and t[1].eq(600).all()


@pytest.mark.parametrize("size", ["tiny", "tiny-moe"])
def test_text_to_video_models_use_every_frame(size):
    module = module_for(size)
    inputs = Inputs(torch.randn(1, 16, 3, 4, 4), torch.randn(1, 5, 4096))
    assert module.frame_mask(inputs, None) is None
