"""Spatial PACT-ResNet: halting latents per example, block and *position* (SACT's halting, PACT's prior).

Block ``b`` at resolution ``H_b × W_b`` runs unit 1 everywhere (it may downsample). Then, for ``l = 1..L-1``,
at every position ``(i, j)``:

1. the guide's spatial head reads the state ``ũ^l`` (deterministic site ``u_{b}_{l-1}``) and proposes
   ``z^l(i, j)``; the model scores it with the prior's hazard chain
   ``log p(z^l | z^{<l}) = e_l [z^l log λ_l + (1 - z^l) log(1 - λ_l)]``
   (:class:`~pact_pyro.priors.HazardBernoulli`), site ``z_{b}_{l-1}`` of shape ``[B, H_b, W_b]``;
2. ``e_{l+1} = e_l (1 - z^l)`` and ``ũ^{l+1} = ũ^l + e_{l+1} ⊙ F_{l+1}(ũ^l)``: SACT's residual mask, relaxed.

The block returns ``ũ^L = ũ^1 + Σ_{l≥2} e_l ⊙ F_l(ũ^{l-1})`` — the non-spatial mixture
``Σ_l w_l u^l = u^1 + Σ_{l≥2} e_l F_l(u^{l-1})`` per position, the units reading the relaxed-frozen states.
At binary ``z`` a halted position keeps ``ũ^{N(i,j)}(i, j)`` (its residual is no longer added) while its
neighbours go on reading that frozen value: exactly SACT's semantics and what thresholding computes
(:func:`~pact_pyro.spatial_evaluate.spatial_threshold`).

Why one site per unit and not one ``z_b`` of shape ``[B, H, W, L-1]``: with frozen features the head of unit
``l`` reads ``ũ^l``, which depends on ``z^{<l}`` at the neighbouring positions, so the guide cannot propose a
block's halting values in one go. The chain is exact: ``Σ_l log p(z^l | z^{<l}) = Σ_l w_l(i, j) log p(N = l)``
for any ``z ∈ [0, 1]`` (the relaxed prior of the non-spatial model, per position; tested).

Batch and event dimensions: each site has batch shape ``[B]`` (the ``data`` plate) and event shape
``[H_b, W_b]``. Positions are not a plate: the label depends on all of them jointly and a position's features
depend on its neighbours' halting, so they are not conditionally independent. SACT averages the ponder cost
over positions; to keep ``τ`` on SACT's scale the block's log-prior is the *mean* over positions
(``poutine.scale`` by ``1 / (H_b W_b)``, times the τ warm-up weight ``prior_weight``).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import torch
from pyro import poutine

from pact_pyro.nn import ResNetBackbone, resnet_units_per_block
from pact_pyro.priors import UnitsPrior
from pact_pyro.sites import activation_site, unit_halting_site, units_map_site, units_site

from .pact_resnet import PACTResNet

__all__ = ["SpatialPACTResNet", "spatial_pact_resnet"]


class SpatialPACTResNet(PACTResNet):
    """PACT with a halting decision per position (see the module docstring).

    :param backbone: the ResNet (plain torch). :param prior: the per-position computation prior ``p(N)``,
        one for every block or one per block (default ``TruncatedGeometric(0.01)``).

    Sites per block ``b``: ``u_{b}_{l}`` (``ũ^{l+1}``, ``[B, C, H, W]``), ``z_{b}_{l}`` (``[B, H, W]``) for
    ``l < L_b - 1``, ``units_map_{b}`` (``Ñ(i, j) = Σ_l e_l(i, j)``, ``[B, H, W]``), ``units_{b}`` (its mean
    over positions, ``[B]``).
    """

    spatial_halting = True

    def _block(self, b: int, units: torch.nn.ModuleList, u: torch.Tensor) -> torch.Tensor:
        L = len(units)
        u = units[0](u)  # ũ^1 everywhere (unit 1 may downsample)
        if L == 1:
            return u
        B, _, H, W = u.shape
        prior = self.priors[b]
        weight = self.prior_weight / (H * W)
        e = u.new_ones(B, H, W)  # e_1
        count = e.clone()  # Σ_l e_l, the relaxed units map
        for l in range(1, L):
            pyro.deterministic(activation_site(b, l - 1), u, event_dim=3)  # ũ^l for head l
            # poutine.scale rejects 0 (the first step of a τ warm-up): mask the prior term out instead
            with poutine.scale(scale=weight) if weight > 0 else poutine.mask(mask=False):
                z = pyro.sample(unit_halting_site(b, l - 1), prior.hazard_site(l, L, e).to_event(2))
            e = e * (1 - z)  # e_{l+1}
            count = count + e
            u = u + e.unsqueeze(1) * units[l].residual(u)  # ũ^{l+1}: the residual only where still running
        pyro.deterministic(units_map_site(b), count, event_dim=2)
        pyro.deterministic(units_site(b), count.mean((-2, -1)))
        return u


def spatial_pact_resnet(
    depth: int,
    num_classes: int = 10,
    in_channels: int = 3,
    prior: UnitsPrior | Sequence[UnitsPrior] | None = None,
    widths: tuple[int, int, int] = (16, 32, 64),
) -> SpatialPACTResNet:
    """Spatial PACT on the pre-activation CIFAR ResNet of depth ``6n + 2`` (3 blocks of ``n`` units)."""
    n = resnet_units_per_block(depth)
    return SpatialPACTResNet(ResNetBackbone([n, n, n], widths, in_channels, num_classes), prior)
