"""Pyro generative models of PACT: computation prior → halting latents → backbone → likelihood."""

from .pact_resnet import PACTResNet, pact_resnet

__all__ = ["PACTResNet", "pact_resnet"]
