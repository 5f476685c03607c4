"""Per-example early exit on a batch: the row bookkeeping shared by PACT thresholding and ACT inference.

An evaluation keeps its examples in one state tensor ``u [B, ...]`` whose first ``k`` rows hold the examples
still running in the current block; ``order[i]`` is the example held in row ``i``. When running examples
halt, each halted row in the new prefix ``[0, k')`` swaps places with a running row behind it (at most
``min(#halted, #running)`` row moves, no full-batch gather), so the running examples are again the view
``u[:k']``: units run on it and write into it in place. Rows are not put back into example order between
blocks (everything after the stem is per example); only the outputs are, at the end
(:meth:`RunningRows.to_examples`).

With ``chunk_size = c`` every unit and classifier call sees at most ``c`` rows at a time: a residual
unit adds ``F(u[i:j])`` into ``u[i:j]`` in place, and a unit that makes each example smaller (stride 2) writes
its outputs into the front of its input's storage, which they fit into row by row after the rows they come
from have been read. The activation memory of an evaluation is then one block state plus what ``c``
examples need inside one unit (PACT) — plus the accumulator, for ACT. Without it the whole running prefix
goes through each unit at once (fastest on CPU; two full-size transients inside a unit).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .nn import PreActUnit

__all__ = ["RunningRows", "check_chunk_size", "halted_to_back_"]


def check_chunk_size(chunk_size: int | None) -> int | None:
    """``None`` or an int ``≥ 1``; anything else raises an error naming ``chunk_size``."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be None or an int >= 1 (examples per call), got {chunk_size!r}")
    return chunk_size


def halted_to_back_(stop: torch.Tensor, tensors, chunk_size: int | None = None) -> int:
    """Reorder the rows of every tensor in ``tensors`` (each with ``stop.numel()`` leading rows) in place so
    that the rows where ``stop`` (bool ``[k]``) is false come first: each halted row inside the new running
    prefix swaps places with a running row behind it (``min(#halted, #running)`` row moves), at most
    ``chunk_size`` rows per copy. Returns ``n``, the number of running rows."""
    k = stop.numel()
    n = k - int(stop.sum())
    if 0 < n < k:
        a = stop[:n].nonzero().squeeze(1)  # halted rows inside the new prefix ...
        if a.numel():
            c = (~stop[n:]).nonzero().squeeze(1) + n  # ... change places with running rows behind it
            step = a.numel() if chunk_size is None else chunk_size
            for t in tensors:
                for i in range(0, a.numel(), step):
                    ai, ci = a[i : i + step], c[i : i + step]
                    ta = t.index_select(0, ai)
                    t.index_copy_(0, ai, t.index_select(0, ci))
                    t.index_copy_(0, ci, ta)
    return n


def _identity_residual(unit: torch.nn.Module) -> bool:
    """``unit(u) = u + unit.residual(u)`` exactly (so it can be applied as an in-place add)."""
    return isinstance(unit, PreActUnit) and unit.stride == 1 and unit.c_in == unit.c_out


def _flat_rows(u: torch.Tensor) -> torch.Tensor | None:
    """``u``'s storage as one flat view, example after example (``None`` unless ``u`` is contiguous in the
    NCHW or the channels-last layout)."""
    if u.is_contiguous():
        return u.view(-1)
    if u.dim() == 4 and u.is_contiguous(memory_format=torch.channels_last):
        return u.permute(0, 2, 3, 1).reshape(-1)  # a view: NHWC is the storage order
    return None


def _same_layout(u: torch.Tensor, t: torch.Tensor) -> bool:
    nhwc = u.dim() == 4 and not u.is_contiguous()
    return t.is_contiguous(memory_format=torch.channels_last) if nhwc else t.is_contiguous()


def _rows_like(flat: torch.Tensor, t: torch.Tensor, B: int) -> torch.Tensor:
    """``flat`` viewed as ``B`` rows shaped and laid out like the rows of ``t`` (NCHW or channels-last)."""
    if t.dim() == 4 and not t.is_contiguous():  # channels-last: storage order N, H, W, C
        _, C, H, W = t.shape
        return flat.view(B, H, W, C).permute(0, 3, 1, 2)
    return flat.view((B,) + t.shape[1:])


class RunningRows:
    """The batch state of an early-exit evaluation (see the module docstring).

    :param u: the state after the stem, ``[B, ...]`` (row ``i`` = example ``i``).
    :param chunk_size: at most this many rows per module call (``None``: all running rows at once).

    Attributes: ``u`` (the state, rows permuted), ``k`` (rows ``0..k-1`` are running), ``order`` (``[B]``
    int64, the example in each row; ``None`` while it is the identity).
    """

    def __init__(self, u: torch.Tensor, chunk_size: int | None = None) -> None:
        self.u = u
        self.B = u.shape[0]
        self.k = self.B
        self.order: torch.Tensor | None = None
        self.chunk = check_chunk_size(chunk_size)

    @property
    def running(self) -> torch.Tensor:
        """``u[:k]``, the states of the running examples (a view)."""
        return self.u if self.k == self.B else self.u[: self.k]

    def _spans(self, n: int):
        c = n if self.chunk is None else self.chunk
        return ((i, min(i + c, n)) for i in range(0, n, c))

    def examples(self, rows: torch.Tensor | slice) -> torch.Tensor | slice:
        """The examples held in ``rows`` (an index tensor or a slice)."""
        return rows if self.order is None else self.order[rows]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor], reuse: bool = False) -> torch.Tensor:
        """``fn`` (a per-example map) applied to every row of ``u``, ``chunk_size`` rows at a time; the result
        in row order. ``reuse=True`` writes the result into the front of ``u``'s storage when each output row
        is no larger than an input row (``u`` is then overwritten)."""
        u = self.u
        if self.chunk is None or self.chunk >= self.B:
            return fn(u)
        spans = self._spans(self.B)
        i, j = next(spans)
        first = fn(u[i:j])
        shape = (self.B,) + first.shape[1:]
        row_in, row_out = u[0].numel(), first[0].numel()
        flat = _flat_rows(u) if reuse and first.dtype == u.dtype and row_out <= row_in else None
        if flat is not None and _same_layout(u, first):
            # output row r fills elements [r*row_out, (r+1)*row_out), before (r+1)*row_in: rows already read
            out = _rows_like(flat[: self.B * row_out], first, self.B)
        else:
            out = first.new_empty(shape)
        out[i:j] = first
        del first
        for i, j in spans:
            out[i:j] = fn(u[i:j])
        return out

    def start_block(self, unit: torch.nn.Module) -> None:
        """Run a block's first unit on every example (all rows run again: ``k = B``)."""
        self.u = self.map(unit, reuse=True)
        self.k = self.B

    def run(self, unit: torch.nn.Module) -> None:
        """Run ``unit`` (shape-preserving) on the running rows, in place."""
        v = self.running
        residual = _identity_residual(unit)
        for i, j in self._spans(self.k):
            w = v[i:j]
            if residual:
                w.add_(unit.residual(w))
            else:
                w.copy_(unit(w))

    def halt(self, stop: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
        """Remove the running rows where ``stop`` (bool ``[k]``) is true from the running prefix; permute
        ``others`` (tensors with ``B`` rows in the same row order, e.g. an accumulator) alike. Returns the
        examples that halted (``[#halted]``)."""
        k = self.k
        if self.order is None:
            self.order = torch.arange(self.B, device=stop.device)
        halted = self.order[:k][stop]
        self.k = halted_to_back_(stop, (self.u, *others, self.order), self.chunk)
        return halted

    def to_examples(self, rows_out: torch.Tensor) -> torch.Tensor:
        """Put a per-row result ``[B, ...]`` (e.g. logits) back into example order."""
        if self.order is None:
            return rows_out
        out = torch.empty_like(rows_out)
        out[self.order] = rows_out
        return out
