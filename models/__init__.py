"""Pyro generative models of PACT: computation prior → halting latents → backbone → likelihood."""

from .act_lstm import ACTLSTM, act_lstm
from .act_resnet import ACTResNet, PlainResNet, act_resnet, plain_resnet
from .pact_lstm import PACTLSTM, pact_lstm
from .pact_resnet import PACTResNet, pact_resnet

__all__ = ["PACTResNet", "pact_resnet", "ACTResNet", "act_resnet", "PlainResNet", "plain_resnet"]
__all__ += ["PACTLSTM", "pact_lstm", "ACTLSTM", "act_lstm"]
