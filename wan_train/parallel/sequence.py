"""Ulysses sequence parallelism for the Wan DiT (DeepSpeed-Ulysses, Jacobs et al. 2023, arXiv:2309.14509).

Legend: B batch, L video tokens of the whole sample, L_local = L / P tokens on this rank, P ranks in the
sequence-parallel group, N heads, K head dim. ``group``: a torch.distributed ProcessGroup, or None for the
default (world) group.

One sample's L tokens are split into P contiguous chunks, one per rank. Everything in a Wan block is per token
except self-attention (modulation, cross-attention to the full text context, FFN, head); in self-attention an
all-to-all turns [B, L_local, N, K] (sequence-sharded, all heads) into [B, L, N/P, K] (whole sequence, heads
sharded), SDPA runs on whole heads, and the inverse all-to-all turns [B, L, N/P, K] back into
[B, L_local, N, K]. Per self-attention each rank sends 4 * B * L_local * N * K elements (q, k, v in, out back),
independent of P for a fixed L_local.

Gradients: every rank computes the same loss on the gathered output (``gather_sequence`` hands back only this
rank's slice of the incoming gradient), and tensors are split by plain slicing (``SequenceParallel.split``:
zero gradient outside the local chunk). So each rank's parameter gradients hold the contribution of its own
tokens only: they are partial, and their SUM over the group is the full gradient. A data-parallel all-reduce
that averages over all W ranks (DDP, FSDP) gives (1/P) of the per-sample mean; scale the loss by P.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Cut ``x`` into P chunks along scatter_dim, send chunk j to rank j, and concatenate the P chunks received
    along gather_dim in rank order (all_to_all_single: one contiguous buffer, supported by NCCL and gloo)."""
    world = dist.get_world_size(group)
    scatter_dim, gather_dim = scatter_dim % x.ndim, gather_dim % x.ndim
    # [P, ...chunk]: chunk j is the slab rank j receives
    send = x.unflatten(scatter_dim, (world, -1)).movedim(scatter_dim, 0).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    # recv[j] came from rank j: put it at position j of gather_dim
    return recv.movedim(0, gather_dim).flatten(gather_dim, gather_dim + 1)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scatter_dim: int, gather_dim: int,
                group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.dims, ctx.group = (scatter_dim, gather_dim), group
        return _all_to_all(x, scatter_dim, gather_dim, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        scatter_dim, gather_dim = ctx.dims
        return _all_to_all(grad, gather_dim, scatter_dim, ctx.group), None, None, None


def _gather(x: torch.Tensor, dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    parts = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.dim, ctx.group = dim, group
        return _gather(x, dim, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # every rank holds the same loss of the gathered tensor: its gradient w.r.t. this rank's chunk is the
        # local slice, with no reduction (a sum over ranks would count the loss P times)
        rank = dist.get_rank(ctx.group)
        return grad.chunk(dist.get_world_size(ctx.group), dim=ctx.dim)[rank].contiguous(), None, None


class _Split(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.dim, ctx.group = dim, group
        return x.chunk(dist.get_world_size(group), dim=dim)[dist.get_rank(group)].contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _gather(grad, ctx.dim, ctx.group), None, None


def _check_divisible(length: int, world: int, what: str) -> None:
    if length % world:
        raise ValueError(f"{what}: {length} is not divisible by the sequence-parallel size P = {world}")


def all_to_all(x: torch.Tensor, *, scatter_dim: int, gather_dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Scatter ``scatter_dim`` over the group and gather ``gather_dim`` from it: shape[scatter_dim] / P and
    shape[gather_dim] * P. Backward is the inverse all-to-all (the two dims swapped)."""
    _check_divisible(x.shape[scatter_dim], dist.get_world_size(group), f"all_to_all scatter dim {scatter_dim}")
    return _AllToAll.apply(x, scatter_dim, gather_dim, group)


def gather_sequence(x: torch.Tensor, dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Concatenate every rank's chunk along ``dim`` in rank order (equal chunk sizes). Backward returns this
    rank's slice of the incoming gradient: every rank must compute the same loss on the gathered tensor."""
    return _Gather.apply(x, dim, group)


def split_sequence(x: torch.Tensor, dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """This rank's contiguous chunk of ``x`` (replicated on every rank) along ``dim``. Backward all-gathers the
    chunks' gradients, so every rank gets the full gradient of ``x``: for an input whose gradient each rank needs
    whole. Parameters before it get the full (replicated) gradient on every rank, not a partial one; the DiT
    uses ``SequenceParallel.split`` (partial gradients) instead."""
    _check_divisible(x.shape[dim], dist.get_world_size(group), f"split_sequence length along dim {dim}")
    return _Split.apply(x, dim, group)


def ulysses_attention(q_BLNK: torch.Tensor, k_BLNK: torch.Tensor, v_BLNK: torch.Tensor, *,
                      group: dist.ProcessGroup | None) -> torch.Tensor:
    """Unmasked self-attention of the whole sequence from this rank's L_local tokens; returns [B, L_local, N*K].

    q/k/v [B, L_local, N, K] hold all N heads with RoPE already applied at global positions; N must be divisible
    by P. Equal to ``wan_train.models.dit.layers.attention`` on the full sequence, sliced to this rank's tokens.
    """
    world = dist.get_world_size(group)
    num_heads = q_BLNK.shape[2]
    if num_heads % world:
        raise ValueError(f"Ulysses attention shards heads: num_heads N = {num_heads} is not divisible by the "
                         f"sequence-parallel size P = {world}")
    # one all-to-all for q, k and v: [3, B, L_local, N, K] -> [3, B, L, N/P, K]
    qkv_3BLNK = _AllToAll.apply(torch.stack((q_BLNK, k_BLNK, v_BLNK)), 3, 2, group)
    q_BNLK, k_BNLK, v_BNLK = qkv_3BLNK.transpose(2, 3).unbind(0)
    out_BLNK = F.scaled_dot_product_attention(q_BNLK, k_BNLK, v_BNLK).transpose(1, 2)
    # [B, L, N/P, K] -> [B, L_local, N, K]
    return _AllToAll.apply(out_BLNK, 1, 2, group).flatten(2)


@dataclass(frozen=True, eq=False)
class SequenceParallel:
    """One process group that shares each sample's tokens; set it as ``WanDiT.sequence_parallel``.

    Rank r holds the contiguous tokens [r * L / P, (r + 1) * L / P) of the row-major (f, h, w) sequence. This is
    the object the DiT calls (``split``, ``gather``, ``attention``, ``size``); models never imports this module.
    """

    group: dist.ProcessGroup | None
    size: int
    rank: int

    @classmethod
    def from_group(cls, group: dist.ProcessGroup | None = None) -> SequenceParallel:
        """The group (None: the whole world) with this process's size and rank in it."""
        return cls(group=group, size=dist.get_world_size(group), rank=dist.get_rank(group))

    def __deepcopy__(self, memo: dict) -> SequenceParallel:
        # a process group is a process-wide handle: copies of the model (EMA) share it
        return self

    def local_range(self, length: int) -> tuple[int, int]:
        """[start, stop) of this rank's chunk of ``length`` tokens."""
        _check_divisible(length, self.size, "sequence length")
        n = length // self.size
        return self.rank * n, (self.rank + 1) * n

    def split(self, x: torch.Tensor, *, dim: int = 1) -> torch.Tensor:
        """This rank's chunk along ``dim`` (tokens [B, L, ...], per-token tables [L, J] with dim=0, t [B, L]).
        Plain slicing: the gradient outside the chunk is zero, so parameters before the split get partial
        gradients like every other parameter (see the module docstring)."""
        start, stop = self.local_range(x.shape[dim])
        return x.narrow(dim, start, stop - start)

    def gather(self, x: torch.Tensor, *, dim: int = 1) -> torch.Tensor:
        """Every rank's chunk concatenated along ``dim``; backward keeps this rank's slice (``gather_sequence``)."""
        return gather_sequence(x, dim, self.group)

    def attention(self, q_BLNK: torch.Tensor, k_BLNK: torch.Tensor, v_BLNK: torch.Tensor) -> torch.Tensor:
        return ulysses_attention(q_BLNK, k_BLNK, v_BLNK, group=self.group)


def sequence_groups(size: int) -> SequenceParallel:
    """Split the world into consecutive groups of `size` ranks (ranks 0..size-1, size..2*size-1, ...) and return
    this rank's. Every rank must call it, in the same order (torch.distributed.new_group is collective)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % size:
        raise ValueError(f"sequence parallel: the world of {world} ranks is not divisible into groups of {size}")
    mine = None
    for start in range(0, world, size):
        group = dist.new_group(list(range(start, start + size)))
        if start <= rank < start + size:
            mine = group
    return SequenceParallel.from_group(mine)
