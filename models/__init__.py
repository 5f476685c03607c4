"""Pyro generative models of PACT: computation prior → halting latents → backbone → likelihood."""

from .act_resnet import ACTResNet, PlainResNet, act_resnet, plain_resnet
from .pact_resnet import PACTResNet, pact_resnet

__all__ = ["PACTResNet", "pact_resnet", "ACTResNet", "act_resnet", "PlainResNet", "plain_resnet"]
