"""SACT's halting branches (pact-notes.md §1).

* non-spatial (:class:`HaltingHead`): ``h^l = σ(w · BN(avgpool(u^l)) + b)``, one logit per example;
  ``2·C`` FLOPs (the linear layer; pooling and BN are free);
* spatial (:class:`SpatialHaltingHead`): ``h^l(i, j) = σ(conv3x3(BN(u^l))(i, j) + w · BN(avgpool(u^l)) + b)``,
  one logit per position (the global term broadcast); ``2·9·C`` FLOPs per position plus ``2·C``.

The logit bias starts at ``-3`` (``σ(-3) ≈ 0.047``), so at initialisation almost every unit runs.
"""

from __future__ import annotations

import torch
from torch import nn

from .units import BN_EPS

__all__ = ["HaltingHead", "SpatialHaltingHead", "spatial_mean"]


class _SpatialMean(torch.autograd.Function):
    """``mean_hw(u)`` whose backward returns ``∂L/∂mean / (HW)`` *broadcast* (a stride-0 view) instead of
    autograd's materialised ``[B, C, H, W]`` division: the head's share of ``∂L/∂u`` is then added straight
    into the other gradients of ``u`` (one full-size tensor operation less per head and step)."""

    @staticmethod
    def forward(ctx, u: torch.Tensor) -> torch.Tensor:
        ctx.shape = u.shape
        return u.mean(dim=(2, 3))

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        B, C, H, W = ctx.shape
        return (g / (H * W)).reshape(B, C, 1, 1).expand(B, C, H, W)


def spatial_mean(u: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] → [B, C]``, the mean over ``H, W`` (the same values and gradients as
    ``u.mean(dim=(2, 3))``; cheaper backward)."""
    if u.dim() != 4:
        raise ValueError(f"u must have shape [B, C, H, W], got {tuple(u.shape)}")
    return _SpatialMean.apply(u)


class HaltingHead(nn.Module):
    """Halting logit of one unit: ``[B, C, H, W] → [B]``.

    :param channels: ``C``. :param bias_init: initial logit bias (SACT: -3).
    """

    def __init__(self, channels: int, bias_init: float = -3.0) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(channels, eps=BN_EPS)
        self.linear = nn.Linear(channels, 1)
        nn.init.constant_(self.linear.bias, bias_init)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.linear(self.bn(spatial_mean(u))).squeeze(-1)


class SpatialHaltingHead(nn.Module):
    """Halting logits of one unit, one per position (SACT's ``get_halting_proba_conv``):
    ``[B, C, H, W] → [B, H, W]``.

    ``logit(i, j) = conv3x3(BN(u))(i, j) + linear(BN(mean_hw(u)))``: a local term (one output channel,
    zero padding, bias ``bias_init``) and a global term without bias, broadcast over positions.

    :param channels: ``C``. :param bias_init: initial logit bias (SACT: -3).
    """

    def __init__(self, channels: int, bias_init: float = -3.0) -> None:
        super().__init__()
        self.local_bn = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.local_conv = nn.Conv2d(channels, 1, 3, padding=1, bias=True)
        nn.init.constant_(self.local_conv.bias, bias_init)
        self.global_bn = nn.BatchNorm1d(channels, eps=BN_EPS)
        self.global_linear = nn.Linear(channels, 1, bias=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        local = self.local_conv(self.local_bn(u)).squeeze(1)  # [B, H, W]
        glob = self.global_linear(self.global_bn(spatial_mean(u)))  # [B, 1]
        return local + glob.unsqueeze(-1)
