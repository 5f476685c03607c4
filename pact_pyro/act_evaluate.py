"""ACT's deterministic test-time evaluation of a ResNet: per-example early exit with batch compaction.

Like :func:`pact_pyro.threshold.threshold` (the same :class:`~pact_pyro.early_exit.RunningRows`), but ACT
must keep the full-size weighted accumulator ``Σ_l w^l u^l`` of every example next to the current states —
the memory PACT thresholding saves. The halting rule itself is :func:`pact_pyro.halting.act_halting`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .early_exit import RunningRows, check_chunk_size
from .flops import FlopTable
from .halting import ACT_EPS, _check_eps
from .threshold import ThresholdResult

__all__ = ["act_evaluate"]


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
