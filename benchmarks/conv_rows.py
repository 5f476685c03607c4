"""Per-example cost of one residual unit against the number of rows it runs on: why early exit on a CPU
saves little time between batch 2 and 128.

Early exit runs each unit on the ``k`` examples still running; the full network runs it on the whole batch.
This times ``PreActUnit.residual`` (eval mode, ``no_grad``) of a block-1 unit (16 channels, 32×32) and a
block-3 unit (64 channels, 8×8) of the CIFAR ResNet on ``k`` rows, in NCHW and channels-last, and reports the
time per example (µs) and the FLOP rate (GFLOP/s). Repetitions of the row counts are interleaved.

Usage: ``python benchmarks/conv_rows.py --threads 2 --reps 15``
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit, environment, interleaved, setup  # noqa: E402

from pact_pyro.nn import PreActUnit  # noqa: E402

FORMATS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 64])
    p.add_argument("--calls", type=int, default=10, help="unit calls per timed repetition")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (rows 1 and 2, 2 reps)")
    args = p.parse_args(argv)
    if args.smoke:
        args.rows, args.calls, args.reps, args.warmup = [1, 2], 1, 2, 1
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup(args.threads)
    record: dict = {"benchmark": "conv_rows", "units": {}}
    for name, channels, side in (("block1", 16, 32), ("block3", 64, 8)):
        unit = PreActUnit(channels, channels).eval()
        sides = {}
        for fmt, mf in FORMATS.items():
            for k in args.rows:
                x = torch.randn(k, channels, side, side).contiguous(memory_format=mf)

                @torch.no_grad()
                def call(x=x, unit=unit):
                    for _ in range(args.calls):
                        unit.residual(x)

                sides[f"{fmt}_{k}"] = call
        times = interleaved(sides, args.reps, args.warmup)
        flops = 2 * 2 * 9 * channels * channels * side * side  # two 3×3 convolutions per example
        table = {}
        for key, ts in times.items():
            fmt, k = key.split("_")
            per_example = sorted(ts)[len(ts) // 2] / args.calls / int(k)
            table[key] = {
                "us_per_example": round(1e6 * per_example, 1),
                "gflops": round(flops / per_example / 1e9, 1),
            }
        record["units"][name] = {"channels": channels, "side": side, "by_format_and_rows": table}
        for fmt in FORMATS:
            row = " ".join(f"{table[f'{fmt}_{k}']['us_per_example']:>7.1f}" for k in args.rows)
            print(f"{name} {fmt}: µs per example at rows {args.rows}: {row}", file=sys.stderr)
    record["settings"] = {k: getattr(args, k) for k in ("rows", "calls", "reps", "smoke")}
    record["env"] = environment(args.threads)
    emit(record)
    return record


if __name__ == "__main__":
    main()
