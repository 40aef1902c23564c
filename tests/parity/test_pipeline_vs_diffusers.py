"""The whole denoising loop against diffusers' WanPipeline with identical tiny weights, noise and prompt
embeddings: UniPC with classifier-free guidance, for one DiT and for two MoE experts with a guidance scale each.
diffusers' pipeline builds its own UniPC grid (linspace(1, 0.001)); it is given the official grid that our
`unipc` uses (linspace(0.999, 0), fm_solvers_unipc.py) through `set_timesteps(sigmas=...)`."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import randomize_
from wan_train.inference import Sampling
from wan_train.inference.pipeline import Conditioning, WanModels, denoise
from wan_train.models import WanDiT, get_size
from wan_train.models.checkpoint.dit_layouts import DIFFUSERS, config_to_json, from_official

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.parity


def official_grid_unipc(shift):
    class Scheduler(diffusers.UniPCMultistepScheduler):
        def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
            super().set_timesteps(device=device, sigmas=np.linspace(0.999, 0.0, num_inference_steps + 1)[:-1])

    return Scheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)


def reference(dit):
    kwargs = {k: v for k, v in config_to_json(dit.config, DIFFUSERS).items() if not k.startswith("_")}
    ref = diffusers.WanTransformer3DModel(**kwargs)
    ref.load_state_dict({from_official(k, DIFFUSERS): v for k, v in dit.state_dict().items()})
    return ref.eval()


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "two-experts"])
def test_our_loop_reproduces_wan_pipeline(moe):
    config = dataclasses.replace(get_size("tiny").dit, text_len=32)  # a short text pad keeps the test fast
    experts = ("high_noise", "low_noise") if moe else (None,)
    dits = {e: randomize_(WanDiT(config), seed=i).eval() for i, e in enumerate(experts)}
    refs = [reference(d) for d in dits.values()]
    settings = Sampling(steps=8, shift=12.0 if moe else 5.0, guidance_scale=4.0, guidance_scale_2=3.0 if moe else None,
                        width=32, height=32, num_frames=5)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 16, 2, 4, 4, generator=g)
    context, negative = torch.randn(1, 7, 4096, generator=g), torch.randn(1, 5, 4096, generator=g)

    pipe = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=diffusers.AutoencoderKLWan(base_dim=8),
                                 scheduler=official_grid_unipc(settings.shift), transformer=refs[0],
                                 transformer_2=refs[1] if moe else None, boundary_ratio=0.875 if moe else None)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt_embeds=F.pad(context, (0, 0, 0, 25)), negative_prompt_embeds=F.pad(negative, (0, 0, 0, 27)),
                    height=32, width=32, num_frames=5, num_inference_steps=settings.steps,
                    guidance_scale=settings.guidance_scale, guidance_scale_2=settings.guidance_scale_2,
                    latents=noise.clone(), output_type="latent", return_dict=False)[0]

    models = WanModels(dits, vae=None, text_encoder=None, boundary=0.875 if moe else None)
    ours = denoise(models, noise, context, negative, Conditioning(), settings, device=torch.device("cpu"))
    # the solver alone matches diffusers to 2e-6 (test_solvers_vs_diffusers); here the two CFG branches also run
    # as one batch of 2 against diffusers' two forwards, float32 sums in another order (max seen: 1.6e-5)
    diff = (ours - expected).abs().max().item()
    assert diff < 5e-5, diff
