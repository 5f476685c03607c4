"""Test-time evaluation of a trained PACT network with real early exit (pact-notes.md §4).

Deterministic rule: in each block run units in order; after unit ``l < L`` compute ``h^l = σ(head_l(u^l))``
and stop at the first ``h^l ≥ threshold`` (0.5: the mode of each ``q(z^l | x)``), else after unit ``L``.
The block returns the current state ``u^N``: no weighted accumulator (ACT keeps one), so only one
activation tensor per block is live.

Early exit at any batch size: examples whose block halted leave the batch (index_select) and their state
is written back (index_copy), so compute follows the per-example decisions instead of waiting for the whole
batch. ``mode="sample"`` draws ``z^l ~ Bernoulli(h^l)`` instead (the hard value of the Concrete sample,
for any temperature).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .flops import FlopTable

__all__ = ["ThresholdResult", "threshold", "evaluate_masked"]


class ThresholdResult(NamedTuple):
    """``logits [B, C]``, ``units [B, blocks]`` (1-based ``N_b``), ``flops [B]`` (SACT rules)."""

    logits: torch.Tensor
    units: torch.Tensor
    flops: torch.Tensor


def _decide(logits: torch.Tensor, threshold: float, mode: str, generator: torch.Generator | None) -> torch.Tensor:
    h = torch.sigmoid(logits)
    if mode == "threshold":
        return h >= threshold
    return torch.rand(h.shape, generator=generator, device=h.device, dtype=h.dtype) < h


def _check_mode(threshold: float, mode: str) -> None:
    if mode not in ("threshold", "sample"):
        raise ValueError(f"mode must be 'threshold' or 'sample', got {mode!r}")
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")


@torch.no_grad()
def threshold(
    model,
    guide,
    x: torch.Tensor,
    threshold: float = 0.5,
    mode: str = "threshold",
    generator: torch.Generator | None = None,
    flop_table: FlopTable | None = None,
) -> ThresholdResult:
    """Evaluate ``x`` ``[B, C, H, W]`` with per-example early exit; see the module docstring.

    ``model``/``guide`` are put in eval mode for the call (BatchNorm uses running statistics) and restored.
    ``threshold = 1.0`` with ``h < 1`` everywhere runs every unit.

    Models with their own test-time rule (ACT-ResNet, plain ResNet) provide
    ``model.evaluate_batch(x, threshold, mode, generator, flop_table)``, which is used instead.
    """
    _check_mode(threshold, mode)
    if hasattr(model, "evaluate_batch"):
        return model.evaluate_batch(x, threshold, mode, generator, flop_table)
    net = model.backbone
    net.check_input(x)
    was = net.training, guide.training
    net.eval()
    guide.eval()
    try:
        B = x.shape[0]
        units = torch.ones(B, len(net.blocks), dtype=torch.int64, device=x.device)
        u = net.stem(x)
        for b, block in enumerate(net.blocks):
            u = block[0](u)  # every example runs unit 1
            active = torch.arange(B, device=x.device)
            for l in range(1, len(block)):
                stop = _decide(guide.halting_logits(b, l - 1, u.index_select(0, active)), threshold, mode, generator)
                active = active[~stop]
                if active.numel() == 0:
                    break
                u = u.index_copy(0, active, block[l](u.index_select(0, active)))
                units[active, b] += 1
        logits = net.classifier(u)
    finally:
        net.train(was[0])
        guide.train(was[1])
    table = flop_table or FlopTable.for_model(model, x.shape[1:], guide)
    return ThresholdResult(logits, units, table.flops(units))


@torch.no_grad()
def evaluate_masked(model, guide, x: torch.Tensor, units: torch.Tensor | None = None, threshold: float = 0.5):
    """Reference path without early exit: run *every* unit of every example, compute every ``h``, decide
    ``N = threshold_units(h)`` (or use the given ``units [B, blocks]``) and select ``u^N`` by masking.
    Returns ``(logits [B, C], units [B, blocks])``. Used to test :func:`threshold`.
    """
    from .halting import stick_breaking, threshold_units, units_to_z

    net = model.backbone
    was = net.training, guide.training
    net.eval()
    guide.eval()
    try:
        u = net.stem(x)
        decided = []
        for b, block in enumerate(net.blocks):
            states, hs = [], []
            for l, unit in enumerate(block):
                u = unit(u)
                states.append(u)
                if l < len(block) - 1:
                    hs.append(torch.sigmoid(guide.halting_logits(b, l, u)))
            h = torch.stack(hs, -1) if hs else u.new_zeros(u.shape[0], 0)
            n = threshold_units(h, threshold) if units is None else units[:, b]
            w = stick_breaking(units_to_z(n, len(block), dtype=u.dtype))  # one-hot at N
            u = (torch.stack(states, 1) * w.reshape(w.shape + (1, 1, 1))).sum(1)
            decided.append(n)
        logits = net.classifier(u)
    finally:
        net.train(was[0])
        guide.train(was[1])
    return logits, torch.stack(decided, -1)
