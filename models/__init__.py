"""Pyro generative models of PACT: computation prior → halting latents → backbone → likelihood."""

from .act_lstm import ACTLSTM, act_lstm
from .act_resnet import ACTResNet, PlainResNet, act_resnet, plain_resnet
from .pact_lstm import PACTLSTM, pact_lstm
from .pact_resnet import PACTResNet, pact_resnet
from .sact_resnet import SACTResNet, sact_resnet
from .spatial_pact_resnet import SpatialPACTResNet, spatial_pact_resnet
from .torchvision_resnet import act_torchvision_resnet, pact_torchvision_resnet, plain_torchvision_resnet

__all__ = ["PACTResNet", "pact_resnet", "ACTResNet", "act_resnet", "PlainResNet", "plain_resnet"]
__all__ += ["PACTLSTM", "pact_lstm", "ACTLSTM", "act_lstm"]
__all__ += ["pact_torchvision_resnet", "act_torchvision_resnet", "plain_torchvision_resnet"]
__all__ += ["SpatialPACTResNet", "spatial_pact_resnet", "SACTResNet", "sact_resnet"]
