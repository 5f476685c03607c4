"""Wall-clock of PACT thresholding with real early exit against the full network, at batch sizes 1 to 256.

Sides, interleaved in one process, both under ``torch.no_grad`` with eval-mode BatchNorm:

* ``full``: ``model.backbone(x)``, every unit (no halting heads);
* ``threshold``: ``pact_pyro.threshold.threshold(model, guide, x)`` (a head after every executed unit
  ``l < L``, halt at ``h^l ≥ 0.5``; halted examples leave the running prefix of the batch);
* ``stream``: ``pact_pyro.stream.threshold_stream(model, guide, images, B)`` on the same images: the same
  decisions, with every unit run on ``B`` rows gathered across the consecutive batches (an evaluation loop's
  throughput; one batch's latency is no longer its own work), reported as its own quotient (key ``stream``);
* at the large batch also ``full_chunked`` and ``threshold_chunked`` (``--chunk`` examples per unit call on
  both sides; on CPU both run faster in cache-sized chunks, so their quotient is reported apart).

Network: PACT ResNet-32 on CIFAR-shaped input. With ``--checkpoint RUN_DIR`` a trained run (``pact-pyro
train``) is loaded and evaluated on that many test images; otherwise the randomly initialised network gets
its halting biases set (``calibrate_heads``) so that at each head 35% of the still-running examples halt:
about half the units run, and which ones depends on the input.

Batch sizes 1, 2, 4, …, 256 in one run (``--batch``). One timed repetition at batch ``B`` evaluates
``max(B, --images)`` (256) images as consecutive batches of ``B`` (the same images for every side), so small
batches see many halting patterns and the stream side has batches to refill from. Each side runs in each
memory format of ``--formats`` (NCHW, channels-last NHWC).

Reported per batch size: wall-clock speedup ``t_full / t_threshold`` with each side at its faster format
(ratio of medians, plus the per-round spread), FLOP speedup ``FLOPs_full / mean FLOPs_threshold`` (SACT
counting, heads included on the PACT side) and their quotient (goal >= 0.85 at every batch size); the
same-format quotients under ``per_format``; a table on stderr. ``--compile`` compiles every unit's residual
branch (``ResNetBackbone.compile_units(dynamic=True)``) for both sides.

Usage: ``python benchmarks/inference.py --threads 2 --reps 20 [--checkpoint RUN_DIR] [--compile]``
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import calibrate_heads, emit, environment, interleaved, ratio_stats, setup, side_stats  # noqa: E402

from pact_pyro.flops import FlopTable  # noqa: E402
from pact_pyro.stream import threshold_stream  # noqa: E402
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


FORMATS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}


def _best(times: dict[str, list[float]], prefix: str, formats) -> tuple[str, list[float]]:
    """The memory format whose ``prefix`` side has the lower median, and its times."""
    fmt = min(formats, key=lambda f: sorted(times[f"{prefix}_{f}"])[len(times[f"{prefix}_{f}"]) // 2])
    return fmt, times[f"{prefix}_{fmt}"]


def measure(
    model,
    guide,
    xs: list[torch.Tensor],
    table: FlopTable,
    reps: int,
    warmup: int,
    chunk: int | None = None,
    formats: tuple[str, ...] = ("nchw", "nhwc"),
) -> dict:
    """Time ``full`` vs ``threshold`` over the list of inputs ``xs`` (one repetition = every input once), in
    every memory format of ``formats`` (sides ``full_<fmt>``, ``threshold_<fmt>``). The headline compares
    each side at its own best format (``wall_speedup``, ``quotient``); ``per_format`` has the same-format
    ratios. With ``chunk``, also ``threshold(..., chunk_size=chunk)`` against the full network run in chunks
    of the same size, in the first format (sides ``threshold_chunked``, ``full_chunked``)."""
    net = model.backbone
    inputs = {f: [x.contiguous(memory_format=FORMATS[f]) for x in xs] for f in formats}

    @torch.no_grad()
    def full(xs_f, c=None):
        for x in xs_f:
            if c is None:
                net(x)
            else:  # the plain network in chunks of c examples (CPU caches favour it as they favour PACT's)
                for i in range(0, x.shape[0], c):
                    net(x[i : i + c])

    def thr(xs_f, c=None):
        for x in xs_f:
            threshold(model, guide, x, flop_table=table, chunk_size=c)

    B = xs[0].shape[0]
    stream_in = {f: torch.cat(inputs[f]).contiguous(memory_format=FORMATS[f]) for f in formats}

    net.eval()
    guide.eval()
    cpu: dict = {}
    sides = {}
    for f in formats:
        sides[f"full_{f}"] = lambda f=f: full(inputs[f])
        sides[f"threshold_{f}"] = lambda f=f: thr(inputs[f])
        sides[f"stream_{f}"] = lambda f=f: threshold_stream(model, guide, stream_in[f], B, flop_table=table)
    if chunk is not None:
        sides["full_chunked"] = lambda: full(inputs[formats[0]], chunk)
        sides["threshold_chunked"] = lambda: thr(inputs[formats[0]], chunk)
    times = interleaved(sides, reps, warmup, cpu)
    results = [threshold(model, guide, x, flop_table=table) for x in xs]
    flops = torch.cat([r.flops for r in results]).double()
    units = torch.cat([r.units for r in results]).double()
    full_flops = table.stem + table.classifier + sum(map(sum, table.units))
    flop_speedup = full_flops / float(flops.mean())
    per_format = {}
    for f in formats:
        w = ratio_stats(times[f"full_{f}"], times[f"threshold_{f}"])
        per_format[f] = {
            "wall_speedup": w["ratio_of_medians"],
            "quotient": round(w["ratio_of_medians"] / flop_speedup, 4),
            "quotient_per_round": round(w["per_round_ratio_median"] / flop_speedup, 4),
        }
    full_fmt, full_t = _best(times, "full", formats)
    thr_fmt, thr_t = _best(times, "threshold", formats)
    wall = ratio_stats(full_t, thr_t)  # t_full / t_threshold, each at its best format
    record = {
        "sides": {k: side_stats(v) for k, v in times.items()},
        "best_format": {"full": full_fmt, "threshold": thr_fmt},
        "wall_speedup": wall["ratio_of_medians"],
        "wall_speedup_per_round": {k: v for k, v in wall.items() if k != "ratio_of_medians"},
        "flop_speedup": round(flop_speedup, 4),
        "quotient": round(wall["ratio_of_medians"] / flop_speedup, 4),
        # the same from the per-round ratios: robust when the host changes speed mid-run (seen here: the full
        # network at batch 1 switching between ~70 and ~115 ms per repetition within one run)
        "quotient_per_round": round(wall["per_round_ratio_median"] / flop_speedup, 4),
        "per_format": per_format,
        "cpu_time_speedup": ratio_stats(cpu[f"full_{full_fmt}"], cpu[f"threshold_{thr_fmt}"])[
            "ratio_of_medians"
        ],
        "mean_units_per_block": [round(float(v), 3) for v in units.mean(0)],
        "flops_full": full_flops,
        "flops_threshold_mean": round(float(flops.mean()), 1),
    }
    stream_fmt, stream_t = _best(times, "stream", formats)
    w = ratio_stats(full_t, stream_t)
    record["stream"] = {
        "format": stream_fmt,
        "wall_speedup": w["ratio_of_medians"],
        "quotient": round(w["ratio_of_medians"] / flop_speedup, 4),
        "quotient_per_round": round(w["per_round_ratio_median"] / flop_speedup, 4),
    }
    if chunk is not None:  # both sides in chunks of ``chunk`` examples
        w = ratio_stats(times["full_chunked"], times["threshold_chunked"])["ratio_of_medians"]
        record["chunked"] = {"chunk_size": chunk, "wall_speedup": w, "quotient": round(w / flop_speedup, 4)}
    return record


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=32)
    p.add_argument("--size", type=int, default=32)
    p.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=[2, 4, 8, 16, 32, 64, 128, 256],
        help="batch sizes besides 1 (always)",
    )
    p.add_argument(
        "--images",
        type=int,
        default=256,
        help="images per timed repetition at smaller batch sizes (IMAGES / B calls of batch B)",
    )
    p.add_argument("--formats", nargs="+", default=["nchw", "nhwc"], choices=sorted(FORMATS))
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile every unit's residual branch (dynamic shapes) for both sides",
    )
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
        args.depth, args.size, args.batch, args.images, args.reps, args.warmup = 14, 16, [2, 8], 4, 2, 1
        args.chunk = 3
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup(args.threads)
    model, guide, images = build(args)
    if args.compile:
        model.backbone.compile_units(dynamic=True)
    table = FlopTable.for_model(model, tuple(images.shape[1:]), guide)
    record = {"benchmark": "inference", "goal": "quotient >= 0.85 at every batch size"}
    formats = tuple(args.formats)
    rows = []
    for B in [1, *args.batch]:  # the chunked sides at the largest batch only
        chunk = (args.chunk or None) if B == max(args.batch) and B > 1 else None
        n = max(B, args.images)
        xs = [images[i : i + B] for i in range(0, n - B + 1, B)]
        m = measure(model, guide, xs, table, args.reps, args.warmup, chunk, formats)
        record[f"batch_{B}"] = m
        rows.append(
            f"{B:>5} {m['flop_speedup']:>6.2f} {m['wall_speedup']:>6.2f} {m['quotient']:>6.3f} "
            + " ".join(f"{m['per_format'][f]['quotient']:>6.3f}" for f in formats)
            + f"  {m['best_format']['full']}/{m['best_format']['threshold']}"
            + f"  {m['stream']['quotient']:>6.3f}"
        )
    record["settings"] = {
        k: getattr(args, k)
        for k in ("depth", "size", "batch", "images", "hazard", "checkpoint", "reps", "chunk", "smoke")
    }
    record["settings"].update(formats=list(formats), compile=args.compile)
    record["env"] = environment(args.threads)
    head = "batch  FLOP×  wall×  quot. " + " ".join(f"{f:>6}" for f in formats) + "  best full/threshold"
    head += "  stream quot."
    print(head + "\n" + "\n".join(rows), file=sys.stderr)
    emit(record)
    return record


if __name__ == "__main__":
    main()
