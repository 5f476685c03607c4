"""Baselines of PACT as Pyro programs with no latent variables: ACT-ResNet and the plain ResNet.

Both train through the same ``SVI(model.model, EmptyGuide(model), optim, loss=MAPObjective())`` loop as PACT
(the objective is then ``-log p(y | x) - Σ factors``, per example).

ACT-ResNet (Graves 2016; SACT code, pact-notes.md §3): in block ``b`` every unit runs in training, the
halting heads give ``h_b^1..h_b^{L-1}`` and :func:`~pact_pyro.halting.act_halting` gives the weights ``w`` and
the ponder cost ``ρ_b = N_b + R_b``; the block outputs ``Σ_l w^l u^l``. The ponder cost enters as
``pyro.factor("ponder_{b}", -τ ρ_b)`` inside the data plate, so the loss is ``CE + τ Σ_b mean_i ρ_{b,i}``
(SACT's ``add_all_ponder_costs``). Test time: :func:`~pact_pyro.act_evaluate.act_evaluate` (deterministic,
early exit).

Plain ResNet: every unit, no halting; ``units = L_b`` for every example.
"""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pact_pyro.act_evaluate import act_evaluate
from pact_pyro.flops import FlopTable
from pact_pyro.halting import ACT_EPS, act_halting
from pact_pyro.nn import HaltingHead, ResNetBackbone, resnet_units_per_block
from pact_pyro.sites import DATA_PLATE, OBS_SITE, units_site
from pact_pyro.threshold import ThresholdResult

__all__ = ["ACTResNet", "PlainResNet", "act_resnet", "plain_resnet", "ponder_site"]

_uid = itertools.count()


def ponder_site(block: int) -> str:
    """Name of the ponder-cost factor ``-τ ρ_b`` of block ``b``."""
    return f"ponder_{block}"


class _NoLatentModel(PyroModule):
    """Shared plumbing: backbone, ``units_per_block``, ``block_channels``, ``prior_weight`` (τ warm-up)."""

    def __init__(self, backbone: ResNetBackbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.prior_weight = 1.0
        self.pyro_id = f"{type(self).__name__.lower()}{next(_uid)}"

    @property
    def units_per_block(self) -> list[int]:
        return self.backbone.units_per_block

    @property
    def block_channels(self) -> list[int]:
        return list(self.backbone.widths)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x, y)


class ACTResNet(_NoLatentModel):
    """ACT over a :class:`~pact_pyro.nn.ResNetBackbone` with one SACT :class:`~pact_pyro.nn.HaltingHead`
    per unit ``l < L_b`` (owned by the model: ``.heads[b][l]``).

    :param tau: ponder-cost weight ``τ ≥ 0`` (the same scale as PACT's geometric-prior ``τ``).
    :param eps: ACT's ``ε`` (halting at ``S ≥ 1 - ε``). :param bias_init: initial halting-logit bias (-3).
    """

    #: the halting head built for each unit ``l < L_b`` (``head_type(channels, bias_init)``)
    head_type: type[nn.Module] = HaltingHead

    def __init__(
        self, backbone: ResNetBackbone, tau: float = 0.01, eps: float = ACT_EPS, bias_init: float = -3.0
    ):
        super().__init__(backbone)
        if not (math.isfinite(tau) and tau >= 0):
            raise ValueError(f"tau must be a finite number >= 0, got {tau!r}")
        if not 0 <= eps < 1:
            raise ValueError(f"eps must be in [0, 1), got {eps!r}")
        self.tau, self.eps = float(tau), float(eps)
        self.heads = nn.ModuleList(
            nn.ModuleList(self.head_type(c, bias_init) for _ in range(L - 1))
            for c, L in zip(backbone.widths, backbone.units_per_block, strict=True)
        )

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[B, C, H, W]``, ``y`` ``[B]`` or ``None``; returns ``y``. Sites: ``units_{b}`` (``N_b``),
        ``ponder_{b}`` (factor ``-τ ρ_b`` scaled by ``prior_weight``), ``y``."""
        self.backbone.check_data(x, y)
        pyro.module(self.pyro_id, self)
        net = self.backbone
        with pyro.plate(DATA_PLATE, x.shape[0]):
            u = net.stem(x)
            for b, block in enumerate(net.blocks):
                u = self._block(b, block, u)
            logits = net.classifier(u)
            return pyro.sample(OBS_SITE, dist.Categorical(logits=logits), obs=y)

    def _block(self, b: int, block: nn.ModuleList, u: torch.Tensor) -> torch.Tensor:
        states, hs = [], []
        for l, unit in enumerate(block):
            u = unit(u)
            states.append(u)
            if l < len(block) - 1:
                hs.append(torch.sigmoid(self.heads[b][l](u)))
        h = torch.stack(hs, -1) if hs else u.new_zeros(u.shape[0], 0)
        r = act_halting(h, self.eps)
        u = torch.einsum("bl,blchw->bchw", r.weights, torch.stack(states, 1))
        pyro.deterministic(units_site(b), r.units.to(u.dtype))
        pyro.factor(ponder_site(b), -self.tau * self.prior_weight * r.ponder_cost)
        return u

    def evaluate_batch(
        self,
        x: torch.Tensor,
        threshold: float = 0.5,
        mode: str = "threshold",
        generator: torch.Generator | None = None,
        flop_table: FlopTable | None = None,
        chunk_size: int | None = None,
    ) -> ThresholdResult:
        """Deterministic ACT evaluation (:func:`~pact_pyro.act_evaluate.act_evaluate`). ACT has no
        threshold or sampling: ``threshold`` is ignored (the rule is ``S ≥ 1 - ε``); ``mode`` must be
        ``"threshold"``."""
        if mode != "threshold":
            raise ValueError(f"mode must be 'threshold' for an ACT model (deterministic), got {mode!r}")
        return act_evaluate(self.backbone, self.heads, x, self.eps, flop_table, chunk_size)


class PlainResNet(_NoLatentModel):
    """An ordinary ResNet as a Pyro program: ``y ~ Categorical(logits = backbone(x))``; no halting."""

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.backbone.check_data(x, y)
        net = pyro.module(self.pyro_id, self.backbone)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            return pyro.sample(OBS_SITE, dist.Categorical(logits=net(x)), obs=y)

    @torch.no_grad()
    def evaluate_batch(
        self,
        x: torch.Tensor,
        threshold: float = 0.5,
        mode: str = "threshold",
        generator: torch.Generator | None = None,
        flop_table: FlopTable | None = None,
        chunk_size: int | None = None,
    ) -> ThresholdResult:
        """Every unit of every example (``threshold``/``mode`` have nothing to decide and are ignored);
        ``chunk_size`` examples at a time if given."""
        net = self.backbone
        net.check_input(x)
        c = x.shape[0] if chunk_size is None else chunk_size
        was = net.training
        net.eval()
        try:
            logits = torch.cat([net(x[i : i + c]) for i in range(0, x.shape[0], c)])
        finally:
            net.train(was)
        units = torch.tensor(net.units_per_block, device=x.device).expand(x.shape[0], -1)
        table = flop_table or FlopTable.measure(net, x.shape[1:], None)
        return ThresholdResult(logits, units, table.flops(units))


def act_resnet(
    depth: int,
    num_classes: int = 10,
    in_channels: int = 3,
    tau: float = 0.01,
    eps: float = ACT_EPS,
    widths: tuple[int, int, int] = (16, 32, 64),
) -> ACTResNet:
    """ACT model on the pre-activation CIFAR ResNet of depth ``6n + 2`` (3 blocks of ``n`` units)."""
    n = resnet_units_per_block(depth)
    return ACTResNet(ResNetBackbone([n, n, n], widths, in_channels, num_classes), tau, eps)


def plain_resnet(
    depth: int, num_classes: int = 10, in_channels: int = 3, widths: tuple[int, int, int] = (16, 32, 64)
) -> PlainResNet:
    """Plain pre-activation CIFAR ResNet of depth ``6n + 2`` as a Pyro program."""
    n = resnet_units_per_block(depth)
    return PlainResNet(ResNetBackbone([n, n, n], widths, in_channels, num_classes))
