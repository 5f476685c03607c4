"""Peak activation memory at inference: PACT thresholding vs ACT evaluation vs the full network.

Same network (ResNet-32 backbone and the same halting heads), same batch, CPU:

* ``full``: ``backbone(x)``, every unit, no heads;
* ``pact``: ``pact_pyro.threshold.threshold(model, guide, x, chunk_size=c)``: each block keeps only the
  current state ``u`` (running examples are the leading rows, units add into them in place);
* ``act``: ``pact_pyro.act_evaluate.act_evaluate(backbone, guide.heads, x, chunk_size=c)``, the project's ACT
  inference on the same row machinery (``pact_pyro.early_exit``), which keeps the running weighted sum
  ``Σ_l w^l u^l`` of every example next to the state, updated in place: the least memory an ACT evaluation
  with an accumulator needs.

Each batch is measured with ``chunk_size`` ``None`` (every running example through a unit at once: inside
a unit its input and two full-size transients are live, so PACT peaks at 3 block-1 states and ACT at 4)
and ``c`` = ``--chunk`` (at most ``c`` examples per unit call: PACT ≈ 1 + 2c/B states, ACT ≈ 2 + 2c/B).

Method: :class:`_common.LiveBytes`, a ``TorchDispatchMode`` that sees every ATen op's outputs, counts each new
tensor storage once and subtracts it (weak-reference callback) when the storage is freed. The peak is the
largest sum of live bytes after any op: the activation memory on top of weights and input, independent of the
allocator (no caching, no fragmentation). Heads are calibrated as in ``inference.py`` (about half the units
run under PACT's rule); ACT uses the same ``h`` with its own rule (``Σ h ≥ 1 - ε``), so its unit counts differ
and are reported. Also reported: the largest live bytes at the start of any unit
(forward pre-hooks), i.e. what is kept *between* units (PACT: the state; ACT: state and accumulator).
Goal: ``pact / act <= 0.6``.

Usage: ``python benchmarks/memory.py --batch 256``
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import LiveBytes, calibrate_heads, emit, environment, setup  # noqa: E402
from pact_pyro.guides import get_guide  # noqa: E402
from pact_pyro.models import pact_resnet  # noqa: E402

from pact_pyro.act_evaluate import act_evaluate  # noqa: E402
from pact_pyro.threshold import threshold  # noqa: E402

MIB = 2**20


def measure(fn, units=()) -> tuple[int, object]:
    """Peak live bytes of ``fn()``; with ``units``, also the largest live bytes seen when any of these modules
    starts (what is kept *between* units: states, accumulators), stored on ``measure.boundary``."""
    with torch.no_grad(), LiveBytes() as lb:
        seen = [0]
        hooks = [
            m.register_forward_pre_hook(lambda *_: seen.__setitem__(0, max(seen[0], lb.live))) for m in units
        ]
        try:
            out = fn()
        finally:
            for h in hooks:
                h.remove()
    measure.boundary = seen[0]
    return lb.peak, out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=32)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, nargs="+", default=[256, 1])
    p.add_argument("--hazard", type=float, default=0.35)
    p.add_argument("--chunk", type=int, default=32, help="chunk_size of the chunked measurement (B/8 at 256)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (depth 14, 16x16, batch 8)")
    args = p.parse_args(argv)
    if args.smoke:
        args.depth, args.size, args.batch, args.chunk = 14, 16, [8], 2
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup(args.threads)
    model = pact_resnet(args.depth)
    guide = get_guide("relaxed", model)
    model.eval()
    guide.eval()
    gen = torch.Generator().manual_seed(1)
    calibrate_heads(model, guide, torch.randn(64, 3, args.size, args.size, generator=gen), args.hazard)
    net = model.backbone
    record = {
        "benchmark": "memory",
        "goal": "pact / act <= 0.6 (batch 256)",
        "method": "TorchDispatchMode live storage bytes",
    }
    for B in args.batch:
        x = torch.randn(B, 3, args.size, args.size, generator=gen)
        state_bytes = x.new_empty(1, net.widths[0], args.size, args.size).nbytes * B  # one block-1 state
        threshold(model, guide, x)  # the folded heads cache their per-shape weights (one row each) once
        # every unit starts with bn1 (the evaluations call unit.residual, so the unit's own hooks do not fire)
        starts = [unit.bn1 for block in net.blocks for unit in block]
        for chunk in [None, args.chunk] if B > 1 else [None]:
            peaks, kept, units = {}, {}, {}
            runs = {
                "full": lambda x=x: net(x),
                "pact": lambda x=x, c=chunk: threshold(model, guide, x, chunk_size=c).units,
                "act": lambda x=x, c=chunk: act_evaluate(net, guide.heads, x, chunk_size=c).units,
            }
            for name, fn in runs.items():
                peaks[name], out = measure(fn, starts)
                kept[name] = measure.boundary
                if name != "full":
                    units[name] = out.double().mean(0).tolist()
            record[f"batch_{B}" + ("" if chunk is None else f"_chunk_{chunk}")] = {
                "chunk_size": chunk,
                "peak_mib": {k: round(v / MIB, 3) for k, v in peaks.items()},
                "peak_in_block1_states": {k: round(v / state_bytes, 3) for k, v in peaks.items()},
                "pact_over_act": round(peaks["pact"] / peaks["act"], 4),
                "pact_over_full": round(peaks["pact"] / peaks["full"], 4),
                "kept_between_units_mib": {k: round(v / MIB, 3) for k, v in kept.items()},
                "kept_between_units_pact_over_act": round(kept["pact"] / kept["act"], 4),
                "mean_units_per_block": {k: [round(v, 3) for v in vs] for k, vs in units.items()},
            }
    record["settings"] = {k: getattr(args, k) for k in ("depth", "size", "batch", "hazard", "chunk", "smoke")}
    record["env"] = environment(args.threads)
    emit(record)
    return record


if __name__ == "__main__":
    main()
