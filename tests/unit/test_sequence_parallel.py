"""Ulysses sequence parallelism on 2 real torch.distributed ranks (gloo): attention and the whole DiT give the
unsplit numbers on every rank, the per-rank parameter gradients sum to the unsplit gradient (activation
checkpointing included), and indivisible heads or token counts fail with a message naming the numbers.

One spawn (about 10 s on 2 cores) runs every case; each test asserts on its part of the results."""

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers import dit_inputs, randomize_
from wan_train.models import WanDiT, get_size
from wan_train.models.dit.layers import attention
from wan_train.parallel import SequenceParallel, ulysses_attention

WORLD = 2
DIT_CASES = {"scalar_t": dict(per_token_t=False, checkpointing=False),
             "per_token_t_checkpointed": dict(per_token_t=True, checkpointing=True)}


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _attention_case(sp: SequenceParallel) -> dict:
    """Random q/k/v [B=2, L=10, N=4, K=8]: each rank holds 5 tokens and attends with 2 of the 4 heads."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 10, 4, 8, generator=g).requires_grad_() for _ in range(3))
    weight = torch.randn(2, 10, 32, generator=g)  # a loss that weighs every output element differently
    ref = attention(q, k, v)
    (ref * weight).sum().backward()

    local = [sp.split(x.detach(), dim=1).requires_grad_() for x in (q, k, v)]
    out = ulysses_attention(*local, group=sp.group)
    # the global loss is the sum of the ranks' local terms; the all-to-all backward routes their gradients
    (out * sp.split(weight, dim=1)).sum().backward()
    return {"out": max_abs(out, sp.split(ref, dim=1)),
            "grad": max(max_abs(x.grad, sp.split(full.grad, dim=1)) for x, full in zip(local, (q, k, v), strict=True))}


def _dit_case(sp: SequenceParallel, *, per_token_t: bool, checkpointing: bool) -> dict:
    """The tiny DiT on a 3 x 3 x 4 token grid (18 tokens per rank), against the same weights unsplit."""
    ref = randomize_(WanDiT(get_size("tiny").dit))
    split = copy.deepcopy(ref)
    split.sequence_parallel, split.activation_checkpointing = sp, checkpointing
    inputs = dit_inputs(ref.config, frames=3, height=6, width=8, per_token_t=per_token_t)

    ref_out = ref(**inputs)
    ref_out.square().mean().backward()
    out = split(**inputs)  # every rank gets the full output and computes the same loss
    out.square().mean().backward()

    rel = 0.0
    for (name, p_ref), p in zip(ref.named_parameters(), split.parameters(), strict=True):
        assert p.grad is not None, name
        grad = p.grad.clone()
        dist.all_reduce(grad, group=sp.group)  # partial per rank, SUM over the group = full
        rel = max(rel, ((grad - p_ref.grad).norm() / p_ref.grad.norm()).item())
    return {"out": max_abs(out, ref_out), "out_scale": ref_out.abs().max().item(), "grad_rel": rel,
            "t_shape": tuple(inputs["t"].shape)}


def _error(fn) -> str:
    try:
        fn()
    except ValueError as e:
        return str(e)
    return "no error"


def _error_cases(sp: SequenceParallel) -> dict:
    q = torch.randn(1, 4, 3, 8)  # N = 3 heads on P = 2 ranks
    dit = randomize_(WanDiT(get_size("tiny").dit))
    dit.sequence_parallel = sp
    with torch.no_grad():
        return {"heads": _error(lambda: ulysses_attention(q, q, q, group=sp.group)),
                "grid": _error(lambda: dit(**dit_inputs(dit.config, frames=3, height=6, width=10))),  # 45 tokens
                "split": _error(lambda: sp.split(torch.zeros(1, 5, 2), dim=1))}


def _rank_main(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two processes on two cores
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        sp = SequenceParallel.from_group()
        results = {"rank": sp.rank, "size": sp.size, "attention": _attention_case(sp),
                   "dit": {name: _dit_case(sp, **case) for name, case in DIT_CASES.items()},
                   "errors": _error_cases(sp)}
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("sequence_parallel")
    mp.start_processes(_rank_main, args=(WORLD, free_port(), str(out)), nprocs=WORLD, start_method="spawn")
    results = [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]
    assert [(r["rank"], r["size"]) for r in results] == [(0, 2), (1, 2)]
    return results


def test_ulysses_attention_equals_attention_on_the_full_sequence(ranks):
    for r in ranks:
        assert r["attention"]["out"] <= 1e-5
        assert r["attention"]["grad"] <= 1e-5


@pytest.mark.parametrize("case", DIT_CASES)
def test_split_dit_matches_the_unsplit_dit_and_its_gradients_sum_to_the_full_gradient(ranks, case):
    for r in ranks:
        res = r["dit"][case]
        assert res["out_scale"] > 0.1  # a real output, not a vanishing one
        assert res["out"] <= 1e-5
        assert res["grad_rel"] <= 1e-5
    if DIT_CASES[case]["per_token_t"]:
        assert ranks[0]["dit"][case]["t_shape"] == (2, 36)


def test_indivisible_heads_or_tokens_fail_with_the_numbers(ranks):
    for r in ranks:
        errors = r["errors"]
        assert "num_heads N = 3" in errors["heads"] and "P = 2" in errors["heads"]
        assert "3 x 3 x 5 (frames x height x width) = 45 tokens" in errors["grid"] and "P = 2" in errors["grid"]
        assert "5 is not divisible" in errors["split"] and "P = 2" in errors["split"]
