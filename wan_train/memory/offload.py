"""Block offload: the frozen weights of the last K DiT blocks live in (pinned) host memory and are copied to the
device just ahead of use, on a side CUDA stream, so the copy of block i+1 overlaps the compute of block i.

Each offloaded block runs as its own checkpoint (``_OffloadedBlock``): its forward runs without saving
activations and drops the block's device copy as soon as it returns; its backward copies the weights in again
(prefetching the block before it), recomputes the block and backpropagates through it, then drops them. The
weights are therefore on the device only inside the block's own forward and backward, whatever autograd does
in between, and the gradients are exactly those of the plain model (tests/unit/test_memory.py). Trained
parameters (LoRA factors) are never offloaded: they stay with the optimizer on the device.

Device copies are installed by pointing each parameter's ``.data`` at them (and back at the host copy after), so
module code, peft wrappers and state dicts see the same Parameter objects throughout. The host copies are the
masters: frozen, never written.

Activation offload (``ActivationOffload``): the tensors autograd saves for backward (with per-block
checkpointing, the blocks' inputs: the float32 residual stream, 4 B L D bytes per block) wait in pinned host
memory instead of on the device, like torch.autograd.graph.save_on_cpu, but a tensor saved by several blocks
(the text context, the timestep modulation) is copied once per forward."""

from __future__ import annotations

from collections.abc import Callable
import weakref
from contextlib import contextmanager

import torch
from torch import nn


class BlockOffload:
    """Offload the frozen tensors of ``blocks[-count:]``; ``prefetch`` blocks ahead are copied in while one runs.

    The device is the one the rest of the model lives on (the first non-offloaded parameter's), read at each use,
    so Lightning or ``.to()`` moving the model is followed. ``hidden()`` keeps the offloaded tensors out of a
    whole-model ``.to(device)`` (wan_train.training.module uses it), so they never visit the device all at once."""

    def __init__(self, dit: nn.Module, *, count: int, prefetch: int = 1) -> None:
        blocks = dit.blocks
        if not 0 < count <= len(blocks):
            raise ValueError(f"offload_blocks={count}: the DiT has {len(blocks)} blocks; offload 1..{len(blocks)}")
        if prefetch < 1:
            raise ValueError(f"offload prefetch={prefetch} must be >= 1")
        self.dit, self.num_blocks, self.first, self.prefetch = dit, len(blocks), len(blocks) - count, prefetch
        self.tensors: dict[int, list[torch.Tensor]] = {}
        self.host: dict[int, list[torch.Tensor]] = {}
        offloaded = set()
        for index in range(self.first, len(blocks)):
            frozen = [p for p in blocks[index].parameters() if not p.requires_grad] + list(blocks[index].buffers())
            self.tensors[index] = frozen
            self.host[index] = [_host_copy(t) for t in frozen]
            offloaded |= {id(t) for t in frozen}
            for tensor, host in zip(frozen, self.host[index], strict=True):
                tensor.data = host
        self._anchor = next(t for t in [*dit.parameters(), *dit.buffers()] if id(t) not in offloaded)
        self.pending: dict[int, tuple[list[torch.Tensor], object]] = {}
        self.resident: set[int] = set()
        self._stream = None

    # ------------------------------------------------------------------------------------------- residency
    def owns(self, index: int) -> bool:
        return index >= self.first

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def fetch(self, index: int) -> None:
        """Start copying block ``index`` to the device (side stream on CUDA); a no-op if it is there or coming."""
        if not self.owns(index) or index >= self.num_blocks or index in self.resident or index in self.pending:
            return
        device = self.device
        if device.type == "cuda":
            if self._stream is None or self._stream.device != device:
                self._stream = torch.cuda.Stream(device)
            self._stream.wait_stream(torch.cuda.current_stream(device))  # allocations freed by compute are reusable
            with torch.cuda.stream(self._stream):
                copies = [host.to(device, non_blocking=True) for host in self.host[index]]
                done = torch.cuda.Event()
                done.record(self._stream)
        else:  # the host is the device (CPU runs): copies all the same, so the path is the one a GPU takes
            copies, done = [host.to(device, copy=True) for host in self.host[index]], None
        self.pending[index] = (copies, done)

    def ensure(self, index: int) -> None:
        """Block ``index`` on the device and the current stream ordered after its copy."""
        if index in self.resident:
            return
        self.fetch(index)
        copies, done = self.pending.pop(index)
        if done is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(done)
            for copy in copies:  # allocated on the side stream, used on this one: not reused before it is done
                copy.record_stream(stream)
        for tensor, copy in zip(self.tensors[index], copies, strict=True):
            tensor.data = copy
        self.resident.add(index)

    def release(self, index: int) -> None:
        for tensor, host in zip(self.tensors[index], self.host[index], strict=True):
            tensor.data = host
        self.resident.discard(index)

    @contextmanager
    def hidden(self):
        """Inside: the offloaded tensors are empty host tensors, so a whole-model ``.to(...)`` skips them; after,
        they point at their host copies again (cast if the move changed their dtype)."""
        for ts in self.tensors.values():
            for tensor in ts:
                tensor.data = torch.empty(0, dtype=tensor.dtype)
        try:
            yield
        finally:
            self.pending.clear()
            self.resident.clear()
            for index, ts in self.tensors.items():
                self.host[index] = [host if host.dtype == t.dtype else _host_copy(host.to(t.dtype))
                                    for t, host in zip(ts, self.host[index], strict=True)]
                self.release(index)

    # ------------------------------------------------------------------------------------------------ run
    def run(self, index: int, block: nn.Module, x_BLD: torch.Tensor, e0: torch.Tensor, context: torch.Tensor,
            rope: tuple[torch.Tensor, torch.Tensor], *, attend: Callable[..., torch.Tensor],
            cross_mask: torch.Tensor | None = None) -> torch.Tensor:
        """block(x, e0, context, rope) with the block's weights copied in for the call (and its backward)."""
        if not torch.is_grad_enabled():
            self.ensure(index)
            self.fetch(index + 1)
            try:
                return block(x_BLD, e0, context, rope, attend=attend, cross_mask=cross_mask)
            finally:
                self.release(index)
        # a tensor that requires grad among the inputs, so backward runs even when no input does (LoRA in block 0)
        anchor = torch.empty(0, device=x_BLD.device, requires_grad=True)
        return _OffloadedBlock.apply(self, index, block, (attend, cross_mask), anchor, x_BLD, e0, context, *rope)


class _OffloadedBlock(torch.autograd.Function):
    """A checkpointed block whose weights are present only inside this function's forward and backward. The RNG
    and autocast state of the forward are restored for the recompute (peft's LoRA dropout draws again the same)."""

    @staticmethod
    def forward(ctx, offload: BlockOffload, index: int, block: nn.Module, extra, anchor, x, e0, context, *rope):
        # extra: (attend, cross_mask), passed through to the block untouched
        ctx.offload, ctx.index, ctx.block, ctx.extra = offload, index, block, extra
        ctx.rng = _rng_state(x.device)
        ctx.autocast = _autocast_state(x.device)
        ctx.save_for_backward(x, e0, context, *rope)
        offload.ensure(index)
        for ahead in range(index + 1, index + 1 + offload.prefetch):
            offload.fetch(ahead)
        out = block(x, e0, context, tuple(rope), attend=extra[0], cross_mask=extra[1])
        if index != offload.num_blocks - 1:  # the last block is the first one backward needs: it stays
            offload.release(index)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        offload, index = ctx.offload, ctx.index
        x, e0, context, *rope = ctx.saved_tensors
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in (x, e0, context)]
        offload.ensure(index)
        for behind in range(index - 1, index - 1 - offload.prefetch, -1):
            offload.fetch(behind)
        device_type = x.device.type
        with torch.random.fork_rng(devices=[x.device] if device_type == "cuda" else [], device_type=device_type):
            _set_rng_state(x.device, ctx.rng)
            with torch.enable_grad(), torch.autocast(device_type, **ctx.autocast):
                out = ctx.block(*inputs, tuple(rope), attend=ctx.extra[0], cross_mask=ctx.extra[1])
            if out.requires_grad:  # False only if nothing in or before the block trains
                torch.autograd.backward(out, grad_out)
        offload.release(index)
        return (None, None, None, None, None, *(t.grad for t in inputs), *(None for _ in rope))


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    host = tensor.detach().to("cpu", copy=True)
    return host.pin_memory() if torch.cuda.is_available() else host


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(device: torch.device, state: tuple) -> None:
    torch.set_rng_state(state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)


def _autocast_state(device: torch.device) -> dict:
    return {"enabled": torch.is_autocast_enabled(device.type), "dtype": torch.get_autocast_dtype(device.type)}


class ActivationOffload:
    """Saved tensors of at least ``min_bytes`` on a device of ``sources`` wait in (pinned) host memory until
    backward; a tensor saved several times in one forward is copied once. One instance per forward."""

    def __init__(self, *, min_bytes: int = 1 << 20, sources: tuple[str, ...] = ("cuda",)) -> None:
        self.min_bytes, self.sources = min_bytes, sources
        self._copies: dict[tuple, tuple] = {}  # -> (weakref to the storage's owner, host copy, device)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)

    def pack(self, tensor: torch.Tensor):
        if tensor.device.type not in self.sources or tensor.numel() * tensor.element_size() < self.min_bytes:
            return tensor
        # a view (the text tokens sliced from the context in every block) is a new tensor each time: key it by the
        # tensor that owns the storage, alive while the view is, plus where the view sits in it
        base = tensor if tensor._base is None else tensor._base
        key = (id(base), tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor._version)
        entry = self._copies.get(key)
        if entry is None or entry[0]() is not base:
            # same strides as the original (a transposed view stays one), so backward's kernels round alike
            host = torch.empty_like(tensor, device="cpu", pin_memory=torch.cuda.is_available())
            host.copy_(tensor, non_blocking=tensor.device.type == "cuda")
            entry = (weakref.ref(base, lambda _, key=key: self._copies.pop(key, None)), host, tensor.device)
            self._copies[key] = entry
        return entry[1], entry[2]

    @staticmethod
    def unpack(packed):
        if isinstance(packed, torch.Tensor):
            return packed
        host, device = packed
        return host.to(device, non_blocking=True)

    def __enter__(self) -> ActivationOffload:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._copies = {}
        self._hooks.__exit__(*exc)
