"""Wall-clock of PACT thresholding with real early exit against the full network, at batch 1 and batch 256.

Sides, interleaved in one process, both under ``torch.no_grad`` with eval-mode BatchNorm:

* ``full``: ``model.backbone(x)``, every unit (no halting heads);
* ``threshold``: ``pact_pyro.threshold.threshold(model, guide, x)`` (a head after every executed unit
  ``l < L``, halt at ``h^l ≥ 0.5``; halted examples leave the running prefix of the batch);
* at the large batch also ``full_chunked`` and ``threshold_chunked`` (``--chunk`` examples per unit call on
  both sides; on CPU both run faster in cache-sized chunks, so their quotient is reported apart).

Network: PACT ResNet-32 on CIFAR-shaped input. With ``--checkpoint RUN_DIR`` a trained run (``pact-pyro
train``) is loaded and evaluated on that many test images; otherwise the randomly initialised network gets
its halting biases set (``calibrate_heads``) so that at each head 35% of the still-running examples halt:
about half the units run, and which ones depends on the input.

Reported per batch size: wall-clock speedup ``t_full / t_threshold`` (ratio of medians, plus the per-round
spread), FLOP speedup ``FLOPs_full / mean FLOPs_threshold`` (SACT counting, heads included on the PACT side)
and their quotient (goal >= 0.85). Batch 1: one timed repetition evaluates ``--images`` single images one at a
time (the same images for both sides); batch B: one call on B images.

Usage: ``python benchmarks/inference.py --threads 2 --reps 20 [--checkpoint RUN_DIR]``
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import calibrate_heads, emit, environment, interleaved, ratio_stats, setup, side_stats  # noqa: E402

from pact_pyro.flops import FlopTable  # noqa: E402
from pact_pyro.threshold import threshold  # noqa: E402


def build(args):
    """``(model, guide, images [N, C, H, W])``; heads calibrated unless a checkpoint is given."""
    if args.checkpoint:
        from pact_pyro.data import load_dataset
        from pact_pyro.train import load_run

        model, guide, cfg = load_run(args.checkpoint, device="cpu")
        data = load_dataset(cfg.dataset, False, cfg.data_root)
        n = max(*args.batch, args.images)
        images = torch.stack([data[i][0] for i in range(n)]) if not hasattr(data, "x") else data.x[:n]
        return model, guide, images.float()
    from pact_pyro.guides import get_guide
    from pact_pyro.models import pact_resnet

    model = pact_resnet(args.depth)
    guide = get_guide("relaxed", model)
    model.eval()
    guide.eval()
    gen = torch.Generator().manual_seed(1)
    calib = torch.randn(512 if not args.smoke else 16, 3, args.size, args.size, generator=gen)
    calibrate_heads(model, guide, calib, args.hazard)
    images = torch.randn(max(*args.batch, args.images), 3, args.size, args.size, generator=gen)
    return model, guide, images


def measure(
    model, guide, xs: list[torch.Tensor], table: FlopTable, reps: int, warmup: int, chunk: int | None = None
) -> dict:
    """Time ``full`` vs ``threshold`` over the list of inputs ``xs`` (one repetition = every input once);
    with ``chunk``, also ``threshold(..., chunk_size=chunk)`` against the full network run in chunks of the
    same size (sides ``threshold_chunked``, ``full_chunked``)."""
    net = model.backbone

    @torch.no_grad()
    def full(c=None):
        for x in xs:
            if c is None:
                net(x)
            else:  # the plain network in chunks of c examples (CPU caches favour it as they favour PACT's)
                for i in range(0, x.shape[0], c):
                    net(x[i : i + c])

    def thr(c=None):
        for x in xs:
            threshold(model, guide, x, flop_table=table, chunk_size=c)

    net.eval()
    guide.eval()
    cpu: dict = {}
    sides = {"full": full, "threshold": thr}
    if chunk is not None:
        sides["full_chunked"] = lambda: full(chunk)
        sides["threshold_chunked"] = lambda: thr(chunk)
    times = interleaved(sides, reps, warmup, cpu)
    flops = torch.cat([threshold(model, guide, x, flop_table=table).flops for x in xs]).double()
    units = torch.cat([threshold(model, guide, x, flop_table=table).units for x in xs]).double()
    full_flops = table.stem + table.classifier + sum(map(sum, table.units))
    wall = ratio_stats(times["full"], times["threshold"])  # t_full / t_threshold
    flop_speedup = full_flops / float(flops.mean())
    record = {
        "sides": {k: side_stats(v) for k, v in times.items()},
        "wall_speedup": wall["ratio_of_medians"],
        "wall_speedup_per_round": {k: v for k, v in wall.items() if k != "ratio_of_medians"},
        "flop_speedup": round(flop_speedup, 4),
        "quotient": round(wall["ratio_of_medians"] / flop_speedup, 4),
        # the same from the per-round ratios: robust when the host changes speed mid-run (seen here: the full
        # network at batch 1 switching between ~70 and ~115 ms per repetition within one run)
        "quotient_per_round": round(wall["per_round_ratio_median"] / flop_speedup, 4),
        "cpu_time_speedup": ratio_stats(cpu["full"], cpu["threshold"])["ratio_of_medians"],
        "mean_units_per_block": [round(float(v), 3) for v in units.mean(0)],
        "flops_full": full_flops,
        "flops_threshold_mean": round(float(flops.mean()), 1),
    }
    if chunk is not None:  # both sides in chunks of ``chunk`` examples
        w = ratio_stats(times["full_chunked"], times["threshold_chunked"])["ratio_of_medians"]
        record["chunked"] = {"chunk_size": chunk, "wall_speedup": w, "quotient": round(w / flop_speedup, 4)}
    return record


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=32)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, nargs="+", default=[256], help="batch sizes besides 1 (always)")
    p.add_argument("--images", type=int, default=32, help="single images per timed repetition at batch 1")
    p.add_argument("--hazard", type=float, default=0.35, help="fraction of running examples halting per head")
    p.add_argument(
        "--checkpoint", default=None, help="a pact-pyro run directory (instead of calibrated heads)"
    )
    p.add_argument(
        "--chunk", type=int, default=64, help="also time chunks of CHUNK at the large batch (0: no)"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (depth 14, 16x16, batch 8, 2 reps)")
    args = p.parse_args(argv)
    if args.smoke:
        args.depth, args.size, args.batch, args.images, args.reps, args.warmup = 14, 16, [8], 4, 2, 1
        args.chunk = 3
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup(args.threads)
    model, guide, images = build(args)
    table = FlopTable.for_model(model, tuple(images.shape[1:]), guide)
    record = {"benchmark": "inference", "goal": "quotient >= 0.85 at batch 1 and 256"}
    singles = [images[i : i + 1] for i in range(args.images)]
    record["batch_1"] = measure(model, guide, singles, table, args.reps, args.warmup)
    for B in args.batch:  # the chunked sides at the largest batch only
        chunk = (args.chunk or None) if B == max(args.batch) else None
        record[f"batch_{B}"] = measure(model, guide, [images[:B]], table, args.reps, args.warmup, chunk)
    record["settings"] = {
        k: getattr(args, k)
        for k in ("depth", "size", "batch", "images", "hazard", "checkpoint", "reps", "chunk", "smoke")
    }
    record["env"] = environment(args.threads)
    emit(record)
    return record


if __name__ == "__main__":
    main()
