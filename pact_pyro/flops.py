"""FLOPs by SACT's counting rules (pact-notes.md §7), measured with ``torch.utils.flop_counter``.

Only convolutions and linear layers count, 2 FLOPs per multiply-add; BatchNorm, activations, pooling,
residual additions and zero-padding shortcuts are free — exactly what ``FlopCounterMode`` counts. We measure
each piece once at batch 1 (stem, every unit, every halting head, classifier) and sum, per example, the units
it executed::

    FLOPs = stem + Σ_b [Σ_{l ≤ N_b} unit_{b,l} + Σ_{l ≤ min(N_b, L_b - 1)} head_{b,l}] + classifier

(a halting head is evaluated after every executed unit that has one).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import cached_property
from itertools import accumulate

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["FlopTable", "count_flops"]


def count_flops(fn, *args) -> int:
    """FLOPs of one call ``fn(*args)`` (conv and linear, 2 per multiply-add)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return int(counter.get_total_flops())


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class FlopTable:
    """Per-example cost of each piece of an adaptive ResNet.

    ``units[b][l]`` and ``heads[b][l]`` (``l`` 0-based; ``heads[b]`` has ``L_b - 1`` entries, zeros when the
    network has no halting heads).
    """

    stem: int
    units: list[list[int]]
    heads: list[list[int]]
    classifier: int

    @classmethod
    @torch.no_grad()
    def measure(cls, backbone, input_shape, heads=None) -> FlopTable:
        """Measure on one zero input of ``input_shape`` ``(C, H, W)``; ``heads[b][l]`` are halting heads."""
        key = (tuple(int(s) for s in input_shape), id(heads) if heads is not None else None)
        cached = _CACHE.setdefault(backbone, {})
        if key in cached:
            return cached[key]
        p = next(backbone.parameters())
        was = backbone.training
        backbone.eval()
        try:
            u = torch.zeros((1, *key[0]), dtype=p.dtype, device=p.device)
            stem = count_flops(backbone.stem, u)
            u = backbone.stem(u)
            units, hcost = [], []
            for b, block in enumerate(backbone.blocks):
                units.append([])
                hcost.append([])
                for l, unit in enumerate(block):
                    units[b].append(count_flops(unit, u))
                    u = unit(u)
                    if l < len(block) - 1:
                        hcost[b].append(count_flops(_eval(heads[b][l]), u) if heads is not None else 0)
            table = cls(stem, units, hcost, count_flops(backbone.classifier, u))
        finally:
            backbone.train(was)
        cached[key] = table
        return table

    @classmethod
    def for_model(cls, model, input_shape, guide=None) -> FlopTable:
        heads = getattr(guide, "heads", None) if guide is not None else None
        if heads is None:  # ACT-ResNet owns its heads; a plain ResNet has none
            heads = getattr(model, "heads", None)
        return cls.measure(model.backbone, input_shape, heads)

    @property
    def full(self) -> int:
        """Every unit and every head executed."""
        return self.stem + self.classifier + sum(map(sum, self.units)) + sum(map(sum, self.heads))

    @cached_property
    def _cumulative(self) -> list[tuple[list[int], list[int]]]:
        """Per block, the cost of running units ``1..n`` and of their heads, indexed by ``n`` (0 first)."""
        return [
            (list(accumulate(uc, initial=0)), list(accumulate(hc, initial=0)))
            for uc, hc in zip(self.units, self.heads, strict=True)
        ]

    def flops_of(self, units: list[int] | tuple[int, ...]) -> int:
        """FLOPs of one example that executed ``units[b]`` (1-based ``N_b``) units per block (plain ints:
        the batch-1 path of :func:`~pact_pyro.threshold.threshold` uses it to avoid tensor ops)."""
        if len(units) != len(self.units):
            raise ValueError(f"units must have {len(self.units)} entries, got {list(units)}")
        total = self.stem + self.classifier
        for n, (ucum, hcum) in zip(units, self._cumulative, strict=True):
            total += ucum[n] + hcum[min(n, len(hcum) - 1)]
        return total

    def flops(self, units: torch.Tensor) -> torch.Tensor:
        """Per-example FLOPs for executed-unit counts ``units [B, blocks]`` (1-based) → int64 ``[B]``."""
        if units.dim() != 2 or units.shape[1] != len(self.units):
            raise ValueError(f"units must have shape [B, {len(self.units)}], got {tuple(units.shape)}")
        total = torch.full(
            units.shape[:1], self.stem + self.classifier, dtype=torch.int64, device=units.device
        )
        for b, (ucum, hcum) in enumerate(self._cumulative):
            n = units[:, b]
            ucum, hcum = (torch.tensor(c, dtype=torch.int64, device=units.device) for c in (ucum, hcum))
            total += ucum[n] + hcum[n.clamp(max=len(hcum) - 1)]
        return total

    def to_dict(self) -> dict:
        return {"stem": self.stem, "units": self.units, "heads": self.heads, "classifier": self.classifier}


def _eval(module):
    module.eval()
    return module
