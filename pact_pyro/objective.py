"""The MAP objective of PACT as a Pyro loss (pact-notes.md §2).

For any ``q``, ``max_z f(z) ≥ E_q f(z)``; PACT trains network weights and the guide by maximising

    J = Σ_i E_{q(z | x_i)} [ log p(y_i | x_i, z) + log p(z) ]

with one reparameterised sample per example. There is **no entropy term** (``Trace_ELBO`` would add
``-E_q log q`` and approximate the posterior instead of finding its mode), so ``q`` is driven towards a point
mass — which is what makes deterministic thresholding at test time reasonable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro import poutine
from pyro.poutine.guide import GuideMessenger
from pyro.poutine.trace_struct import Trace

from .sites import DATA_PLATE

__all__ = ["MAPObjective", "model_trace", "backward_once"]


def model_trace(model: Callable, guide: Callable, *args, **kwargs) -> Trace:
    """Run model and guide once and return the model trace with latents drawn from the guide.

    A :class:`~pyro.poutine.guide.GuideMessenger` runs the model once, inside itself (one backbone pass). Any
    other guide is traced and the model replayed against it (two passes; kept for comparison).
    """
    if isinstance(guide, GuideMessenger):
        guide(*args, **kwargs)
        trace, _ = guide.get_traces()
        return trace
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    return poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)


class MAPObjective:
    """``loss = -E_q[log p(y | x, z) + log p(z)]`` per example (divided by the size of plate ``"data"``).

    Usable as ``pyro.infer.SVI(model, guide, optim, loss=MAPObjective())``. Guide log-densities are never
    evaluated.
    """

    def __init__(self, plate: str = DATA_PLATE) -> None:
        if not isinstance(plate, str) or not plate:
            raise TypeError(f"plate must be the name (str) of the model's data plate, got {plate!r}")
        self.plate = plate

    def _batch_size(self, trace: Trace) -> int:
        for site in trace.nodes.values():
            for frame in site.get("cond_indep_stack", ()):
                if frame.name == self.plate:
                    return int(frame.size)
        raise ValueError(f"the model has no plate named {self.plate!r}; MAPObjective normalises per example")

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        trace = model_trace(model, guide, *args, **kwargs)
        return -trace.log_prob_sum() / self._batch_size(trace)

    def __call__(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        return self.differentiable_loss(model, guide, *args, **kwargs)


def backward_once(loss_fn: Callable) -> Callable:
    """A ``loss_and_grads`` for :class:`pyro.infer.SVI` that backpropagates ``loss_fn(model, guide, *args)``
    without ``retain_graph``. SVI's default for a loss callable retains the graph, which compiled backward
    graphs (``torch.compile``, donated buffers) refuse."""

    def loss_and_grads(model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        loss = loss_fn(model, guide, *args, **kwargs)
        loss.backward()
        return loss.detach()

    return loss_and_grads
