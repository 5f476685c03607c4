"""Ponder-cost maps against a saliency proxy: does spatial halting spend its units where the evidence is?

SACT (Figurnov et al. 2017, §5) compares its ponder-cost maps with human fixation maps. Without eye-tracking
data we use the simplest saliency proxy, the input gradient of the predicted class's logit computed with the
*full* network (every unit at every position, eval mode): :func:`gradient_saliency`. The agreement of a
ponder-cost map (:func:`pact_pyro.plots.ponder_map`) with it is a rank correlation per image,
:func:`map_saliency_correlation`; :func:`units_map_std` measures how much a units map varies over positions
at all (a uniform map is per-example halting, not spatial halting, and has no rank correlation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["gradient_saliency", "map_saliency_correlation", "units_map_std"]


def gradient_saliency(
    backbone: Callable[[torch.Tensor], torch.Tensor] | torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Gradient saliency ``‖∂ f_k(x) / ∂x_{·,i,j}‖₂`` (the L2 norm over channels) of ``x`` ``[B, C, H, W]``.

    ``f = backbone`` is the full network (e.g. ``model.backbone``: ``[B, C, H, W] → logits [B, K]``, every
    unit), run in eval mode (training flags are restored afterwards); ``k`` is the predicted class
    ``argmax_k f_k(x)``, or ``target`` ``[B]`` when given. Parameter gradients are not touched. In eval mode
    the examples are independent, so ``batch_size`` examples at a time give the same result.

    :returns: float ``[B, H, W]`` (``x``'s dtype), ``≥ 0``.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be an image batch [B, C, H, W], got shape {tuple(x.shape)}")
    if target is not None and (target.dim() != 1 or target.shape[0] != x.shape[0]):
        raise ValueError(f"target must have shape [{x.shape[0]}], got {tuple(target.shape)}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be None or an integer >= 1, got {batch_size!r}")
    modules = list(backbone.modules()) if isinstance(backbone, torch.nn.Module) else []
    was = [m.training for m in modules]
    for m in modules:
        m.eval()
    step = x.shape[0] if batch_size is None else batch_size
    out = []
    try:
        with torch.enable_grad():
            for s in range(0, x.shape[0], max(step, 1)):
                xc = x[s : s + step].detach().clone().requires_grad_(True)
                logits = backbone(xc)
                k = logits.argmax(-1) if target is None else target[s : s + step].to(logits.device)
                chosen = logits.gather(1, k.view(-1, 1)).sum()  # examples are independent: one backward
                (grad,) = torch.autograd.grad(chosen, xc)
                out.append(grad.norm(dim=1).detach())
    finally:
        for m, w in zip(modules, was, strict=True):
            m.train(w)
    return torch.cat(out) if out else x.new_zeros(0, *x.shape[2:])


def _average_ranks(a: torch.Tensor) -> torch.Tensor:
    """Row-wise ranks ``1..n`` of ``a`` ``[B, n]``, ties sharing their mean rank (float64 ``[B, n]``)."""
    B, n = a.shape
    vals, order = a.sort(dim=1, stable=True)
    new = torch.ones_like(vals, dtype=torch.bool)
    new[:, 1:] = vals[:, 1:] != vals[:, :-1]  # the first element of each tie group
    group = new.long().cumsum(1) - 1 + (torch.arange(B, device=a.device) * n).unsqueeze(1)  # unique per row
    pos = torch.arange(1, n + 1, dtype=torch.float64, device=a.device).expand(B, n)
    sums = torch.zeros(B * n, dtype=torch.float64, device=a.device).index_add_(
        0, group.flatten(), pos.flatten()
    )
    counts = torch.zeros(B * n, dtype=torch.float64, device=a.device).index_add_(
        0, group.flatten(), torch.ones(B * n, dtype=torch.float64, device=a.device)
    )
    sorted_ranks = (sums / counts.clamp(min=1))[group]
    return torch.empty_like(sorted_ranks).scatter_(1, order, sorted_ranks)


def map_saliency_correlation(ponder_maps: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation, per image, between a ponder-cost map and a saliency map.

    :param ponder_maps: ``[B, H, W]`` (e.g. :func:`pact_pyro.plots.ponder_map`), any real dtype.
    :param saliency: ``[B, H, W]`` (e.g. :func:`gradient_saliency`), the same shape.
    :returns: float64 ``[B]`` in ``[-1, 1]``: the Pearson correlation of the two maps' average ranks over the
        ``H·W`` positions (ties share their mean rank, as ``scipy.stats.spearmanr``). NaN where either map is
        constant (a uniform ponder map has no rank correlation with anything).
    """
    if ponder_maps.shape != saliency.shape or ponder_maps.dim() != 3:
        raise ValueError(
            "ponder_maps and saliency must both be [B, H, W] of the same shape, got "
            f"{tuple(ponder_maps.shape)} and {tuple(saliency.shape)}"
        )
    B = ponder_maps.shape[0]
    ra = _average_ranks(ponder_maps.detach().reshape(B, -1).double())
    rb = _average_ranks(saliency.detach().reshape(B, -1).to(ra.device).double())
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    den = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    r = (ra * rb).sum(1) / den
    return torch.where(den > 0, r.clamp(-1.0, 1.0), torch.full_like(r, float("nan")))


def units_map_std(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per image and block, the standard deviation over positions of the units map (population std, ``÷ HW``).

    :param maps: per block, the units run at each position, ``[B, H_b, W_b]`` (``ThresholdResult.maps``).
    :returns: float64 ``[B, blocks]``, ``≥ 0``; a row of zeros is an image whose every block halts at the
        same unit everywhere (count them with ``(units_map_std(maps) == 0).all(1).sum()``).
    """
    if len(maps) == 0:
        raise ValueError("maps must hold at least one block's [B, H, W] units map, got none")
    return torch.stack([m.detach().flatten(1).double().std(1, correction=0) for m in maps], -1)
