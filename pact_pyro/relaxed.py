"""Concrete (relaxed Bernoulli) distributions for halting values, sampled in logit space.

``z̃ = σ((logit h + log U - log(1 - U)) / λ)``, ``U ~ Uniform(0, 1)`` (Maddison et al. 2017; Jang et al. 2017).

Why not ``torch.distributions.RelaxedBernoulli`` as is: its sampler clamps the *probabilities*, so
``∂z̃/∂logit`` is exactly 0 once ``|logit h| ≳ 15.9`` and a saturated halting head never recovers
(measured-facts.md). Here the logits enter the sample directly; only the sample itself is clamped to
``[tiny, 1 - eps]``.
"""

from __future__ import annotations

import warnings

import pyro.distributions as dist
import torch
from torch.distributions.utils import clamp_probs

__all__ = ["RelaxedBernoulli", "RelaxedBernoulliStraightThrough", "check_temperature", "LOW_TEMPERATURE"]

#: below this Concrete temperature most halting gradients are exactly zero (a warning is raised)
LOW_TEMPERATURE = 0.1
_LOG_PROB_LOGIT_CLAMP = 15.0


def check_temperature(temperature: float) -> float:
    """Validate ``λ > 0``; warn below 0.1, where most halting gradients vanish (measured-facts.md)."""
    t = float(temperature)
    if not t > 0 or t != t or t == float("inf"):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if t < LOW_TEMPERATURE:
        warnings.warn(
            f"temperature={t} < {LOW_TEMPERATURE}: most relaxed halting gradients are exactly zero at such "
            "temperatures (high variance); use >= 0.3 or anneal",
            RuntimeWarning,
            stacklevel=3,
        )
    return t


class RelaxedBernoulli(dist.RelaxedBernoulli):
    """Binary Concrete with temperature ``λ`` whose reparameterised sample is computed from the logits."""

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        logits = self.logits.expand(shape)
        u = clamp_probs(torch.rand(shape, dtype=logits.dtype, device=logits.device))
        return clamp_probs(torch.sigmoid((logits + u.log() - (-u).log1p()) / self.temperature))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Concrete density with logits clamped to ±15 (finite for any head output); not used by MAP."""
        logits = self.logits.clamp(-_LOG_PROB_LOGIT_CLAMP, _LOG_PROB_LOGIT_CLAMP)
        return dist.RelaxedBernoulli(self.temperature, logits=logits, validate_args=False).log_prob(value)


class RelaxedBernoulliStraightThrough(RelaxedBernoulli):
    """Hard forward, relaxed backward: the sample is ``1[z̃ > 1/2]`` (a Bernoulli(h) draw for any λ) while
    gradients flow through ``z̃``. ``log_prob`` is the Concrete density of the soft sample is not available
    from the hard value, so it is not defined (the MAP objective never needs it)."""

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        soft = super().rsample(sample_shape)
        hard = (soft > 0.5).to(soft.dtype)
        return hard + (soft - soft.detach())

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "RelaxedBernoulliStraightThrough.log_prob is undefined at hard values; use MAPObjective, "
            "which scores only the model"
        )
