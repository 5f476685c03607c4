"""The pre-activation CIFAR ResNet of SACT/PACT: depth ``6n + 2``, ``B = 3`` blocks of ``L = n`` units.

Widths 16/32/64; the first unit of blocks 2 and 3 has stride 2; stem ``conv3x3(in → 16)``; classifier
``BN → act → global average pool → linear``. Works for 1-channel 28×28 (MNIST) and 3-channel 32×32 (CIFAR)
inputs, and any other size ≥ 4×4.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .units import BN_EPS, PreActUnit, conv3x3, make_activation

__all__ = ["ResNetBackbone", "resnet_units_per_block"]


def resnet_units_per_block(depth: int) -> int:
    """``n`` for a CIFAR ResNet of depth ``6n + 2`` (20 → 3, 32 → 5, 110 → 18)."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 56, 110, ...), got {depth!r}")
    return (depth - 2) // 6


class ResNetBackbone(nn.Module):
    """Stem, ``B`` blocks of residual units, classifier. No halting, no Pyro.

    :param units: ``L_b`` for each block (e.g. ``[5, 5, 5]`` for ResNet-32).
    :param widths: channels of each block. :param in_channels: input channels. :param num_classes: classes.
    """

    def __init__(
        self,
        units: list[int],
        widths: tuple[int, ...] = (16, 32, 64),
        in_channels: int = 3,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if len(units) != len(widths) or any(L < 1 for L in units):
            raise ValueError(f"units must give L_b >= 1 for each of the {len(widths)} blocks, got {units}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.units_per_block = list(units)
        self.widths = tuple(widths)
        self.stem = conv3x3(in_channels, widths[0])
        blocks = []
        c = widths[0]
        for b, (L, w) in enumerate(zip(units, widths, strict=True)):
            stride = 1 if b == 0 else 2
            blocks.append(
                nn.ModuleList([PreActUnit(c if l == 0 else w, w, stride if l == 0 else 1) for l in range(L)])
            )
            c = w
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Sequential(
            nn.BatchNorm2d(c, eps=BN_EPS),
            make_activation(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(c, num_classes),
        )

    @property
    def input_weight(self) -> torch.Tensor:
        """The first convolution's weight, whose device and dtype inputs must match."""
        return self.stem.weight

    def check_input(self, x: torch.Tensor) -> None:
        """Raise an error naming ``x`` unless it is floating point ``[B, in_channels, H, W]``."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape [B, {self.in_channels}, H, W] for this network, got {tuple(x.shape)}"
            )
        if x.shape[0] < 1 or x.shape[2] < 4 or x.shape[3] < 4:
            raise ValueError(f"x must hold >= 1 image of at least 4x4 pixels, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be floating point, got dtype {x.dtype}")
        w = self.input_weight
        if x.device != w.device:
            raise ValueError(
                f"x is on device {x.device} but the network is on {w.device}; move one with .to()"
            )
        if x.dtype != w.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"x has dtype {x.dtype} but the network has {w.dtype}; convert one of them")
        # one reduction: NaN/inf anywhere make the sum non-finite (the exact check runs only then, and tells
        # a finite sum overflow apart); 6x cheaper than isfinite(x).all() at batch 1
        if not math.isfinite(float(x.sum())) and not bool(torch.isfinite(x).all()):
            raise ValueError(f"x must be finite, got {int((~torch.isfinite(x)).sum())} NaN/inf values")

    def check_data(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Check ``x`` (:meth:`check_input`) and labels ``y [B]`` in ``0..classes-1`` on ``x``'s device."""
        self.check_input(x)
        if y is None:
            return
        if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must be a 1-D tensor of {x.shape[0]} labels, got {getattr(y, 'shape', y)}")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
        if y.device != x.device:
            raise ValueError(f"y is on device {y.device} but x is on {x.device}")
        k = self.num_classes
        if bool(((y < 0) | (y >= k)).any()):
            raise ValueError(f"y must lie in 0..{k - 1}, got values {int(y.min())}..{int(y.max())}")

    def compile_units(self, **compile_kwargs) -> ResNetBackbone:
        """``torch.compile`` every unit's residual branch ``F_l`` (the convolutions, BatchNorms and
        activations; PACT's mixture and halting heads stay eager). Optional: on CPU (2 threads, ResNet-32,
        batch 128) a training step took 192 ms instead of 241 ms for the plain network and 215 instead of
        254 ms for PACT, after ~25 s of compilation (benchmarks/README.md). Backward passes must not retain
        the graph (``pact_pyro.train`` takes care of it). Returns ``self``."""
        for block in self.blocks:
            for unit in block:
                unit.residual = torch.compile(unit.residual, **compile_kwargs)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The full network (every unit): ``[B, C_in, H, W] → logits [B, classes]``."""
        u = self.stem(x)
        for block in self.blocks:
            for unit in block:
                u = unit(u)
        return self.classifier(u)


def init_backbone(backbone: torch.nn.Module, state: dict, source: str = "") -> None:
    """``backbone.load_state_dict(state)`` (strict), after checking keys and shapes in the backbone's order.

    The first mismatch raises ``ValueError``: ``init_from=SOURCE: backbone key K has shape (…) in the source
    and (…) in the model`` (or is missing from / unexpected in the source). Nothing is loaded then.
    """
    own = backbone.state_dict()
    where = f"init_from={source!r}: " if source else ""
    for k, v in own.items():
        if k not in state:
            raise ValueError(f"{where}backbone key {k!r} {tuple(v.shape)} is missing from the source")
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(
                f"{where}backbone key {k!r} has shape {tuple(state[k].shape)} in the source and "
                f"{tuple(v.shape)} in the model (another depth, width, input channels or classes?)"
            )
    extra = [k for k in state if k not in own]
    if extra:
        raise ValueError(
            f"{where}the source has key {extra[0]!r} {tuple(state[extra[0]].shape)}, which the "
            "model's backbone does not (another architecture?)"
        )
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise ValueError(f"{where}backbone key {bad[0]!r} holds non-finite values")
    backbone.load_state_dict(state, strict=True)
