"""Base class of amortized halting guides: ``q(z_b | x) = ∏_{l<L} q(z_b^l | h_b^l(u^l))``.

The guide is a :class:`~pyro.poutine.guide.GuideMessenger`: it runs *inside* the model, so when the model
reaches the halting site ``z_b`` the guide reads the activations ``u^1..u^{L-1}`` the model has just computed
(deterministic sites ``u_{b}_{l}``) and returns ``q(z_b | x)``. The backbone runs once per step and BatchNorm
statistics update once.

Write a new guide by subclassing and implementing :meth:`HaltingGuide.posterior`::

    class KumaraswamyGuide(HaltingGuide):
        def posterior(self, logits):                  # logits: [B, L-1]
            a = torch.nn.functional.softplus(logits) + 1e-3
            return dist.Kumaraswamy(a, torch.ones_like(a)).to_event(1)

``halting_logits`` (the heads) can be overridden as well, e.g. for richer head inputs.

**Spatial models** (``model.spatial_halting``, e.g. :func:`~pact_pyro.models.spatial_pact_resnet`) sample
one site per unit, ``z_{b}_{l}`` of shape ``[B, H_b, W_b]``: the same guide then builds SACT's spatial heads
(:class:`~pact_pyro.nn.SpatialHaltingHead`, logits ``[B, H, W]``) and calls :meth:`HaltingGuide.posterior`
on them — the last dimension is its event dimension as always, and the guide adds the row dimension ``H`` to
the event (``q(z_b^l | x) = ∏_{ij} q(z_b^l(i, j) | ũ_b^l)``, batch ``[B]``, event ``[H, W]``). A
``posterior`` written for ``[B, L-1]`` logits therefore works unchanged.
"""

from __future__ import annotations

import itertools
import math
from abc import abstractmethod

import pyro
import torch
from pyro.distributions import TorchDistribution
from pyro.nn import PyroModule
from pyro.poutine.guide import GuideMessenger
from torch import nn

from pact_pyro.nn import HaltingHead, SpatialHaltingHead
from pact_pyro.relaxed import check_temperature
from pact_pyro.sites import activation_site, parse_halting_site, parse_unit_halting_site

__all__ = ["HaltingGuide"]

_uid = itertools.count()


class _GuideMeta(type(GuideMessenger), type(PyroModule)):
    pass


class HaltingGuide(GuideMessenger, PyroModule, metaclass=_GuideMeta):
    """Amortized guide with one SACT halting head per unit ``l < L`` of each block.

    :param model: a PACT model exposing ``model``, ``units_per_block`` and ``block_channels`` (and
        ``spatial_halting = True`` for per-position halting: spatial heads).
    :param temperature: Concrete temperature ``λ > 0`` (a warning below 0.1).
    :param bias_init: initial halting-logit bias (SACT: -3, so ``h ≈ 0.047`` and nearly every unit runs).
    """

    def __init__(self, model, temperature: float = 2 / 3, bias_init: float = -3.0) -> None:
        for attr in ("model", "units_per_block", "block_channels"):
            if not hasattr(model, attr):
                raise TypeError(f"model must be a PACT model with .{attr}, got {type(model).__name__}")
        super().__init__(model.model)
        self.temperature = check_temperature(temperature)
        self.bias_init = float(bias_init)
        if not math.isfinite(self.bias_init):
            raise ValueError(f"bias_init must be a finite halting logit, got {bias_init!r}")
        self.spatial = bool(getattr(model, "spatial_halting", False))
        self.heads = nn.ModuleList(
            nn.ModuleList(self.make_head(c) for _ in range(L - 1))
            for c, L in zip(model.block_channels, model.units_per_block, strict=True)
        )
        self.units_per_block = list(model.units_per_block)
        self.pyro_id = f"guide{next(_uid)}"

    def make_head(self, channels: int) -> nn.Module:
        """A fresh halting head for a block of ``channels`` channels: SACT's (spatial, for a spatial model),
        logit bias ``bias_init``."""
        return (SpatialHaltingHead if self.spatial else HaltingHead)(channels, self.bias_init)

    def halting_logits(self, block: int, unit: int, u: torch.Tensor) -> torch.Tensor:
        """``logit h_b^{l}`` from ``u^{l}`` (``unit = l - 1``, 0-based): ``[B, C, H, W] → [B]``
        (``[B, H, W]`` for spatial heads)."""
        return self.heads[block][unit](u)

    @abstractmethod
    def posterior(self, logits: torch.Tensor) -> TorchDistribution:
        """``q(z_b | x)`` from halting logits ``[B, L-1]``: batch shape ``[B]``, event shape ``[L-1]``."""

    def get_posterior(self, name: str, prior: TorchDistribution) -> TorchDistribution:
        b = parse_halting_site(name)
        unit = parse_unit_halting_site(name)
        if b is None and unit is None:  # e.g. an unobserved y: sample it from the model
            return prior
        if unit is not None:  # one unit's halting values per position: logits [B, H, W]
            b, l = unit
            pyro.module(f"{self.pyro_id}_{b}", self.heads[b])
            logits = self.halting_logits(b, l, self._activation(b, l))
            return self.posterior(logits).to_event(logits.dim() - 2)
        pyro.module(f"{self.pyro_id}_{b}", self.heads[b])
        L = self.units_per_block[b]
        logits = torch.stack([self.halting_logits(b, l, self._activation(b, l)) for l in range(L - 1)], -1)
        return self.posterior(logits)

    def _activation(self, b: int, l: int) -> torch.Tensor:
        u = self.upstream_value(activation_site(b, l))
        if self.training and u.shape[0] < 2:
            raise ValueError(
                "training needs batches of >= 2 examples (the halting heads use BatchNorm over the batch), "
                "got 1; call .eval() on model and guide to score single examples"
            )
        return u

    def config(self) -> dict:
        return {"name": getattr(self, "name", type(self).__name__), "temperature": self.temperature}
