"""A guide for models without latent variables (ACT-ResNet, plain ResNet).

It is a :class:`~pyro.poutine.guide.GuideMessenger` that runs the model once inside itself and proposes
nothing, so the same ``SVI(model.model, guide, optim, loss=MAPObjective())`` loop trains PACT and its
baselines: with no latents the MAP objective is ``-[log p(y | x) + Σ factors]`` per example.
"""

from __future__ import annotations

import itertools

from pyro.distributions import TorchDistribution
from pyro.nn import PyroModule
from pyro.poutine.guide import GuideMessenger

__all__ = ["EmptyGuide"]

_uid = itertools.count()


class _Meta(type(GuideMessenger), type(PyroModule)):
    pass


class EmptyGuide(GuideMessenger, PyroModule, metaclass=_Meta):
    """No-latent guide. ``get_posterior`` returns the model's own distribution (only reached by an
    unobserved ``y`` when the model is run for prediction).

    :param model: any object with a ``model(x, y)`` method.
    """

    name = "empty"

    def __init__(self, model) -> None:
        if not hasattr(model, "model"):
            raise TypeError(f"model must have a .model(x, y) method, got {type(model).__name__}")
        super().__init__(model.model)
        self.pyro_id = f"empty{next(_uid)}"

    def get_posterior(self, name: str, prior: TorchDistribution) -> TorchDistribution:
        return prior

    def config(self) -> dict:
        return {"name": self.name}
