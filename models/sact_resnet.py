"""SACT-ResNet (Figurnov et al. 2017), the baseline of spatial PACT: ACT per position, as a Pyro program.

In block ``b`` unit 1 runs everywhere; after unit ``l < L`` the spatial head gives ``h^l(i, j)`` and the
float32 running sum ``S_l(i, j)``. A position whose ``S_l ≥ 1 - ε`` is *finished*: the residuals of later
units are not added there (SACT's ``residual_mask``, a stop-gradient 0/1 map), so its features stay frozen
while its neighbours keep reading them. :func:`~pact_pyro.halting.act_halting` on ``h [B, H, W, L-1]``
gives, per position, ``N``, the weights ``p^l`` and the ponder cost ``ρ = N + R``; the block outputs
``Σ_l p^l ũ^l`` and ``pyro.factor("ponder_{b}", -τ mean_ij ρ(i, j))`` adds the cost averaged over positions,
as SACT does (``τ`` on the scale of SACT's and of spatial PACT's per-position prior). Test time:
:func:`~pact_pyro.spatial_evaluate.sact_evaluate` (deterministic, the same rule, real sparse early exit).
"""

from __future__ import annotations

import pyro
import torch
from torch import nn

from pact_pyro.flops import FlopTable
from pact_pyro.halting import ACT_EPS, act_halting
from pact_pyro.nn import ResNetBackbone, SpatialHaltingHead, resnet_units_per_block
from pact_pyro.sites import units_map_site, units_site
from pact_pyro.spatial_evaluate import sact_evaluate
from pact_pyro.threshold import ThresholdResult

from .act_resnet import ACTResNet, ponder_site

__all__ = ["SACTResNet", "sact_resnet"]


class SACTResNet(ACTResNet):
    """SACT over a :class:`~pact_pyro.nn.ResNetBackbone` with one :class:`~pact_pyro.nn.SpatialHaltingHead`
    per unit ``l < L_b`` (``.heads[b][l]``, logits ``[B, H, W]``).

    :param tau: ponder-cost weight ``τ ≥ 0`` on the mean over positions. :param eps: ACT's ``ε``.
    :param bias_init: initial halting-logit bias (-3).

    Sites per block: ``units_map_{b}`` (``N(i, j)``, ``[B, H, W]``), ``units_{b}`` (its mean over positions),
    ``ponder_{b}`` (the factor ``-τ mean_ij ρ``, scaled by ``prior_weight``).
    """

    spatial_halting = True
    head_type = SpatialHaltingHead

    def _block(self, b: int, block: nn.ModuleList, u: torch.Tensor) -> torch.Tensor:
        L = len(block)
        u = block[0](u)
        states, hs = [u], []
        thresh = torch.tensor(1.0 - self.eps, dtype=torch.float32)
        s = torch.zeros(u.shape[:1] + u.shape[2:], dtype=torch.float32, device=u.device)
        for l in range(1, L):
            h = torch.sigmoid(self.heads[b][l - 1](u))  # h^l(i, j), [B, H, W]
            hs.append(h)
            s = s + h.detach().to(torch.float32)  # S_l, as act_halting sums it
            running = (s < thresh).unsqueeze(1).to(u.dtype)  # SACT's residual mask for unit l + 1
            u = u + running * block[l].residual(u)
            states.append(u)
        h = torch.stack(hs, -1) if hs else u.new_zeros(*s.shape, 0)
        r = act_halting(h, self.eps)  # per position: units, weights [B, H, W, L], ponder cost
        out = torch.einsum("bhwl,blchw->bchw", r.weights, torch.stack(states, 1))
        pyro.deterministic(units_map_site(b), r.units.to(u.dtype), event_dim=2)
        pyro.deterministic(units_site(b), r.units.to(u.dtype).mean((-2, -1)))
        pyro.factor(ponder_site(b), -self.tau * self.prior_weight * r.ponder_cost.mean((-2, -1)))
        return out

    def evaluate_batch(
        self,
        x: torch.Tensor,
        threshold: float = 0.5,
        mode: str = "threshold",
        generator: torch.Generator | None = None,
        flop_table: FlopTable | None = None,
        chunk_size: int | None = None,
    ) -> ThresholdResult:
        """Deterministic SACT evaluation (:func:`~pact_pyro.spatial_evaluate.sact_evaluate`); ``threshold``
        is ignored (the rule is ``S ≥ 1 - ε``), ``mode`` must be ``"threshold"``."""
        if mode != "threshold":
            raise ValueError(f"mode must be 'threshold' for a SACT model (deterministic), got {mode!r}")
        return sact_evaluate(self.backbone, self.heads, x, self.eps, flop_table, chunk_size)


def sact_resnet(
    depth: int,
    num_classes: int = 10,
    in_channels: int = 3,
    tau: float = 0.01,
    eps: float = ACT_EPS,
    widths: tuple[int, int, int] = (16, 32, 64),
) -> SACTResNet:
    """SACT on the pre-activation CIFAR ResNet of depth ``6n + 2`` (3 blocks of ``n`` units)."""
    n = resnet_units_per_block(depth)
    return SACTResNet(ResNetBackbone([n, n, n], widths, in_channels, num_classes), tau, eps)
