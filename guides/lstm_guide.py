"""Halting guides for recurrent PACT models: ``q(z_t | x) = ∏_{n<M} q(z_t^n | h(s_t^n))``.

Same :class:`HaltingGuide` machinery as the ResNet (a ``GuideMessenger`` that runs inside the model, one
pass), with one halting head shared by every ponder step ``n`` and input step ``t`` (Graves' single
sigmoidal halting unit): at site ``ponder_z_{t}`` it reads ``[h, c]`` of ``s_t^1..s_t^{M-1}`` from the
deterministic site ``ponder_s_{t}`` (``[B, M-1, 2H]``) and returns ``q`` with batch ``[B]``, event ``[M-1]``.
The posterior family comes from the ResNet guides (relaxed Concrete or straight-through).
"""

from __future__ import annotations

from types import SimpleNamespace

import pyro
import torch
from pyro.distributions import TorchDistribution

from pact_pyro.nn.lstm import LSTMHaltingHead

from .halting_guide import HaltingGuide
from .relaxed_bernoulli import RelaxedBernoulliGuide, StraightThroughGuide

__all__ = ["LSTMHaltingGuide", "LSTMRelaxedBernoulliGuide", "LSTMStraightThroughGuide", "get_lstm_guide"]


class LSTMHaltingGuide(HaltingGuide):
    """Base of recurrent halting guides; ``model`` needs ``.model`` and ``.hidden_size``.

    ``.heads`` (the ResNet per-block heads) is empty; the shared head is ``.head``.
    """

    def __init__(self, model, temperature: float = 2 / 3, bias_init: float = -3.0) -> None:
        for attr in ("model", "hidden_size"):
            if not hasattr(model, attr):
                raise TypeError(
                    f"model must be a recurrent PACT model with .{attr}, got {type(model).__name__}"
                )
        # a model with no ResNet blocks: the base builds no per-block heads
        super().__init__(
            SimpleNamespace(model=model.model, units_per_block=[], block_channels=[]), temperature, bias_init
        )
        self.head = LSTMHaltingHead(model.hidden_size, self.bias_init)

    def ponder_logits(self, s: torch.Tensor) -> torch.Tensor:
        """``logit h`` of pondered states ``[..., 2H] → [...]``."""
        return self.head(s)

    def get_posterior(self, name: str, prior: TorchDistribution) -> TorchDistribution:
        from pact_pyro.sites import parse_ponder_site, ponder_state_site

        t = parse_ponder_site(name)
        if t is None:  # e.g. an unobserved y: sample it from the model
            return prior
        pyro.module(self.pyro_id, self.head)
        return self.posterior(self.ponder_logits(self.upstream_value(ponder_state_site(t))))  # [B, M-1]


class LSTMRelaxedBernoulliGuide(LSTMHaltingGuide, RelaxedBernoulliGuide):
    """Relaxed (Concrete) halting values; the default."""


class LSTMStraightThroughGuide(LSTMHaltingGuide, StraightThroughGuide):
    """Hard halting values forward, Concrete gradients backward."""


LSTM_GUIDES = {"relaxed": LSTMRelaxedBernoulliGuide, "straight-through": LSTMStraightThroughGuide}


def get_lstm_guide(name: str, model, **kwargs) -> LSTMHaltingGuide:
    """Build a recurrent guide by name: ``relaxed`` or ``straight-through``."""
    if name not in LSTM_GUIDES:
        raise ValueError(f"guide must be one of {sorted(LSTM_GUIDES)}, got {name!r}")
    return LSTM_GUIDES[name](model, **kwargs)
