"""Shared helpers of the benchmarks: thread setup, interleaved timing, live-tensor-bytes tracking, JSON.

Timing protocol (every script): ``torch.set_num_threads`` is fixed before anything runs; every side of a ratio
runs in the same process, after warm-up, in interleaved rounds (the order alternates ``A B``, ``B A``, ... so
slow drift of the machine's load hits both sides alike); each side's **median** over ``reps >= 20`` rounds is
reported with its interquartile range, and the ratio of medians together with the median and the quartiles
of the per-round ratios (the spread of the ratio itself, robust to load that changes between rounds).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["setup", "interleaved", "ratio_stats", "LiveBytes", "emit", "environment"]


def setup(threads: int, seed: int = 0) -> None:
    """Fix the intra-op thread count (``torch.set_num_threads``) and the seeds."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def _minor_faults() -> int:
    try:
        import resource
    except ImportError:  # not on Windows
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def interleaved(
    fns: dict[str, Callable[[], object]],
    reps: int,
    warmup: int,
    cpu: dict[str, list[float]] | None = None,
    faults: dict[str, list[int]] | None = None,
) -> dict[str, list[float]]:
    """Time each zero-argument callable ``reps`` times (wall-clock seconds), interleaved, after ``warmup``
    calls of each. With ``cpu`` (a dict), also record each call's process CPU time (``time.process_time``,
    all threads): less sensitive to other processes than wall-clock, but it counts threads' spin-waiting.
    With ``faults``, each call's minor page faults (``getrusage``: fresh memory the allocator took from the
    OS, which costs time on first touch).

    Round ``r`` runs the callables in order when ``r`` is even and in reverse order when it is odd.
    """
    if reps < 1 or warmup < 0:
        raise ValueError(f"reps must be >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    if cpu is not None:
        cpu.update({n: [] for n in names})
    if faults is not None:
        faults.update({n: [] for n in names})
    for r in range(reps):
        for n in names if r % 2 == 0 else reversed(names):
            f0 = _minor_faults()
            c0 = time.process_time()
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
            if cpu is not None:
                cpu[n].append(time.process_time() - c0)
            if faults is not None:
                faults[n].append(_minor_faults() - f0)
    return times


def side_stats(ts: list[float]) -> dict:
    """Median and quartiles of one side, in milliseconds."""
    q1, q2, q3 = _quartiles(ts)
    return {"median_ms": round(q2 * 1e3, 3), "q1_ms": round(q1 * 1e3, 3), "q3_ms": round(q3 * 1e3, 3)}


def ratio_stats(num: list[float], den: list[float]) -> dict:
    """``median(num) / median(den)`` and the quartiles of the per-round ratios ``num_r / den_r``."""
    per_round = [a / b for a, b in zip(num, den, strict=True)]
    q1, q2, q3 = _quartiles(per_round)
    return {
        "ratio_of_medians": round(statistics.median(num) / statistics.median(den), 4),
        "per_round_ratio_median": round(q2, 4),
        "per_round_ratio_q1": round(q1, 4),
        "per_round_ratio_q3": round(q3, 4),
    }


class LiveBytes(TorchDispatchMode):
    """Track the bytes of tensor storages created inside the mode that are still alive; keep the peak.

    Every ATen op's outputs pass through ``__torch_dispatch__``; each new storage is counted once (views
    share it) and a weak reference with a callback subtracts it when the storage is freed. Storages that
    existed before entering the mode (parameters, the input batch) are not counted. ``peak`` is the largest
    sum of live counted bytes seen right after any op, i.e. the activation memory a caching-free allocator
    would need on top of the weights and the input. Independent of device and allocator.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def _free(self, key: int, nbytes: int, _ref) -> None:
        self.live -= nbytes
        self._refs.pop(key, None)

    def _track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key = id(st)
        if key in self._refs and self._refs[key]() is st:
            return
        nbytes = st.nbytes()
        self.live += nbytes
        self._refs[key] = weakref.ref(st, lambda r, k=key, n=nbytes: self._free(k, n, r))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        self.peak = max(self.peak, self.live)
        return out


def live_peak_bytes(fn: Callable[[], object]) -> tuple[int, object]:
    """Peak live bytes (see :class:`LiveBytes`) of one call ``fn()``, and its result."""
    with LiveBytes() as lb:
        out = fn()
    return lb.peak, out


def environment(threads: int) -> dict:
    """Thread count, CPU count, load averages and versions, reported with every benchmark line."""
    import pyro

    return {
        "threads": threads,
        "torch_num_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def emit(record: dict) -> None:
    """Print one JSON line on stdout."""
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


@torch.no_grad()
def calibrate_heads(model, guide, x: torch.Tensor, hazard: float = 0.35) -> None:
    """Set every halting head's bias so that, on ``x`` ``[B, C, H, W]``, a fraction ``hazard`` of the examples
    still running at unit ``l`` halt there (``h^l ≥ 0.5``, i.e. logit ≥ 0), head by head in order.

    With ``L = 5`` and ``hazard = 0.35`` about half the units run (``E[N] ≈ 2.5``), and which examples halt
    depends on the input (the heads keep their random weights). Works on eval-mode BatchNorm statistics.
    """
    if not 0.0 < hazard < 1.0:
        raise ValueError(f"hazard must be in (0, 1), got {hazard}")
    net = model.backbone
    was = net.training, guide.training
    net.eval()
    guide.eval()
    try:
        u = net.stem(x)
        for b, block in enumerate(net.blocks):
            u = block[0](u)
            running = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            for l in range(1, len(block)):
                lin = guide.heads[b][l - 1].linear
                raw = guide.halting_logits(b, l - 1, u) - lin.bias
                if bool(running.any()):
                    lin.bias.fill_(-float(torch.quantile(raw[running], 1.0 - hazard)))
                running &= (raw + lin.bias) < 0
                u = torch.where(running.reshape(-1, 1, 1, 1), block[l](u), u)
    finally:
        net.train(was[0])
        guide.train(was[1])
