"""PACT-ResNet: the generative model ``p(y, z | x) = p(y | x, z) ∏_b p(z_b)`` as a Pyro program.

For each example and block ``b`` (``L_b`` units):

1. run units ``1..L`` (training executes all of them) and expose ``u^1..u^{L-1}`` as deterministic sites
   (the guide's halting heads read them: one backbone pass per step);
2. ``z_b ~ HaltingPrior(p(N))``, event ``[L-1]`` — a guide replaces it by a relaxed sample;
3. block output ``Σ_l w_l u^l = u^1 + Σ_{l≥2} e_l F_l(u^{l-1})`` (``= u^N`` at binary ``z``).

Then ``y ~ Categorical(logits = classifier(u))`` inside ``pyro.plate("data", B)``. Network weights are point
estimates registered with ``pyro.module``; they have no prior.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule

from pact_pyro.halting import mix_residuals, still_running
from pact_pyro.nn import ResNetBackbone, resnet_units_per_block
from pact_pyro.priors import TruncatedGeometric, UnitsPrior
from pact_pyro.sites import DATA_PLATE, OBS_SITE, activation_site, halting_site, units_site

__all__ = ["PACTResNet", "pact_resnet"]

_uid = itertools.count()


class PACTResNet(PyroModule):
    """PACT generative model over a :class:`~pact_pyro.nn.ResNetBackbone`.

    :param backbone: the ResNet (plain torch).
    :param prior: one :class:`~pact_pyro.priors.UnitsPrior` for every block, or one per block
        (e.g. a different ``τ`` per block). Default: ``TruncatedGeometric(tau=0.01)``.

    Attribute ``prior_weight`` (default 1) scales ``log p(z)`` through ``poutine.scale``; the trainer ramps it
    from 0 to 1 (a ``τ`` warm-up).
    """

    def __init__(
        self, backbone: ResNetBackbone, prior: UnitsPrior | Sequence[UnitsPrior] | None = None
    ) -> None:
        super().__init__()
        self.backbone = backbone
        nblocks = len(backbone.blocks)
        if prior is None:
            prior = TruncatedGeometric(0.01)
        priors = list(prior) if isinstance(prior, Sequence) else [prior] * nblocks
        if len(priors) != nblocks or not all(isinstance(p, UnitsPrior) for p in priors):
            raise ValueError(
                f"prior must be a UnitsPrior or a sequence of {nblocks} UnitsPriors, got {prior!r}"
            )
        for p, L in zip(priors, backbone.units_per_block, strict=True):
            p.log_probs(L)  # fail now (e.g. a CategoricalUnits of the wrong length), not in the first step
        self.priors = priors
        self.prior_weight = 1.0
        self.pyro_id = f"pact{next(_uid)}"

    @property
    def units_per_block(self) -> list[int]:
        return self.backbone.units_per_block

    @property
    def block_channels(self) -> list[int]:
        return list(self.backbone.widths)

    def check_data(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Validate ``x`` ``[B, C, H, W]`` and ``y`` ``[B]`` (:meth:`ResNetBackbone.check_data`)."""
        self.backbone.check_data(x, y)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The generative program. ``x``: ``[B, C, H, W]``; ``y``: ``[B]`` or ``None``. Returns ``y``."""
        self.check_data(x, y)
        net = pyro.module(self.pyro_id, self.backbone)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            u = net.stem(x)
            for b, block in enumerate(net.blocks):
                u = self._block(b, block, u)
            logits = net.classifier(u)
            return pyro.sample(OBS_SITE, dist.Categorical(logits=logits), obs=y)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x, y)

    def _block(self, b: int, units: torch.nn.ModuleList, u: torch.Tensor) -> torch.Tensor:
        L = len(units)
        u = units[0](u)  # u^1 (unit 1 may downsample)
        first, residuals = u, []
        for l in range(1, L):
            pyro.deterministic(activation_site(b, l - 1), u, event_dim=3)  # u^l for halting head l
            f = units[l].residual(u)  # F_{l+1}(u^l)
            residuals.append(f)
            u = u + f
        if L == 1:
            return first
        # poutine.scale rejects 0 (the first step of a τ warm-up): mask the prior term out instead
        with poutine.scale(scale=self.prior_weight) if self.prior_weight > 0 else poutine.mask(mask=False):
            z = pyro.sample(halting_site(b), self.priors[b].site(L))  # [B, L-1]
        e = still_running(z)  # [B, L]
        pyro.deterministic(units_site(b), e.sum(-1))  # Ñ_b
        return mix_residuals(first, residuals, e)


def pact_resnet(
    depth: int,
    num_classes: int = 10,
    in_channels: int = 3,
    prior: UnitsPrior | Sequence[UnitsPrior] | None = None,
    widths: tuple[int, int, int] = (16, 32, 64),
) -> PACTResNet:
    """PACT model on the pre-activation CIFAR ResNet of depth ``6n + 2`` (3 blocks of ``n`` units).

    ``pact_resnet(32)`` is ResNet-32 (L = 5 per block); ``pact_resnet(20, in_channels=1)`` fits MNIST.
    """
    n = resnet_units_per_block(depth)
    return PACTResNet(ResNetBackbone([n, n, n], widths, in_channels, num_classes), prior)
