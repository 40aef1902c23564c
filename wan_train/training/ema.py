"""Exponential moving average of the trainable weights (Polyak averaging): ema <- d * ema + (1 - d) * w after
every optimizer step, kept in float32; it is part of the checkpoint and exported beside the trained weights."""

import lightning as L
import torch


class EMA(L.Callback):
    def __init__(self, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"trainer.ema_decay={decay}: must be in (0, 1)")
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {}

    def _params(self, module):
        return {n: p for n, p in module.dit.named_parameters() if p.requires_grad}

    def on_fit_start(self, trainer, module):
        for name, p in self._params(module).items():
            if name not in self.shadow:
                self.shadow[name] = p.detach().float().clone()
            self.shadow[name] = self.shadow[name].to(p.device)

    @torch.no_grad()
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        params = self._params(module)
        names = list(self.shadow)
        torch._foreach_lerp_([self.shadow[n] for n in names], [params[n].detach().float() for n in names],
                             1.0 - self.decay)

    def state_dict(self):
        return {"decay": self.decay, "shadow": {n: t.cpu() for n, t in self.shadow.items()}}

    def load_state_dict(self, state):
        self.decay, self.shadow = state["decay"], dict(state["shadow"])

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for name, p in model.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name].to(p.dtype))

    @torch.no_grad()
    def export(self, model: torch.nn.Module, folder) -> None:
        """Save `model` with the EMA weights in the official layout, leaving the model's own weights as they were."""
        from wan_train.models import save_dit

        trained = {n: p.detach().clone() for n, p in model.named_parameters() if n in self.shadow}
        self.copy_to(model)
        try:
            save_dit(model, folder, layout="official")
        finally:
            for name, p in model.named_parameters():
                if name in trained:
                    p.copy_(trained[name])
