"""Adaptive Computation Time (ACT) halting of a block of residual units, as the SACT code computes it.

Baseline for PACT (pact-notes.md §3, §7). A block runs units ``l = 1..L``; after unit ``l < L`` a halting
head outputs ``h^l ∈ (0, 1)``; the last unit always halts, ``h^L := 1``. With the running float32 sum
``S_n = h^1 + … + h^n``:

* ``N = min{n : S_n ≥ float32(1 − ε)}`` (``≥``, not ``>``; ``N ≤ L`` because ``h^L = 1``), a stop-gradient
  integer;
* remainder ``R = 1 − S_{N−1}`` (``h^N`` itself is not in ``R``; ``N = 1`` gives ``R = 1``);
* halting distribution ``w^l = h^l`` for ``l < N``, ``w^N = R``, ``w^l = 0`` for ``l > N`` (``Σ_l w^l = 1``);
* block output ``Σ_l w^l u^l`` (a weighted accumulator) and ponder cost ``ρ = N + R``, so
  ``∂ρ/∂h^l = −1`` for ``l < N`` and ``0`` otherwise.

Training loss: ``CE + τ Σ_b mean_i ρ_{b,i}``. The ACT output and ``ρ`` jump when ``S`` crosses ``1 − ε``:
the objective is discontinuous in ``h`` (unlike PACT's relaxed one).

:func:`act_evaluate` is the deterministic test-time ACT: per-example early exit with batch compaction, like
:func:`pact_pyro.threshold.threshold`, but it must keep the full-size weighted accumulator ``Σ w^l u^l`` of
every example next to the current states — the memory PACT thresholding saves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from .early_exit import RunningRows, check_chunk_size
from .flops import FlopTable
from .threshold import ThresholdResult

__all__ = ["ACTHalting", "act_halting", "act_evaluate", "ACT_EPS"]

ACT_EPS = 0.01  # SACT's ε


class ACTHalting(NamedTuple):
    """Result of :func:`act_halting` for halting probabilities ``h`` of shape ``[..., L-1]``.

    ``units`` int64 ``[...]`` (1-based ``N``), ``remainder`` ``[...]`` (``R``), ``weights`` ``[..., L]``
    (``w``), ``ponder_cost`` ``[...]`` (``ρ = N + R``). Floating results have the dtype of ``h``.
    """

    units: torch.Tensor
    remainder: torch.Tensor
    weights: torch.Tensor
    ponder_cost: torch.Tensor


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps!r}")
    return eps


def act_halting(h: torch.Tensor, eps: float = ACT_EPS) -> ACTHalting:
    """ACT halting of one block from ``h`` ``[..., L-1]`` (units ``1..L-1``; ``h^L := 1`` is implicit).

    Any leading shape works: ``[B]`` per example, ``[B, H, W]`` per spatial position (SACT). ``L = 1``
    (``h`` of shape ``[..., 0]``) gives ``N = 1``, ``R = 1``, ``w = [1]``, ``ρ = 2``.

    The halting decision uses a float32 running sum compared with ``float32(1 - eps)``, whatever the dtype of
    ``h``; ``R`` and ``w`` are differentiable in ``h`` (with ``N`` held fixed).
    """
    if not isinstance(h, torch.Tensor):
        raise TypeError(f"h must be a torch.Tensor, got {type(h).__name__}")
    if h.dim() < 1:
        raise ValueError(f"h must have a trailing unit dimension [..., L-1], got shape {tuple(h.shape)}")
    if not h.is_floating_point():
        raise TypeError(f"h must be floating point, got dtype {h.dtype}")
    eps = _check_eps(eps)
    ones = torch.ones(h.shape[:-1] + (1,), dtype=h.dtype, device=h.device)
    hh = torch.cat([h, ones], dim=-1)  # [..., L] with h^L = 1
    L = hh.shape[-1]
    with torch.no_grad():
        s32 = torch.cumsum(hh.detach().to(torch.float32), dim=-1)  # S_1..S_L in float32
        halt = s32 >= torch.tensor(1.0 - eps, dtype=torch.float32)
        halt[..., -1] = True  # h^L = 1 forces a halt at L even for negative/NaN-free corner cases
        n0 = halt.to(torch.int64).argmax(dim=-1)  # 0-based N - 1: the first True
    ls = torch.arange(L, device=h.device)
    before = ls < n0.unsqueeze(-1)  # l < N (1-based)
    at = ls == n0.unsqueeze(-1)
    zero = torch.zeros(h.shape[:-1] + (1,), dtype=h.dtype, device=h.device)
    s_excl = torch.cat([zero, torch.cumsum(hh, dim=-1)[..., :-1]], dim=-1)  # S_0 = 0, S_1..S_{L-1}
    s_prev = s_excl.gather(-1, n0.unsqueeze(-1)).squeeze(-1)  # S_{N-1}, the same running sum
    remainder = 1.0 - s_prev
    weights = torch.where(before, hh, torch.zeros((), dtype=hh.dtype, device=hh.device))
    weights = weights + at.to(hh.dtype) * remainder.unsqueeze(-1)
    units = n0 + 1
    return ACTHalting(units, remainder, weights, units.to(h.dtype) + remainder)


@torch.no_grad()
def act_evaluate(
    backbone,
    heads: Sequence[Sequence[torch.nn.Module]],
    x: torch.Tensor,
    eps: float = ACT_EPS,
    flop_table: FlopTable | None = None,
    chunk_size: int | None = None,
) -> ThresholdResult:
    """Deterministic ACT inference with per-example early exit on ``x`` ``[B, C, H, W]``.

    In each block: unit 1 runs for every example; after unit ``l`` the still-running examples add
    ``w^l u^l`` to their accumulator (``w^l = h^l``, or ``R = 1 - S_{l-1}`` at the halting unit) and those
    with ``S_l ≥ 1 - ε`` leave the running rows (:class:`~pact_pyro.early_exit.RunningRows`, the same
    machinery as PACT's thresholding, so memory comparisons are fair); the block returns the accumulator,
    and the next block writes into its storage. Live between units: the state and the full-size
    accumulator ``[B, C, H, W]`` (updated in place) — the least an accumulating evaluation keeps.
    ``chunk_size`` as in :func:`pact_pyro.threshold.threshold`.

    ``heads[b][l]`` maps ``u^{l+1}`` ``[B, C, H, W]`` to a halting logit ``[B]``. Backbone and heads are put
    in eval mode for the call and restored. Returns :class:`~pact_pyro.threshold.ThresholdResult`; FLOPs
    count units ``1..N_b`` and the heads of executed units ``l < L`` (SACT rules).
    """
    eps = _check_eps(eps)
    check_chunk_size(chunk_size)
    backbone.check_input(x)
    modules = [backbone, *(h for hb in heads for h in hb)]
    was = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        B = x.shape[0]
        dev = x.device
        thresh = torch.tensor(1.0 - eps, dtype=torch.float32)
        units = torch.zeros(B, len(backbone.blocks), dtype=torch.int64, device=dev)
        rows = RunningRows(backbone.stem(x), chunk_size)
        for b, block in enumerate(backbone.blocks):
            L = len(block)
            acc = None
            s = torch.zeros(B, dtype=torch.float32, device=dev)  # S_{l-1} of each row
            for l in range(L):
                if l == 0:
                    rows.start_block(block[0])
                else:
                    rows.run(block[l])
                k, state = rows.k, rows.running
                if l == L - 1:  # h^L = 1: every running example halts here, with weight R
                    w = (1.0 - s[:k]).to(state.dtype)
                    stop = None
                else:
                    h = torch.sigmoid(heads[b][l](state))  # [k]: heads make no large temporaries
                    s_new = s[:k] + h.to(torch.float32)
                    stop = s_new >= thresh
                    w = torch.where(stop, (1.0 - s[:k]).to(state.dtype), h)
                    s[:k] = s_new
                w = w.reshape(-1, 1, 1, 1)
                if acc is None:  # l = 0: every row is running
                    acc = torch.mul(state, w)
                else:  # in place into the rows of the running examples
                    acc[:k].addcmul_(state, w)
                del state
                if stop is None:
                    units[rows.examples(slice(0, k)), b] = L
                elif bool(stop.any()):
                    units[rows.halt(stop, acc, s), b] = l + 1
                    if rows.k == 0:
                        break
            rows.u = acc  # the block output; the state's storage is freed
            del acc
        logits = rows.to_examples(rows.map(backbone.classifier))
    finally:
        for m, t in zip(modules, was, strict=True):
            m.train(t)
    table = flop_table or FlopTable.measure(backbone, x.shape[1:], heads)
    return ThresholdResult(logits, units, table.flops(units))
