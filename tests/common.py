"""Tiny networks shared by tests."""

from __future__ import annotations

import torch
from pact_pyro.guides import RelaxedBernoulliGuide
from pact_pyro.models import PACTResNet

from pact_pyro.nn import ResNetBackbone


def tiny_model(units=(3, 2, 3), widths=(4, 8, 8), in_channels=1, num_classes=3, prior=None) -> PACTResNet:
    return PACTResNet(ResNetBackbone(list(units), widths, in_channels, num_classes), prior)


def randomize_heads(guide, std: float = 3.0, seed: int = 0) -> None:
    """Spread halting logits so that thresholding stops at different units for different examples."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in guide.heads:
            for head in block:
                head.linear.weight.copy_(torch.randn(head.linear.weight.shape, generator=g) * std)
                head.linear.bias.zero_()
                head.bn.running_mean.copy_(torch.randn(head.bn.running_mean.shape, generator=g) * 0.1)


def tiny_pair(**kw):
    model = tiny_model(**kw)
    guide = RelaxedBernoulliGuide(model)
    return model, guide
