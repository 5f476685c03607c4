"""Early exit over a stream of batches: thresholding with every unit run on full batches of rows.

:func:`pact_pyro.threshold` evaluates each batch on its own: after each head the halted examples leave,
so by the last heads of a block a unit runs on a few rows, where CPU convolutions cost several times
more per row than on a full batch (``benchmarks/README.md``: a ResNet-32 block-3 unit costs 4-7x more per
example at 1-2 rows than at 64). An evaluation loop need not finish one batch before starting the next.
:func:`threshold_stream` keeps a first-in-first-out queue of the examples waiting for each unit ``l`` of each
block ``b`` (and one for the classifier) and runs:

1. the deepest queue holding ``batch_size`` rows or more, on its first ``batch_size`` rows (deepest first:
   examples leave the network as early as possible, and few rows wait);
2. else, while input remains, the stem on the next input batch (its rows join the queue of unit 1);
3. else (input exhausted) the shallowest non-empty queue, whatever its size (the flush: in network order,
   so that rows which halted at different units of a block meet again in the next block's queue).

After unit ``l < L`` the head decides ``h^l ≥ threshold`` per row, the rule of :func:`pact_pyro.threshold`:
halted rows join the next block's first queue (or the classifier's), running rows the queue of unit
``l + 1``. So every unit call except the flushes at the end sees ``batch_size`` rows, whatever the halting
pattern.

Per example, the decisions, unit counts and FLOPs are those of :func:`pact_pyro.threshold`, and the logits
agree up to the float rounding of convolutions run on other row counts (float64: 1e-10, tested). Costs: an
example waits in the queues until enough others reach its unit, so a batch's latency is not bounded by its
own work (use this for throughput: evaluating a dataset, offline scoring; :func:`pact_pyro.threshold` for a
request that must return before the next arrives); and up to about ``2 · batch_size`` rows wait per queue
(ResNet-32: 16 queues).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .early_exit import _identity_residual, halted_to_back_
from .flops import FlopTable
from .threshold import ThresholdResult, _check_mode, _decide, _head_logits, _training_flags
from .threshold import threshold as threshold_batch

__all__ = ["threshold_stream"]


class _Queue:
    """Rows waiting for one stage: pieces ``(u [k, ...], ids [k])`` in arrival order."""

    def __init__(self) -> None:
        self.pieces: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.n = 0

    def push(self, u: torch.Tensor, ids: torch.Tensor) -> None:
        if ids.numel():
            self.pieces.append((u, ids))
            self.n += ids.numel()

    def pop(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``min(k, n)`` rows (a view when they lie in one piece, else one concatenated copy)."""
        k = min(k, self.n)
        us, ids, got = [], [], 0
        while got < k:
            u, i = self.pieces[0]
            take = min(k - got, i.numel())
            us.append(u[:take])
            ids.append(i[:take])
            if take == i.numel():
                self.pieces.pop(0)
            else:
                self.pieces[0] = (u[take:], i[take:])
            got += take
        self.n -= k
        if len(us) == 1:
            return us[0], ids[0]
        return torch.cat(us), torch.cat(ids)


def _partition(
    stop: torch.Tensor, u: torch.Tensor, ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(u, ids, n)`` with the rows where ``stop`` is false first (``n`` of them). Up to 64 rows: one
    stable sort and one gather per tensor (``u[order]`` keeps a channels-last layout; few ops, as a small
    unit call is dispatch-bound); more rows: in-place swaps (:func:`~pact_pyro.early_exit.halted_to_back_`,
    as :meth:`~pact_pyro.early_exit.RunningRows.halt`)."""
    k = stop.numel()
    if k > 64:
        return u, ids, halted_to_back_(stop, (u, ids))
    n = k - int(stop.sum())
    if n in (0, k):
        return u, ids, n
    order = stop.to(torch.uint8).argsort(stable=True)
    return u[order], ids[order], n


def _batches(inputs: torch.Tensor | Iterable[torch.Tensor], batch_size: int):
    if isinstance(inputs, torch.Tensor):
        return iter(inputs.split(batch_size))
    return iter(inputs)


@torch.no_grad()
def threshold_stream(
    model,
    guide,
    inputs: torch.Tensor | Iterable[torch.Tensor],
    batch_size: int,
    threshold: float = 0.5,
    flop_table: FlopTable | None = None,
) -> ThresholdResult:
    """Threshold every example of ``inputs`` (see the module docstring) with at most ``batch_size`` rows per
    unit call, refilling the running rows from the next batches.

    :param inputs: ``[N, C, H, W]`` (read ``batch_size`` images at a time) or an iterable of batches
        ``[B_i, C, H, W]`` (e.g. ``(x for x, _ in loader)``).
    :param batch_size: rows per unit call (and per stem call for a tensor input).
    :returns: a :class:`~pact_pyro.threshold.ThresholdResult` over all examples in input order: ``logits
        [N, classes]``, ``units [N, blocks]`` (``N_b``), ``flops [N]``.

    Models with their own test-time rule (ACT, plain, spatial PACT), and ``batch_size = 1`` (one row per call
    either way), are evaluated batch by batch with :func:`~pact_pyro.threshold.threshold` (same results).
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    _check_mode(threshold, "threshold")
    batches = _batches(inputs, batch_size)
    if batch_size == 1 or hasattr(model, "evaluate_batch") or getattr(model, "spatial_halting", False):
        rs = [threshold_batch(model, guide, x, threshold, flop_table=flop_table) for x in batches]
        if not rs:
            raise ValueError("inputs must hold at least one image, got none")
        return ThresholdResult(*(torch.cat(t) for t in list(zip(*rs, strict=True))[:3]))
    net = model.backbone
    flags = _training_flags(net, guide)
    for m, _ in flags:
        m.training = False
    try:
        return _stream(model, guide, net, batches, batch_size, threshold, flop_table)
    finally:
        for m, was in flags:
            m.training = was


def _stream(model, guide, net, batches, batch_size, t, flop_table) -> ThresholdResult:
    head_logits = _head_logits(guide)
    Ls = [len(block) for block in net.blocks]
    # stages in network order: (b, l) for every unit, then the classifier; queues[s] waits for stage s
    stages = [(b, l) for b, L in enumerate(Ls) for l in range(L)] + [None]
    first = {b: stages.index((b, 0)) for b in range(len(Ls))}
    queues = [_Queue() for _ in stages]
    done_logits: list[tuple[torch.Tensor, torch.Tensor]] = []
    done_units: list[tuple[int, torch.Tensor, int]] = []  # (block, ids, N_b)
    n_in, shape, exhausted = 0, None, False

    def leave(b: int, u: torch.Tensor, ids: torch.Tensor, n: int) -> None:
        done_units.append((b, ids, n))
        queues[first[b + 1] if b + 1 < len(Ls) else -1].push(u, ids)

    while True:
        s = next((s for s in reversed(range(len(stages))) if queues[s].n >= batch_size), None)
        if s is None and not exhausted:
            x = next(batches, None)
            if x is None:
                exhausted = True
                continue
            net.check_input(x)
            if shape is None:
                shape = x.shape[1:]
            elif x.shape[1:] != shape:
                raise ValueError(f"inputs must all have shape [B, *{tuple(shape)}], got {tuple(x.shape)}")
            ids = torch.arange(n_in, n_in + x.shape[0], device=x.device)
            n_in += x.shape[0]
            queues[0].push(net.stem(x), ids)
            continue
        if s is None:  # flush in network order: rows that halted at different units merge downstream
            s = next((s for s in range(len(stages)) if queues[s].n), None)
            if s is None:
                break
        u, ids = queues[s].pop(batch_size)
        if stages[s] is None:
            done_logits.append((ids, net.classifier(u)))
            continue
        b, l = stages[s]
        unit = net.blocks[b][l]
        if l > 0 and _identity_residual(unit):
            u.add_(unit.residual(u))  # in place: these rows (a view, or a copy) left their queue
        else:
            u = unit(u)
        if l == Ls[b] - 1:
            leave(b, u, ids, Ls[b])
            continue
        stop = _decide(head_logits(b, l, u), t, "threshold", None)
        u, ids, n = _partition(stop, u, ids)  # running rows first: both parts leave as views of u
        queues[s + 1].push(u[:n], ids[:n])
        leave(b, u[n:], ids[n:], l + 1)
    if n_in == 0:
        raise ValueError("inputs must hold at least one image, got none")
    dev = done_logits[0][1].device
    logits = torch.empty(n_in, done_logits[0][1].shape[1], dtype=done_logits[0][1].dtype, device=dev)
    for ids, lg in done_logits:
        logits[ids] = lg
    units = torch.empty(n_in, len(Ls), dtype=torch.int64, device=dev)
    for b, ids, n in done_units:
        units[ids, b] = n
    table = flop_table or FlopTable.for_model(model, shape, guide)
    return ThresholdResult(logits, units, table.flops(units))
