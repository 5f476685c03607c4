"""torchvision's ResNets (18/34/50/101/152) as PACT backbones, with torchvision's own modules and names.

SACT's ImageNet models put the halting points after the residual units of the four stages. Here the stages
``layer1..layer4`` are the blocks ``b = 1..4`` and their units (``BasicBlock`` or ``Bottleneck``) the units
``l = 1..L_b``; the stem is ``conv1 → bn1 → relu → maxpool`` and the classifier ``avgpool → flatten → fc``.

:class:`TorchvisionBackbone` *adopts* a ``torchvision.models.ResNet``'s children under their own attribute
names, so its ``state_dict`` is torchvision's, key for key: a torchvision checkpoint loads unchanged
(strictly) and a fine-tuned backbone can be loaded back into torchvision. ``stem``, ``blocks`` and
``classifier`` are views over the same modules (not registered twice).

torchvision's units are post-activation (``u^l = relu(S(u^{l-1}) + F(u^{l-1}))``), so ``u^l − u^{l−1}`` is not
a residual branch of its own. PACT's relaxed mixture ``Σ_l w_l u^l = u^1 + Σ_{l≥2} e_l (u^l − u^{l−1})``
only needs the differences, which :class:`TorchvisionUnit` exposes as ``residual(u) = unit(u) − u`` for the
shape-preserving units ``l ≥ 2``; evaluation runs ``unit(u)`` itself.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import ResNetBackbone

__all__ = ["TorchvisionBackbone", "TorchvisionUnit", "TORCHVISION_ARCHS"]

#: the torchvision ResNets a :class:`TorchvisionBackbone` accepts
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class TorchvisionUnit(nn.Module):
    """One torchvision residual unit ``u^l = unit(u^{l-1})`` with ``residual(u) = unit(u) − u``."""

    def __init__(self, unit: nn.Module) -> None:
        super().__init__()
        self.unit = unit

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.unit(u)

    def residual(self, u: torch.Tensor) -> torch.Tensor:
        """``u^l − u^{l−1}`` (shape-preserving units only)."""
        return self.unit(u) - u


class _View(nn.Module):
    """A sequence of already registered modules, called in order (not registered in the backbone)."""

    def __init__(self, *mods: nn.Module) -> None:
        super().__init__()
        self.mods = list(mods)  # a plain list: these parameters belong to the backbone

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        for m in self.mods:
            u = m(u)
        return u


class TorchvisionBackbone(nn.Module):
    """A ``torchvision.models.ResNet`` as stem, 4 blocks of units and classifier (module docstring).

    :param net: a torchvision ResNet (its modules are adopted, not copied).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc")
        missing = [n for n in names if not hasattr(net, n)]
        if missing:
            raise TypeError(
                f"net must be a torchvision ResNet, got {type(net).__name__} without .{missing[0]}"
            )
        for n in names:
            setattr(self, n, getattr(net, n))
        stages = [self.layer1, self.layer2, self.layer3, self.layer4]
        # views, kept out of the module tree so that the state_dict stays torchvision's
        object.__setattr__(self, "_stem", _View(self.conv1, self.bn1, self.relu, self.maxpool))
        object.__setattr__(self, "_blocks", [[TorchvisionUnit(u) for u in stage] for stage in stages])
        object.__setattr__(self, "_classifier", _View(self.avgpool, nn.Flatten(), self.fc))
        self.units_per_block = [len(stage) for stage in stages]
        self.widths = tuple(_out_channels(stage[-1]) for stage in stages)
        self.in_channels, self.num_classes = self.conv1.in_channels, self.fc.out_features

    @property
    def stem(self) -> nn.Module:
        return self._stem

    @property
    def blocks(self) -> list[list[TorchvisionUnit]]:
        return self._blocks

    @property
    def classifier(self) -> nn.Module:
        return self._classifier

    @property
    def input_weight(self) -> torch.Tensor:
        """``conv1.weight``, whose device and dtype inputs must match."""
        return self.conv1.weight

    check_input = ResNetBackbone.check_input
    check_data = ResNetBackbone.check_data

    def compile_units(self, **compile_kwargs) -> TorchvisionBackbone:
        """``torch.compile`` every unit in place (``nn.Module.compile``: state_dict keys do not change)."""
        for block in self.blocks:
            for unit in block:
                unit.unit.compile(**compile_kwargs)
        return self

    forward = ResNetBackbone.forward  # stem, every unit, classifier: torchvision's ResNet.forward


def _out_channels(unit: nn.Module) -> int:
    last = getattr(unit, "conv3", None) or unit.conv2  # Bottleneck or BasicBlock
    return last.out_channels
