"""Exponential moving average (EMA) of a module's trainable parameters.

Generative models are exported with EMA weights because they sample far better than the raw,
noisy last iterate. The shadow copy is kept in float32 whatever the training precision, and its
state (shadow tensors + update count) is saved with safetensors so a resumed run continues the
average bit for bit.

Decay schedule: ``decay_t = decay * min(1, t / warmup_steps)`` for the t-th update (t = 0, 1, ...),
so the average starts as a copy of the weights and forgets the random initialisation quickly
instead of being dragged by it for ~1/(1-decay) steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from napari_medgen.errors import CheckpointError, InvalidInputError


class ExponentialMovingAverage:
    """Shadow parameters updated as ``shadow = d * shadow + (1 - d) * param`` after each optimizer step."""

    def __init__(self, module: nn.Module, decay: float, warmup_steps: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise InvalidInputError(f"EMA decay must be in [0, 1); got {decay}.")
        if warmup_steps < 0:
            raise InvalidInputError(f"EMA warmup_steps must be >= 0; got {warmup_steps}.")
        self.decay = float(decay)
        self.warmup_steps = int(warmup_steps)
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().to(torch.float32).clone() for name, p in module.named_parameters() if p.requires_grad
        }

    def current_decay(self) -> float:
        """The decay the next `update` will use."""
        if self.warmup_steps == 0:
            return self.decay
        return self.decay * min(1.0, self.num_updates / self.warmup_steps)

    def _params(self, module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        params = dict(module.named_parameters())
        missing = [name for name in self.shadow if name not in params]
        if missing:
            raise InvalidInputError(f"The module lacks parameters the EMA tracks: {missing[:5]}.")
        for name in self.shadow:
            yield name, params[name]

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Fold the module's current parameters into the average."""
        decay = self.current_decay()
        for name, param in self._params(module):
            shadow = self.shadow[name]
            if shadow.device != param.device:
                shadow = shadow.to(param.device)
                self.shadow[name] = shadow
            shadow.lerp_(param.detach().to(torch.float32), 1.0 - decay)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the averaged values into ``module``'s parameters (in their own dtype/device)."""
        for name, param in self._params(module):
            param.copy_(self.shadow[name].to(device=param.device, dtype=param.dtype))

    @contextmanager
    def applied_to(self, module: nn.Module) -> Iterator[nn.Module]:
        """Temporarily swap the EMA weights into ``module`` (e.g. for validation), then restore them."""
        backup = {name: p.detach().clone() for name, p in self._params(module)}
        self.copy_to(module)
        try:
            yield module
        finally:
            with torch.no_grad():
                for name, param in self._params(module):
                    param.copy_(backup[name])

    # ---- persistence ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """CPU tensors: the shadow values plus ``__num_updates__`` (a 0-d int64 tensor)."""
        state = {name: t.detach().to("cpu").contiguous() for name, t in self.shadow.items()}
        state["__num_updates__"] = torch.tensor(self.num_updates, dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a `state_dict`; keys must match the tracked parameters exactly."""
        state = dict(state)
        count = state.pop("__num_updates__", None)
        if count is None or set(state) != set(self.shadow):
            extra = sorted(set(state) - set(self.shadow))[:5]
            lacking = sorted(set(self.shadow) - set(state))[:5]
            raise CheckpointError(
                f"EMA state does not match the model (unexpected {extra}, missing {lacking}); the checkpoint "
                "belongs to a different model configuration."
            )
        for name, value in state.items():
            if tuple(value.shape) != tuple(self.shadow[name].shape):
                raise CheckpointError(f"EMA state for {name} has shape {tuple(value.shape)}, expected "
                                      f"{tuple(self.shadow[name].shape)}; the checkpoint is for another model.")
            self.shadow[name] = value.to(device=self.shadow[name].device, dtype=torch.float32).clone()
        self.num_updates = int(count.item())
