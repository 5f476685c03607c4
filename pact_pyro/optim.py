"""A ``pyro.optim.PyroOptim`` that drives *one* torch optimizer over every parameter SVI reports.

Pyro's stock wrappers (``pyro.optim.Adam`` etc.) build one torch optimizer per parameter tensor and step them
one by one; for a ResNet-32 with its halting heads (~140 tensors) that per-tensor Python overhead costs tens
of milliseconds per SVI step, as much as PACT's extra compute (benchmarks/train_step.py). Here a single
optimizer updates all tensors (parameters first seen later join as a new parameter group), exactly like a
hand-written loop, and gradients are released after the step (``grad = None``), so SVI's ``zero_grads``
does not allocate fresh zero tensors and the next backward writes gradients instead of adding to zeros.

Semantics match the per-tensor wrappers: only the parameters SVI passes in a step are updated (others' stale
gradients are dropped first); the update rule is the torch optimizer's own.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from pyro.optim import PyroOptim

__all__ = ["SingleOptimizer"]


class SingleOptimizer(PyroOptim):
    """``SVI(model, guide, SingleOptimizer(torch.optim.Adam, {"lr": 1e-3}), loss=MAPObjective())``.

    :param optimizer: a ``torch.optim.Optimizer`` class. :param optim_args: its keyword arguments (a dict).
    """

    def __init__(self, optimizer: type[torch.optim.Optimizer], optim_args: dict | None = None) -> None:
        if not (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer class, got {optimizer!r}")
        optim_args = dict(optim_args or {})
        super().__init__(optimizer, optim_args)
        self.optimizer: torch.optim.Optimizer | None = None
        self._known: dict[int, torch.Tensor] = {}

    def __call__(self, params: Iterable[torch.Tensor], *args, **kwargs) -> None:
        params = list(params)
        new = [p for p in params if id(p) not in self._known]
        if new:
            if self.optimizer is None:
                self.optimizer = self.pt_optim_constructor(new, **self.pt_optim_args)
            else:
                self.optimizer.add_param_group({"params": new})
            self._known.update((id(p), p) for p in new)
        if len(params) != len(self._known):  # update only this step's parameters
            current = {id(p) for p in params}
            for k, p in self._known.items():
                if k not in current:
                    p.grad = None
        self.optimizer.step(*args, **kwargs)
        for p in params:
            p.grad = None

    def get_state(self) -> dict:
        return {} if self.optimizer is None else {"optimizer": self.optimizer.state_dict()}

    def set_state(self, state: dict) -> None:
        if state and self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
