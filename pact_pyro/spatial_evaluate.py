"""Test-time evaluation of spatially halting networks: spatial PACT thresholding and SACT (pact-notes §3, §7).

Both run every block the SACT way: unit 1 everywhere, then for ``l = 2..L`` the residual ``F_l`` is added only
at the positions still running; a halted position keeps its features (*frozen*), and its neighbours keep
reading the frozen value. The residual at the running positions is computed by
:func:`~pact_pyro.spatial_sparse.sparse_residual_` (only where needed: real savings) or, with
``sparse=False``, densely and masked (SACT's TensorFlow code; the reference).

* **spatial PACT** (:func:`spatial_threshold`): after unit ``l < L`` the spatial head gives ``h^l(i, j)``
  and a running position halts at the first ``h^l(i, j) ≥ threshold``; the block returns the state (no
  accumulator).
* **SACT** (:func:`sact_evaluate`): ACT per position (:func:`~pact_pyro.halting.act_halting` on
  ``[B, H, W]``): halt once ``S_l(i, j) ≥ 1 - ε``; the block returns ``Σ_l p^l(i, j) ũ^l(i, j)``, an
  accumulator next to the state.

FLOPs per example by SACT's rules (:func:`spatial_flops`): stem, classifier and unit 1 of each block in full;
unit ``l ≥ 2``'s second convolution at its active positions ``A_l = {N ≥ l}``, its first at ``A_l`` dilated by
a 3×3 max-pool (the second convolution reads neighbours); the spatial head after unit ``l < L`` at ``A_l``
(``A_1`` everything) plus its global term, when ``A_l`` is not empty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .early_exit import check_chunk_size
from .flops import FlopTable
from .halting import ACT_EPS, _check_eps
from .spatial_sparse import masked_residual_, sparse_residual_
from .threshold import ThresholdResult, _check_mode, _decide

__all__ = ["spatial_threshold", "sact_evaluate", "spatial_flops"]


def _residual_fn(sparse: bool) -> Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], None]:
    return sparse_residual_ if sparse else masked_residual_


def _eval_mode(modules: Sequence[torch.nn.Module]) -> list[bool]:
    was = [m.training for m in modules]
    for m in modules:
        m.eval()
    return was


def _per_position_cost(module: torch.nn.Module) -> int:
    """FLOPs per output position of a conv (2 per multiply-add; the bias is free)."""
    return 2 * module.weight.numel()


def spatial_flops(
    backbone, heads: Sequence[Sequence[torch.nn.Module]], maps: Sequence[torch.Tensor], table: FlopTable
) -> torch.Tensor:
    """Per-example FLOPs ``[B]`` (int64) by SACT's spatial rules (module docstring).

    :param maps: per block, the units run at each position, int64 ``[B, H_b, W_b]`` (1-based ``N(i, j)``).
    :param heads: ``heads[b][l]`` a :class:`~pact_pyro.nn.SpatialHaltingHead` after unit ``l + 1``.
    :param table: the network's :class:`~pact_pyro.flops.FlopTable` (stem, unit 1, classifier).
    """
    B = maps[0].shape[0]
    total = torch.full((B,), table.stem + table.classifier, dtype=torch.int64, device=maps[0].device)
    for b, (block, n) in enumerate(zip(backbone.blocks, maps, strict=True)):
        total += table.units[b][0]
        for l in range(1, len(block) + 1):
            active = n >= l  # A_l: the positions unit l runs at (all of them for l = 1)
            count = active.flatten(1).sum(1)
            if l >= 2:
                unit = block[l - 1]
                dilated = F.max_pool2d(active.unsqueeze(1).float(), 3, 1, 1).flatten(1).sum(1).long()
                total += _per_position_cost(unit.conv1) * dilated + _per_position_cost(unit.conv2) * count
            if l < len(block):
                head = heads[b][l - 1]
                glob = 2 * head.global_linear.weight.numel()
                total += (_per_position_cost(head.local_conv) * count + glob) * (count > 0)
    return total


def _chunks(x: torch.Tensor, chunk_size: int | None):
    c = x.shape[0] if chunk_size is None else chunk_size
    return [x[i : i + c] for i in range(0, x.shape[0], c)]


def _result(backbone, heads, logits, maps, table) -> ThresholdResult:
    units = torch.stack([m.flatten(1).double().mean(1) for m in maps], -1)
    return ThresholdResult(logits, units, spatial_flops(backbone, heads, maps, table), maps)


def _run_blocks(backbone, modules, x: torch.Tensor, chunk_size: int | None, run_block):
    """Stem, ``u, N = run_block(b, block, u)`` per block, classifier, ``chunk_size`` examples at a time, with
    ``modules`` in eval mode (restored after). Returns ``(logits [B, K], maps)``, ``maps[b]`` int64
    ``[B, H_b, W_b]``."""
    was = _eval_mode(modules)
    try:
        logits, maps = [], []
        for xc in _chunks(x, chunk_size):
            u = backbone.stem(xc)
            maps_c = []
            for b, block in enumerate(backbone.blocks):
                u, n = run_block(b, block, u)
                maps_c.append(n)
            logits.append(backbone.classifier(u))
            maps.append(maps_c)
    finally:
        for m, w in zip(modules, was, strict=True):
            m.train(w)
    return torch.cat(logits), [torch.cat(ms) for ms in zip(*maps, strict=True)]


def _start_block(block, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit 1 everywhere; ``N = L`` and every position running until decided otherwise."""
    u = block[0](u)
    shape = (u.shape[0], *u.shape[2:])
    n = torch.full(shape, len(block), dtype=torch.int64, device=u.device)
    return u, n, torch.ones(shape, dtype=torch.bool, device=u.device)


@torch.no_grad()
def spatial_threshold(
    model,
    guide,
    x: torch.Tensor,
    threshold: float = 0.5,
    mode: str = "threshold",
    generator: torch.Generator | None = None,
    flop_table: FlopTable | None = None,
    chunk_size: int | None = None,
    sparse: bool = True,
) -> ThresholdResult:
    """Spatial PACT thresholding of ``x`` ``[B, C, H, W]`` (module docstring).

    ``mode="sample"`` draws ``z^l(i, j) ~ Bernoulli(h^l(i, j))`` instead. ``chunk_size`` examples at a time
    (the same results, less memory). Returns :class:`~pact_pyro.threshold.ThresholdResult` with ``units``
    ``[B, blocks]`` the mean units over positions (float64) and ``maps``, per block the units at each position
    (int64 ``[B, H_b, W_b]``).
    """
    _check_mode(threshold, mode)
    check_chunk_size(chunk_size)
    net = model.backbone
    net.check_input(x)
    residual_ = _residual_fn(sparse)

    def run_block(b, block, u):
        u, n, running = _start_block(block, u)
        for l in range(1, len(block)):
            stop = running & _decide(guide.halting_logits(b, l - 1, u), threshold, mode, generator)
            n[stop] = l
            running &= ~stop
            if not bool(running.any()):
                break
            residual_(block[l], u, running)  # frozen where halted
        return u, n

    logits, maps = _run_blocks(net, [net, guide], x, chunk_size, run_block)
    table = flop_table or FlopTable.for_model(model, x.shape[1:], guide)
    return _result(net, guide.heads, logits, maps, table)


@torch.no_grad()
def sact_evaluate(
    backbone,
    heads: Sequence[Sequence[torch.nn.Module]],
    x: torch.Tensor,
    eps: float = ACT_EPS,
    flop_table: FlopTable | None = None,
    chunk_size: int | None = None,
    sparse: bool = True,
) -> ThresholdResult:
    """SACT's deterministic evaluation of ``x`` ``[B, C, H, W]``: ACT per position with frozen features.

    Per block and position: ``S_l = h^1 + … + h^l`` in float32 (``h^L := 1``), halt at the first
    ``S_l ≥ 1 - ε``; weights ``p^l = h^l`` before, ``R = 1 - S_{N-1}`` at the halt; the block returns
    ``Σ_l p^l ũ^l`` (exactly :func:`~pact_pyro.halting.act_halting` per position). ``heads[b][l]`` are
    :class:`~pact_pyro.nn.SpatialHaltingHead`. Returns :class:`~pact_pyro.threshold.ThresholdResult` with
    per-position ``maps`` as :func:`spatial_threshold`.
    """
    eps = _check_eps(eps)
    check_chunk_size(chunk_size)
    backbone.check_input(x)
    residual_ = _residual_fn(sparse)
    thresh = torch.tensor(1.0 - eps, dtype=torch.float32)

    def run_block(b, block, u):
        u, n, running = _start_block(block, u)
        L = len(block)
        s = torch.zeros(n.shape, dtype=torch.float32, device=u.device)  # S_{l-1}
        acc = torch.zeros_like(u)  # Σ_l p^l ũ^l: the accumulator PACT does not need
        for l in range(1, L + 1):
            if l > 1:
                residual_(block[l - 1], u, running)
            h = torch.sigmoid(heads[b][l - 1](u)) if l < L else torch.ones_like(s, dtype=u.dtype)
            s_new = s + h.to(torch.float32)
            stop = running & (s_new >= thresh) if l < L else running
            w = torch.where(stop, (1.0 - s).to(u.dtype), h) * running.to(u.dtype)
            acc.add_(u * w.unsqueeze(1))
            n[stop] = l
            s = torch.where(running, s_new, s)
            running &= ~stop
            if not bool(running.any()):
                break
        return acc, n

    modules = [backbone, *(h for hb in heads for h in hb)]
    logits, maps = _run_blocks(backbone, modules, x, chunk_size, run_block)
    table = flop_table or FlopTable.measure(backbone, x.shape[1:], heads)
    return _result(backbone, heads, logits, maps, table)
