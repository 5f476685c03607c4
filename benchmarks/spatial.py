"""Wall-clock of sparse spatial halting (frozen positions computed only where needed) against SACT's dense
masked evaluation, at batch 1 and batch 64.

Sides, interleaved in one process, both under ``torch.no_grad`` with eval-mode BatchNorm, both through
:func:`pact_pyro.spatial_sparse.frozen_forward` with the same per-position unit counts ``N_b(i, j)``:

* ``dense``: every unit everywhere, the residual of unit ``l ≥ 2`` masked to the positions with
  ``N_b ≥ l`` (SACT's TensorFlow evaluation; its FLOP savings are not wall-clock savings);
* ``sparse``: the same update computed only at the active positions and their 3×3 dilation
  (``sparse=True``: gather + matmul per unit, dense above a density threshold, nothing when no position
  is active).

Both freeze the halted positions the same way, so their logits must agree (asserted within 1e-4). Each
runs on contiguous input and on channels-last input (sides ``dense_cl``, ``sparse_cl``): at batch 64 the
dense network is ~1.5x faster in channels-last (mkldnn), at batch 1 the layouts are about even, so the
headline compares the faster layout of each method (per round), and the same-layout ratios are reported too.

Network: ResNet-32 backbone (``ResNetBackbone([5, 5, 5])``, random weights, BatchNorm statistics set to
random values), CIFAR-shaped input. Halting maps: for each example and block a smooth random field (bicubic
upsampling of 3×3 Gaussian noise), whose level sets give nested blobs: position ``p`` runs unit ``l ≥ 2`` iff
its rank in the field is in the top fraction ``p_l = min(1, c·(L + 1 - l) / (L - 1))``; ``c`` is set by
bisection so that the fraction ``--executed`` (0.5) of the FLOPs of the units ``l ≥ 2`` is executed by
SACT's counting (conv1 at the dilated mask, conv2 at the mask).

Reported per batch size: wall-clock speedup ``t_dense / t_sparse`` (faster layout of each; ratio of
medians, plus the per-round spread), FLOP speedup ``FLOPs_dense / FLOPs_sparse`` (SACT counting: stem,
unit 1 of each block and the classifier in full) and their quotient (goal ≥ 0.5 at batch 1). Batch 1:
one timed repetition evaluates ``--images`` single images one at a time (the same images and maps on both
sides); batch B: one call.
``--profile`` prints the top ``torch.profiler`` ops of the sparse side at batch 1 to stderr.

Usage: ``python benchmarks/spatial.py --threads 2 --reps 20 [--batch 1 64] [--profile]``
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit, environment, interleaved, ratio_stats, setup, side_stats  # noqa: E402

from pact_pyro.nn import ResNetBackbone  # noqa: E402
from pact_pyro.spatial_sparse import frozen_flops, frozen_forward, sparse_conv_flops  # noqa: E402


def build(args) -> ResNetBackbone:
    """ResNet backbone in eval mode with random (non-trivial) BatchNorm statistics and affine parameters."""
    net = ResNetBackbone([args.units] * 3)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                m.weight.copy_(0.5 + 0.5 * torch.rand(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))
    return net.eval()


def block_shapes(net: ResNetBackbone, size: int) -> list[tuple[int, int]]:
    """``(H_b, W_b)`` of each block for a ``size × size`` input."""
    with torch.no_grad():
        u = net.stem(torch.zeros(1, net.in_channels, size, size))
        shapes = []
        for block in net.blocks:
            u = block[0](u)
            shapes.append(tuple(u.shape[2:]))
    return shapes


def smooth_ranks(B: int, H: int, W: int, gen: torch.Generator) -> torch.Tensor:
    """Per example, the rank of each position in a smooth random field, in ``[0, 1)`` ``[B, H, W]``
    (0: highest field value)."""
    field = F.interpolate(torch.randn(B, 1, 3, 3, generator=gen), size=(H, W), mode="bicubic")
    order = field.reshape(B, -1).argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(H * W).expand(B, -1))
    return (ranks.float() / (H * W)).reshape(B, H, W)


def units_maps(ranks: list[torch.Tensor], L: int, c: float) -> list[torch.Tensor]:
    """int64 ``[B, H_b, W_b]`` per block: ``N = 1 + #{l ≥ 2 : rank < p_l}``,
    ``p_l = min(1, c·(L + 1 - l) / (L - 1))``."""
    maps = []
    for r in ranks:
        n = torch.ones(r.shape, dtype=torch.int64)
        for l in range(2, L + 1):
            n += (r < min(1.0, c * (L + 1 - l) / max(L - 1, 1))).long()
        maps.append(n)
    return maps


def halting_fraction(net: ResNetBackbone, maps: list[torch.Tensor]) -> float:
    """Fraction of the FLOPs of units ``l ≥ 2`` executed by SACT's counting."""
    done = full = 0
    for block, m in zip(net.blocks, maps, strict=True):
        for l in range(2, len(block) + 1):
            done += sparse_conv_flops(block[l - 1], m >= l)
            full += sparse_conv_flops(block[l - 1], torch.ones_like(m, dtype=torch.bool))
    return done / full


def make_maps(
    net: ResNetBackbone, shapes, B: int, executed: float, gen: torch.Generator
) -> list[torch.Tensor]:
    """Halting maps of ``B`` examples with ``executed`` of the halting units' FLOPs (bisection on ``c``)."""
    ranks = [smooth_ranks(B, h, w, gen) for h, w in shapes]
    L = net.units_per_block[0]
    lo, hi = 0.0, 2.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if halting_fraction(net, units_maps(ranks, L, mid)) < executed:
            lo = mid
        else:
            hi = mid
    return units_maps(ranks, L, (lo + hi) / 2)


def measure(net, xs: list[torch.Tensor], maps: list[list[torch.Tensor]], reps: int, warmup: int) -> dict:
    """Time the dense masked and the sparse evaluation over the inputs ``xs`` with their maps (one
    repetition = every input), each with contiguous (``dense``, ``sparse``) and channels-last input
    (``dense_cl``, ``sparse_cl``): the headline compares the faster layout of each (per round: the faster
    of the two in that round)."""
    xs_cl = [x.contiguous(memory_format=torch.channels_last) for x in xs]

    def side(sparse: bool, inputs: list[torch.Tensor]):
        return lambda: [frozen_forward(net, x, m, sparse) for x, m in zip(inputs, maps, strict=True)]

    sides = {
        "dense": side(False, xs),
        "dense_cl": side(False, xs_cl),
        "sparse": side(True, xs),
        "sparse_cl": side(True, xs_cl),
    }
    outs = {k: f() for k, f in sides.items()}
    err = max(float((d - s).abs().max()) for k in outs for d, s in zip(outs["dense"], outs[k], strict=True))
    assert err <= 1e-4, f"sparse and dense masked logits differ by {err}"
    cpu: dict = {}
    times = interleaved(sides, reps, warmup, cpu)
    best = {  # per round, the faster layout of each method
        m: [min(a, b) for a, b in zip(times[m], times[f"{m}_cl"], strict=True)] for m in ("dense", "sparse")
    }
    best_cpu = {m: [min(a, b) for a, b in zip(cpu[m], cpu[f"{m}_cl"], strict=True)] for m in best}
    flops = [frozen_flops(net, x, m) for x, m in zip(xs, maps, strict=True)]
    f_dense, f_sparse = sum(f[0] for f in flops), sum(f[1] for f in flops)
    # FLOPs when every position runs unit 1 only (stem, units 1, classifier)
    f_unit1 = sum(
        frozen_flops(net, x, [torch.ones_like(mb) for mb in m])[1] for x, m in zip(xs, maps, strict=True)
    )
    wall = ratio_stats(best["dense"], best["sparse"])
    flop_speedup = f_dense / f_sparse
    return {
        "sides": {k: side_stats(v) for k, v in times.items()},
        "wall_speedup": wall["ratio_of_medians"],
        "wall_speedup_per_round": {k: v for k, v in wall.items() if k != "ratio_of_medians"},
        "wall_speedup_same_layout": {
            "contiguous": ratio_stats(times["dense"], times["sparse"])["ratio_of_medians"],
            "channels_last": ratio_stats(times["dense_cl"], times["sparse_cl"])["ratio_of_medians"],
        },
        "flop_speedup": round(flop_speedup, 4),
        "quotient": round(wall["ratio_of_medians"] / flop_speedup, 4),
        "quotient_per_round": round(wall["per_round_ratio_median"] / flop_speedup, 4),
        "cpu_time_speedup": ratio_stats(best_cpu["dense"], best_cpu["sparse"])["ratio_of_medians"],
        "flops_dense": f_dense,
        "flops_sparse": f_sparse,
        # executed share of the FLOPs of the halting units (l >= 2)
        "halting_unit_flops_executed": round((f_sparse - f_unit1) / (f_dense - f_unit1), 4),
        "max_abs_logit_diff": err,
        "mean_units_per_block": [
            round(float(torch.cat([m[b].flatten().double() for m in maps]).mean()), 3) for b in range(3)
        ],
    }


def profile_sparse(net, xs, maps, top: int = 20) -> None:
    """Print the top ``torch.profiler`` ops (self CPU time) of the sparse side to stderr."""
    from torch.profiler import ProfilerActivity, profile

    for x, m in zip(xs, maps, strict=True):
        frozen_forward(net, x, m, True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for x, m in zip(xs, maps, strict=True):
            frozen_forward(net, x, m, True)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    sys.stderr.write(f"sparse side at batch 1, {len(xs)} images:\n{table}\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--units", type=int, default=5, help="units per block (5: ResNet-32)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    p.add_argument("--images", type=int, default=16, help="single images per timed repetition at batch 1")
    p.add_argument("--executed", type=float, default=0.5, help="share of the halting units' FLOPs executed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="print top torch.profiler ops (sparse, batch 1)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (2 units, 16x16, batch 1 and 4, 2 reps)")
    args = p.parse_args(argv)
    if not 0.0 < args.executed <= 1.0:
        p.error(f"--executed must be in (0, 1], got {args.executed}")
    if args.smoke:
        args.units, args.size, args.batch, args.images, args.reps, args.warmup = 2, 16, [1, 4], 2, 2, 1
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup(args.threads)
    net = build(args)
    shapes = block_shapes(net, args.size)
    gen = torch.Generator().manual_seed(1)
    record = {"benchmark": "spatial", "goal": "quotient >= 0.5 at batch 1"}
    for B in args.batch:
        if B == 1:
            xs = [torch.randn(1, 3, args.size, args.size, generator=gen) for _ in range(args.images)]
            maps = [make_maps(net, shapes, 1, args.executed, gen) for _ in xs]
        else:
            xs = [torch.randn(B, 3, args.size, args.size, generator=gen)]
            maps = [make_maps(net, shapes, B, args.executed, gen)]
        m = measure(net, xs, maps, args.reps, args.warmup)
        record[f"batch_{B}"] = m
        ms = {k: v["median_ms"] for k, v in m["sides"].items()}
        sys.stderr.write(
            f"batch {B}: wall speedup {m['wall_speedup']:.3f}, FLOP speedup {m['flop_speedup']:.3f}, "
            f"quotient {m['quotient']:.3f} (per round {m['quotient_per_round']:.3f}); median ms: "
            + ", ".join(f"{k} {v:.2f}" for k, v in ms.items())
            + "\n"
        )
        if args.profile and B == 1:
            profile_sparse(net, xs, maps)
    record["settings"] = {
        k: getattr(args, k) for k in ("units", "size", "batch", "images", "executed", "reps", "smoke")
    }
    record["env"] = environment(args.threads)
    emit(record)
    return record


if __name__ == "__main__":
    main()
