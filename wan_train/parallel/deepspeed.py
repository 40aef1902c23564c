"""DeepSpeed ZeRO checkpoints read without running code: resume (strategy=deepspeed_*) and consolidation.

DeepSpeed's readers (its checkpoint engine, zero_to_fp32, Lightning's convert_zero_checkpoint_to_fp32_state_dict)
call `torch.load(..., weights_only=False)`. Rather than re-implementing ZeRO's shard merge, they run inside
weights_only_loads (wan_train.models.checkpoint.pickles): each of their torch.load calls becomes a weights-only
load of the same file, so a crafted shard is refused, naming it, before anything in it runs, and no file is read
twice (a check followed by DeepSpeed's own unrestricted read would leave the file swappable in between).

The shards hold, besides tensors and plain values, a few DeepSpeed classes (pickled_types: as listed by
torch.serialization.get_unsafe_globals_in_checkpoint on real ZeRO-2/3 checkpoints, fp32 and bf16, plus fp16's dynamic
loss scaler): plain data objects whose unpickling sets attributes and calls nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import DeepSpeedStrategy as LightningDeepSpeedStrategy

from wan_train.models import CheckpointError
from wan_train.models.checkpoint.pickles import weights_only_loads

LATEST = "latest"  # DeepSpeed writes the tag (sub-folder name) of its newest save here


def pickled_types() -> tuple[type, ...]:
    """The DeepSpeed classes a ZeRO checkpoint's files hold (loss scaler, ZeRO stage, parameter slice map)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address


def deepspeed_tag(path: Path) -> str:
    """The sub-folder of the ZeRO checkpoint folder `path` that its `latest` names: one folder inside `path`,
    never a path elsewhere."""
    latest = Path(path) / LATEST
    if not latest.is_file():
        raise CheckpointError(f"{latest}: missing (DeepSpeed writes the tag of its newest save there)")
    tag = latest.read_text().strip()
    if not tag or Path(tag).name != tag or not (Path(path) / tag).is_dir():
        raise CheckpointError(f"{latest}: names {tag!r}, which is not a sub-folder of {path}")
    return tag


class DeepSpeedStrategy(LightningDeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy whose resume reads every shard weights-only (whatever `weights_only`
    Lightning passes)."""

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        if Path(checkpoint_path).is_dir():
            deepspeed_tag(Path(checkpoint_path))  # DeepSpeed reads `latest` itself: a sub-folder, nothing elsewhere
        with weights_only_loads(allow=pickled_types()):
            return super().load_checkpoint(checkpoint_path, weights_only=True)
