"""Plain-torch building blocks (no Pyro sites): residual units, halting heads, the ResNet backbones (ours and
torchvision's)."""

from .backbone import ResNetBackbone, resnet_units_per_block
from .halting_head import HaltingHead, SpatialHaltingHead, spatial_mean
from .torchvision_resnet import TorchvisionBackbone
from .units import PreActUnit

__all__ = ["PreActUnit", "HaltingHead", "ResNetBackbone", "resnet_units_per_block", "spatial_mean"]
__all__ += ["TorchvisionBackbone", "SpatialHaltingHead"]
