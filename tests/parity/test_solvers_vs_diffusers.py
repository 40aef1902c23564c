"""Parity with diffusers' schedulers: on a tiny random-weight WanDiT with the same initial noise, our stateless
solvers reproduce the scheduler loops of FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler and
DPMSolverMultistepScheduler (flow prediction) at every step, and our grids are theirs.

Scheduler settings (the official Wan ones, wan_arch.md §4.2):
- Euler: FlowMatchEulerDiscreteScheduler(shift=s) handed DiffSynth's unshifted base sigmas linspace(1, 0, n + 1)[:-1]
  (it shifts them once; without sigmas it shifts its already-shifted 1000-step table again and does not reach 0
  before the appended final 0, see test_diffusers_default_grids_are_not_official).
- UniPC: UniPCMultistepScheduler as in the Wan-AI diffusers scheduler_config.json (flow_prediction, use_flow_sigmas,
  solver_order 2, bh2, predict_x0, lower_order_final, final_sigmas_type "zero") with flow_shift=s, handed the
  official base sigmas linspace(0.999, 0, n + 1)[:-1]; WanPipeline does not hand them (see the same test).
- DPM++: DPMSolverMultistepScheduler(dpmsolver++, order 2, midpoint, flow_prediction, use_flow_sigmas,
  final_sigmas_type "zero"); its own flow grid is the 0.999 one. The official DPM++ grid (sigma_max 1, sigma_0 = 1
  exactly, lambda = -inf) is checked by writing it into the scheduler, as the official scheduler takes it.

Both loops feed the model the scheduler's timesteps, so the trajectories compare the solvers alone. The timesteps our
pipeline derives from our grid (1000 sigma, floored where Solver.integer_timesteps: the official and diffusers UniPC /
DPM++ store int64 timesteps) are compared separately: equal for the integer ones; for Euler ~1e-4 from diffusers'
float32 1000 * sigma, a difference the random tiny DiT turns into up to ~1e-5 in the trajectory.
"""

import dataclasses

import numpy as np
import pytest
import torch

from tests.helpers import randomize_
from wan_train.flow import shift_sigma, to_timestep
from wan_train.inference.schedules import sampling_sigmas
from wan_train.inference.solvers import get_solver
from wan_train.models import WanDiT, get_size

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.parity

CASES = [(10, 5.0), (7, 12.0), (1, 3.0), (2, 3.0)]  # (steps, shift)
TOL = 1e-5


def euler_scheduler(steps, shift):
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
    return sched


def unipc_scheduler(steps, shift):
    sched = diffusers.UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift, solver_order=2, solver_type="bh2",
        predict_x0=True, lower_order_final=True, final_sigmas_type="zero")
    sched.set_timesteps(sigmas=np.linspace(0.999, 0.0, steps + 1)[:-1])
    return sched


def dpm_scheduler(steps, shift):
    sched = diffusers.DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", prediction_type="flow_prediction",
        use_flow_sigmas=True, flow_shift=shift, lower_order_final=True, final_sigmas_type="zero")
    sched.set_timesteps(steps)
    return sched


def dpm_official_scheduler(steps, shift):
    """The official FlowDPMSolverMultistepScheduler's grid (get_sampling_sigmas: sigma_max 1) in diffusers' solver,
    stored as the official set_timesteps stores it: float32 sigmas + final 0, int64 timesteps."""
    sched = dpm_scheduler(steps, shift)
    sigmas = shift_sigma(np.linspace(1.0, 0.0, steps + 1)[:steps], shift)
    sched.sigmas = torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32))
    sched.timesteps = torch.from_numpy(sigmas * 1000).to(torch.int64)
    return sched


# solver name -> (scheduler factory, sigma_max of the grid it is compared on)
REFERENCES = {
    "euler": (euler_scheduler, 1.0),
    "unipc": (unipc_scheduler, 0.999),
    "dpmpp_2m": (dpm_scheduler, 0.999),
    "dpmpp_2m@official": (dpm_official_scheduler, 1.0),
}


@pytest.fixture(scope="module")
def models():
    """Tiny random DiTs (the zero-initialised head randomised so velocities are not trivially 0), t2v and ti2v. The
    prompt is padded to 16 tokens instead of 512: the padded text MLP would otherwise be ~all of the compute."""
    return {size: randomize_(WanDiT(dataclasses.replace(get_size(size).dit, text_len=16)), seed=3).eval()
            for size in ("tiny", "tiny-ti2v")}


def our_timesteps(solver_name, sigmas):
    t = to_timestep(sigmas[:-1])
    return t.floor() if get_solver(solver_name).integer_timesteps else t


def make_velocity(dit, context, first_frame_clean):
    """velocity(x, t): the DiT at scalar timestep t; TI2V gives the first latent frame's tokens t = 0."""

    def velocity(x, t):
        t_B = torch.full((x.shape[0],), float(t))
        if first_frame_clean:
            pt, ph, pw = dit.config.patch_size
            per_frame = (x.shape[3] // ph) * (x.shape[4] // pw)
            t_B = t_B[:, None].repeat(1, (x.shape[2] // pt) * per_frame)
            t_B[:, :per_frame] = 0.0
        with torch.no_grad():
            return dit(x, t_B, context)

    return velocity


def diffusers_loop(sched, velocity, x, paste):
    """The WanPipeline loop: model at the scheduler's timestep, scheduler.step, then (TI2V) the paste."""
    sched.set_begin_index(0)
    states = []
    for t in sched.timesteps:
        x = sched.step(velocity(x, t), t, x, return_dict=False)[0]
        x = paste(x)
        states.append(x)
    return states


def our_loop(solver_name, velocity, x, sigmas, timesteps, paste):
    states, calls = [], []

    def after_step(x, i):
        x = paste(x)
        states.append(x)
        return x

    def model(x, i):
        calls.append(i)
        return velocity(x, timesteps[i])

    out = get_solver(solver_name).fn(model, x, sigmas, after_step=after_step)
    assert calls == list(range(len(sigmas) - 1))
    assert out is states[-1]
    return states


def run_case(models, reference, steps, shift, *, ti2v):
    make_scheduler, sigma_max = REFERENCES[reference]
    solver_name = reference.split("@")[0]
    dit = models["tiny-ti2v" if ti2v else "tiny"]
    g = torch.Generator().manual_seed(steps)
    x = torch.randn(1, dit.config.in_dim, 3, 8, 8, generator=g)
    context = torch.randn(1, 7, dit.config.text_dim, generator=g)
    first = torch.randn(1, dit.config.in_dim, 1, 8, 8, generator=g)

    def paste(x):  # TI2V: latent = (1 - m) z + m latent with m = 0 on latent frame 0
        if not ti2v:
            return x
        x = x.clone()
        x[:, :, :1] = first
        return x

    x = paste(x)
    velocity = make_velocity(dit, context, first_frame_clean=ti2v)
    sched = make_scheduler(steps, shift)
    sigmas = sampling_sigmas(steps, shift=shift, sigma_max=sigma_max)
    theirs = diffusers_loop(sched, velocity, x, paste)
    ours = our_loop(solver_name, velocity, x, sigmas, sched.timesteps, paste)
    return sched, sigmas, theirs, ours


@pytest.mark.parametrize("steps,shift", CASES)
@pytest.mark.parametrize("reference", list(REFERENCES))
def test_grid_and_timesteps_equal_diffusers(reference, steps, shift):
    make_scheduler, sigma_max = REFERENCES[reference]
    sched = make_scheduler(steps, shift)
    sigmas = sampling_sigmas(steps, shift=shift, sigma_max=sigma_max)
    assert sched.sigmas.dtype == torch.float32  # diffusers stores the grid in float32
    torch.testing.assert_close(sched.sigmas.double(), sigmas, rtol=0, atol=1e-6)
    ours = our_timesteps(reference.split("@")[0], sigmas)
    if get_solver(reference.split("@")[0]).integer_timesteps:
        assert sched.timesteps.dtype == torch.int64 and torch.equal(sched.timesteps.double(), ours)
    else:  # float32 1000 * sigma
        torch.testing.assert_close(sched.timesteps.double() / 1000, sigmas[:-1], rtol=0, atol=1e-6)
        torch.testing.assert_close(sched.timesteps.double(), ours, rtol=0, atol=1e-3)


@pytest.mark.parametrize("ti2v", [False, True], ids=["t2v", "ti2v_paste"])
@pytest.mark.parametrize("steps,shift", CASES)
@pytest.mark.parametrize("reference", list(REFERENCES))
def test_trajectory_equals_diffusers(models, reference, steps, shift, ti2v):
    _, _, theirs, ours = run_case(models, reference, steps, shift, ti2v=ti2v)
    assert len(ours) == len(theirs) == steps
    diffs = [(a - b).abs().max().item() for a, b in zip(ours, theirs, strict=True)]
    assert all(a.dtype == torch.float32 for a in ours)
    assert max(diffs) <= TOL, diffs
    assert theirs[-1].abs().max() > 0.1  # not a trivially small trajectory
    if ti2v:
        assert torch.equal(ours[-1][:, :, :1], theirs[-1][:, :, :1])


def test_diffusers_default_grids_are_not_official():
    """Why the tests above hand diffusers its sigmas: WanPipeline's UniPC (set_timesteps(n), no sigmas) starts from
    linspace(1, 1/1000, n + 1)[:-1] with sigma_0 pulled to 1 - 1e-6, not the official linspace(0.999, 0, ...); the
    flow-match Euler default shifts its already-shifted table a second time."""
    steps, shift = 40, 12.0
    unipc = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                              flow_shift=shift)
    unipc.set_timesteps(steps)
    base = np.linspace(1.0, 1 / 1000, steps + 1)[:-1]
    expected = shift_sigma(base, shift)
    expected[0] -= 1e-6
    torch.testing.assert_close(unipc.sigmas[:-1].double(), torch.from_numpy(expected), rtol=0, atol=1e-6)
    official = sampling_sigmas(steps, shift=shift, sigma_max=0.999)
    assert (unipc.sigmas.double() - official).abs().max() > 1e-3

    euler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    euler.set_timesteps(steps)
    assert (euler.sigmas.double() - sampling_sigmas(steps, shift=shift)).abs().max() > 1e-2
