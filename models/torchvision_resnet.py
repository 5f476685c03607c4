"""PACT, ACT and plain models on torchvision's ResNets (pretrained ImageNet weights or your own).

``pact_torchvision_resnet("resnet50", weights=ResNet50_Weights.IMAGENET1K_V2)`` is the PACT program of
:mod:`pact_pyro.models.pact_resnet` on :class:`~pact_pyro.nn.TorchvisionBackbone`: four blocks (the stages
``layer1..layer4``), halting heads after every unit but the last of each stage (SACT's ImageNet models), the
same guides, objective, thresholding with early exit, ``chunk_size`` and FLOP counting.

``weights`` is ``None`` (torchvision's random initialisation), a ``torchvision.models.*_Weights`` value
(downloaded by torchvision on first use), a path to a saved ``state_dict`` or a ``state_dict``. It loads
strictly, by torchvision's own key names; a checkpoint of another architecture is refused with one line
naming the first mismatching key and both shapes. With ``num_classes`` different from the weights'
classifier (fine-tuning on a new label set) every weight but ``fc`` loads and ``fc`` starts fresh.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from pact_pyro.nn.torchvision_resnet import TORCHVISION_ARCHS, TorchvisionBackbone
from pact_pyro.priors import UnitsPrior

from .act_resnet import ACTResNet, PlainResNet
from .pact_resnet import PACTResNet

__all__ = [
    "torchvision_backbone",
    "pact_torchvision_resnet",
    "act_torchvision_resnet",
    "plain_torchvision_resnet",
]


def _state_dict(weights) -> tuple[dict, str]:
    if isinstance(weights, dict):
        return weights, "state_dict"
    if isinstance(weights, (str, os.PathLike)):
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"weights={str(weights)!r} does not exist") from None
        except Exception as err:  # unpickling errors have many types
            raise ValueError(
                f"weights={str(weights)!r} is not a state_dict file: {err}".split("\n")[0]
            ) from None
        if not isinstance(state, dict):
            raise ValueError(f"weights={str(weights)!r} holds a {type(state).__name__}, not a state_dict")
        return state, str(weights)
    if hasattr(weights, "get_state_dict"):  # torchvision.models.WeightsEnum
        return weights.get_state_dict(progress=True), str(weights)
    raise TypeError(
        "weights must be None, a torchvision.models.*_Weights value, a path or a state_dict, "
        f"got {type(weights).__name__}"
    )


def torchvision_backbone(arch: str, weights=None, num_classes: int | None = None) -> TorchvisionBackbone:
    """The torchvision ``arch`` (``resnet18/34/50/101/152``) as a backbone, with ``weights`` loaded strictly.

    ``num_classes`` defaults to the weights' classifier (1000 without weights).
    """
    import torchvision.models as tvm

    from pact_pyro.nn.backbone import init_backbone

    if arch not in TORCHVISION_ARCHS:
        raise ValueError(f"arch must be one of {list(TORCHVISION_ARCHS)}, got {arch!r}")
    state, where = (None, "") if weights is None else _state_dict(weights)
    classes_in_weights = (
        int(state["fc.weight"].shape[0]) if state is not None and "fc.weight" in state else None
    )
    classes = num_classes or classes_in_weights or 1000
    if not isinstance(classes, int) or classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    net = TorchvisionBackbone(getattr(tvm, arch)(weights=None, num_classes=classes))
    if state is not None:
        if classes_in_weights is not None and classes_in_weights != classes:  # a new label set: fresh fc
            fresh = net.fc.state_dict()
            state = {**state, **{f"fc.{k}": v for k, v in fresh.items()}}
        init_backbone(net, state, where)
    return net


def pact_torchvision_resnet(
    arch: str,
    weights=None,
    prior: UnitsPrior | Sequence[UnitsPrior] | None = None,
    num_classes: int | None = None,
) -> PACTResNet:
    """PACT model on a torchvision ResNet (module docstring); ``prior``: ``TruncatedGeometric(0.01)``."""
    return PACTResNet(torchvision_backbone(arch, weights, num_classes), prior)


def act_torchvision_resnet(
    arch: str, weights=None, tau: float = 0.01, num_classes: int | None = None
) -> ACTResNet:
    """ACT model (SACT's halting heads, ponder cost ``τ ρ``) on a torchvision ResNet."""
    return ACTResNet(torchvision_backbone(arch, weights, num_classes), tau)


def plain_torchvision_resnet(arch: str, weights=None, num_classes: int | None = None) -> PlainResNet:
    """A torchvision ResNet as a Pyro program (every unit, no halting)."""
    return PlainResNet(torchvision_backbone(arch, weights, num_classes))
