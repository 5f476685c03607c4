"""SACT's non-spatial halting branch (pact-notes.md §1): ``h^l = σ(w · BN(avgpool(u^l)) + b)``.

The logit bias starts at ``-3`` (``σ(-3) ≈ 0.047``), so at initialisation almost every unit runs.
Cost by SACT's rules: ``2·C`` FLOPs (the linear layer; pooling and BN are free).
"""

from __future__ import annotations

import torch
from torch import nn

from .units import BN_EPS

__all__ = ["HaltingHead"]


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
        return self.linear(self.bn(u.mean(dim=(2, 3)))).squeeze(-1)
