"""Parallelism across ranks: the run's strategy (DDP, FSDP, DeepSpeed; FSDP2 for the DiT in ``fsdp.py``), launch
checks, and Ulysses sequence parallelism for the DiT (one sample's tokens shared by a process group,
``sequence.py``).

Imports ``wan_train.models`` at most; models never imports this package (the DiT calls the object set as
``WanDiT.sequence_parallel``)."""

from wan_train.parallel.sequence import (
    SequenceParallel, all_to_all, gather_sequence, sequence_groups, split_sequence, ulysses_attention,
)

__all__ = ["SequenceParallel", "all_to_all", "gather_sequence", "sequence_groups", "split_sequence",
           "ulysses_attention"]
