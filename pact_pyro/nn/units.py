"""Pre-activation residual unit of the CIFAR ResNet used by SACT/PACT (pact-notes.md §5).

``u^l = S(u^{l-1}) + F_l(u^{l-1})`` with ``F = conv3x3 ∘ act ∘ BN ∘ conv3x3(stride) ∘ act ∘ BN`` and the
parameter-free shortcut ``S`` (average pooling by the stride, zero channel padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PreActUnit", "conv3x3", "make_activation"]

BN_EPS = 1e-3  # SACT: decay 0.9 (torch momentum 0.1), epsilon 1e-3


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free 3×3 convolution with padding 1 and He (variance-scaling) initialisation."""
    conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, a=0.1, nonlinearity="leaky_relu")
    return conv


def make_activation() -> nn.Module:
    """SACT's activation, LeakyReLU(0.1)."""
    return nn.LeakyReLU(0.1)


class PreActUnit(nn.Module):
    """One residual unit; ``forward(u) = shortcut(u) + residual(u)``.

    :param c_in: input channels ``C``; :param c_out: output channels; :param stride: 1 or 2.

    Shapes: ``[B, c_in, H, W] → [B, c_out, ⌈H/stride⌉, ⌈W/stride⌉]``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if c_out < c_in:
            raise ValueError(f"c_out must be >= c_in for the zero-padding shortcut, got {c_in} -> {c_out}")
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.bn1 = nn.BatchNorm2d(c_in, eps=BN_EPS)
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.conv2 = conv3x3(c_out, c_out)
        self.act = make_activation()

    def residual(self, u: torch.Tensor) -> torch.Tensor:
        """``F_l(u^{l-1})``."""
        return self.conv2(self.act(self.bn2(self.conv1(self.act(self.bn1(u))))))

    def shortcut(self, u: torch.Tensor) -> torch.Tensor:
        """``S(u^{l-1})``: identity, or average pooling and zero channel padding (no FLOPs)."""
        if self.stride > 1:
            u = F.avg_pool2d(u, self.stride, self.stride, ceil_mode=True)
        if self.c_out > self.c_in:
            u = F.pad(u, (0, 0, 0, 0, 0, self.c_out - self.c_in))
        return u

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        # residual first, shortcut added in place: the shortcut of a downsampling unit (half a block state)
        # is not kept alive through the residual's two convolutions, and the sum needs no new tensor
        # (peak activation memory of an inference unit: u and two transients). Autograd is unaffected: the
        # convolution does not save its output for backward.
        r = self.residual(u)
        return r.add_(self.shortcut(u))
