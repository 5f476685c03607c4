"""Concrete guides: ``z_b^l ~ RelaxedBernoulli(λ, logits = logit h_b^l)``, independent given ``x``.

The induced ``q(N = n | x) = h^n ∏_{i<n}(1 - h^i)`` at hard samples. ``StraightThroughGuide`` uses hard
``z ∈ {0, 1}`` forward (the model then runs exactly ``u^N``) and the Concrete gradient backward.
"""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution

from pact_pyro.relaxed import RelaxedBernoulli, RelaxedBernoulliStraightThrough

from .halting_guide import HaltingGuide

__all__ = ["RelaxedBernoulliGuide", "StraightThroughGuide"]


class RelaxedBernoulliGuide(HaltingGuide):
    """Relaxed (Concrete) halting values in ``(0, 1)``; the default guide."""

    name = "relaxed"

    def posterior(self, logits: torch.Tensor) -> TorchDistribution:
        return RelaxedBernoulli(
            torch.as_tensor(self.temperature, dtype=logits.dtype), logits=logits
        ).to_event(1)


class StraightThroughGuide(HaltingGuide):
    """Hard halting values forward, Concrete gradients backward."""

    name = "straight-through"

    def posterior(self, logits: torch.Tensor) -> TorchDistribution:
        t = torch.as_tensor(self.temperature, dtype=logits.dtype)
        return RelaxedBernoulliStraightThrough(t, logits=logits).to_event(1)
