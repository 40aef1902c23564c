"""Exponential moving average of the trainable weights (Polyak averaging): ema <- d * ema + (1 - d) * w after
every optimizer step, kept in float32; it is part of the checkpoint and exported beside the trained weights.
Under FSDP each rank averages its own shard; checkpoints hold the whole tensors (gathered), so they resume at any
world size."""

import lightning as L
import torch

from wan_train.parallel.fsdp import full_tensor, like


class EMA(L.Callback):
    def __init__(self, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"trainer.ema_decay={decay}: must be in (0, 1)")
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {}

    def _params(self, module):
        return {n: p for n, p in module.dit.named_parameters() if p.requires_grad}

    def on_train_start(self, trainer, module):  # after any restore (sharded strategies restore after setup)
        for name, p in self._params(module).items():
            if name not in self.shadow:
                self.shadow[name] = p.detach().float().clone()
            self.shadow[name] = like(self.shadow[name], p).to(p.device)

    @torch.no_grad()
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        params = self._params(module)
        names = list(self.shadow)
        torch._foreach_lerp_([self.shadow[n] for n in names], [params[n].detach().float() for n in names],
                             1.0 - self.decay)

    def full_shadow(self) -> dict[str, torch.Tensor]:
        """The averaged weights as whole CPU tensors (under FSDP a collective: every rank calls it)."""
        return {n: full_tensor(t).cpu() for n, t in self.shadow.items()}

    def state_dict(self):
        return {"decay": self.decay, "shadow": self.full_shadow()}

    def load_state_dict(self, state):
        self.decay, self.shadow = state["decay"], dict(state["shadow"])

    @torch.no_grad()
    def export(self, model: torch.nn.Module, folder, *, state_dict: dict | None = None,
               shadow: dict[str, torch.Tensor] | None = None) -> None:
        """Save `model` (models.save_model's layout) with the EMA weights in place of the trained ones. `state_dict` and
        `shadow`: the whole weights and averages when FSDP shards them (gathered by the caller on every rank)."""
        from wan_train.models import save_model

        state = dict(model.state_dict() if state_dict is None else state_dict)
        shadow = self.full_shadow() if shadow is None else shadow
        state.update({n: t.to(state[n].dtype) for n, t in shadow.items()})
        save_model(model, folder, state_dict=state)
