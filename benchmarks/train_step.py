"""One training step of PACT (Pyro SVI + MAP objective) against one step of the plain ResNet.

Sides, all on the same random CIFAR-shaped batch ``x [B, 3, 32, 32]``, ``y [B]``, interleaved in one process:

* ``plain``: ``ResNetBackbone`` (same depth), ``F.cross_entropy``, ``torch.optim.<opt>`` over its parameters;
  ``zero_grad → forward → backward → step``.
* ``pact``: ``pyro.infer.SVI(model.model, guide, pyro.optim.<opt>, loss=pact_pyro.MAPObjective()).step(x, y)``
  with the :class:`~pact_pyro.guides.RelaxedBernoulliGuide` (a ``GuideMessenger``: one backbone pass; the
  loss is ``-(log p(y | x, z) + log p(z)) / B`` with ``z`` the guide's relaxed sample) and Pyro's stock
  optimizer wrapper ``pyro.optim.PyroOptim(torch.optim.<opt>)`` (one torch optimizer per parameter tensor);
* ``pact_single``: the same with :class:`pact_pyro.optim.SingleOptimizer` (one torch optimizer over all
  tensors, as in the plain loop);
* ``plain_compiled``, ``pact_single_compiled`` (``--compile``): both with
  :meth:`~pact_pyro.nn.ResNetBackbone.compile_units` (``torch.compile`` of every residual branch), in their
  own interleaved pass with ``plain`` (key ``compiled``);
* ``pact_extra_fused`` (``--bound``): not a training step but the least tensor work the relaxed mixture and
  the halting heads add to one, for this depth, batch and image size (:func:`extra_fused`: two fused,
  compiled passes per mixture residual). Timed beside ``plain_compiled`` (``plain`` without ``--compile``):
  ``1 + extra / plain_compiled`` is a floor under compiled PACT / compiled plain for any implementation of
  this arithmetic on the host, before the heads' own small ops and Pyro's per-step work;
* ``pact_replay`` (``--replay``): the same loss with a plain-function guide that recomputes the backbone to
  get the head inputs; ``MAPObjective`` traces it and replays the model (two backbone passes per step).
  Timed in a second interleaved pass against ``plain`` (key ``replay``): its larger memory footprint changes
  the allocator's state for whatever runs next.

Prints one JSON line: per-side medians/quartiles (ms), ``pact / plain`` and ``pact_replay / plain`` ratios
(goal: <= 1.10), minor page faults per step, the settings and the environment. Smoke mode: ``--smoke``.

Usage: ``python benchmarks/train_step.py --threads 2 --reps 20 [--replay] [--compile] [--bound] [--profile]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import pyro
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit, environment, interleaved, ratio_stats, setup, side_stats  # noqa: E402
from pact_pyro.guides import get_guide  # noqa: E402
from pact_pyro.models import pact_resnet  # noqa: E402

from pact_pyro.halting import mix_residuals, still_running  # noqa: E402
from pact_pyro.nn import ResNetBackbone, resnet_units_per_block  # noqa: E402
from pact_pyro.objective import MAPObjective, backward_once  # noqa: E402
from pact_pyro.optim import SingleOptimizer  # noqa: E402
from pact_pyro.sites import DATA_PLATE, halting_site  # noqa: E402

OPTIMIZERS = {
    "adam": (torch.optim.Adam, {"lr": 1e-3}),
    "sgd": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
}


def replay_guide(model, guide):
    """A plain-function guide (not a ``GuideMessenger``) over ``guide``'s heads: it recomputes the backbone
    (with the relaxed mixture, so later blocks see the same input as in the model) and samples every ``z_b``.
    """

    def fn(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        net = pyro.module(model.pyro_id, model.backbone)
        pyro.module(guide.pyro_id, guide.heads)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            u = net.stem(x)
            for b, block in enumerate(net.blocks):
                u = block[0](u)
                first, residuals, logits = u, [], []
                for l in range(1, len(block)):
                    logits.append(guide.halting_logits(b, l - 1, u))
                    f = block[l].residual(u)
                    residuals.append(f)
                    u = u + f
                if len(block) == 1:
                    continue
                z = pyro.sample(halting_site(b), guide.posterior(torch.stack(logits, -1)))
                u = mix_residuals(first, residuals, still_running(z))

    return fn


def extra_fused(depth: int, batch: int, size: int, widths=(16, 32, 64)):
    """The least tensor work PACT adds to a plain step (``--bound``), each pass fused and compiled: per block
    ``b`` (``L = n`` units, state ``[B, C_b, H_b, W_b]``) and each of its ``L - 1`` mixture residuals ``F_k``,
    the forward ``out + e_k F_k`` (``e`` is known only after the block's last head, so this pass cannot join
    the chain ``u + F``) and one backward pass giving ``∂F_k = a + e_k g + ∂mean / (H W)`` (the halting head's
    gradient folded in) and ``<g, F_k>``. The heads' spatial means are left out (they could ride on the chain
    ``u + F``, which the plain step runs too), as are the heads' small ops and Pyro's per-step work.
    Returns a callable running one step's worth of it on fixed random tensors."""

    def mix_forward(out, f, e):
        return out + e.view(-1, 1, 1, 1) * f

    def mix_backward(a, g, f, e, gm):
        head = (gm / (a.shape[2] * a.shape[3]))[:, :, None, None]
        return a + e.view(-1, 1, 1, 1) * g + head, (g * f).sum((1, 2, 3))

    forward, backward = (torch.compile(f, dynamic=False) for f in (mix_forward, mix_backward))
    n = resnet_units_per_block(depth)
    tensors = []
    for b, c in enumerate(widths):
        side = -(-size // 2**b)
        for _ in range(n - 1):
            a, f, g = (torch.randn(batch, c, side, side) for _ in range(3))
            tensors.append((a, f, g, torch.rand(batch), torch.randn(batch, c)))

    def step() -> None:
        for a, f, g, e, gm in tensors:
            forward(a, f, e)
            backward(a, g, f, e, gm)

    return step


def build(args):
    n = resnet_units_per_block(args.depth)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    opt_cls, opt_args = OPTIMIZERS[args.optimizer]

    plain = ResNetBackbone([n, n, n])
    plain.train()
    plain_opt = opt_cls(plain.parameters(), **opt_args)

    def plain_step():
        plain_opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(plain(x), y)
        loss.backward()
        plain_opt.step()
        return loss.detach().item()

    fns = {"plain": plain_step}
    pyro.clear_param_store()
    model = pact_resnet(args.depth)
    guide = get_guide("relaxed", model)
    model.train()
    guide.train()
    svi = pyro.infer.SVI(
        model.model, guide, pyro.optim.PyroOptim(opt_cls, dict(opt_args)), loss=MAPObjective()
    )
    fns["pact"] = lambda: svi.step(x, y)
    model_s = pact_resnet(args.depth)
    guide_s = get_guide("relaxed", model_s)
    svi_s = pyro.infer.SVI(
        model_s.model, guide_s, SingleOptimizer(opt_cls, dict(opt_args)), loss=MAPObjective()
    )
    fns["pact_single"] = lambda: svi_s.step(x, y)
    if args.compile:  # ResNetBackbone.compile_units on fresh copies of both networks
        plain_c = ResNetBackbone([n, n, n]).compile_units()
        plain_c.train()
        opt_c = opt_cls(plain_c.parameters(), **opt_args)

        def plain_compiled():
            opt_c.zero_grad(set_to_none=True)
            F.cross_entropy(plain_c(x), y).backward()
            opt_c.step()

        model_c = pact_resnet(args.depth)
        model_c.backbone.compile_units()
        guide_c = get_guide("relaxed", model_c)
        objective = MAPObjective()  # compiled backward graphs refuse SVI's retain_graph: backward_once
        svi_c = pyro.infer.SVI(
            model_c.model,
            guide_c,
            SingleOptimizer(opt_cls, dict(opt_args)),
            objective,
            backward_once(objective.differentiable_loss),
        )
        fns["plain_compiled"] = plain_compiled
        fns["pact_single_compiled"] = lambda: svi_c.step(x, y)
    if args.bound:
        fns["pact_extra_fused"] = extra_fused(args.depth, args.batch, args.size)
    if args.replay:
        model_r = pact_resnet(args.depth)
        guide_r = get_guide("relaxed", model_r)
        svi_r = pyro.infer.SVI(
            model_r.model,
            replay_guide(model_r, guide_r),
            pyro.optim.PyroOptim(opt_cls, dict(opt_args)),
            loss=MAPObjective(),
        )
        fns["pact_replay"] = lambda: svi_r.step(x, y)
    return fns


def profile(fns, reps: int) -> None:
    """Print torch.profiler tables (self CPU time) for each side to stderr."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    for name, fn in fns.items():
        fn()
        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(reps):
                fn()
        sys.stderr.write(f"\n=== {name} ({reps} steps) ===\n")
        sys.stderr.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=32)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32, help="image height = width (CIFAR: 32)")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--replay", action="store_true", help="also time the trace/replay guide variant")
    p.add_argument("--compile", action="store_true", help="also time both with ResNetBackbone.compile_units")
    p.add_argument(
        "--bound", action="store_true", help="also time PACT's extra tensor work, fused (a ratio bound)"
    )
    p.add_argument("--profile", type=int, default=0, metavar="N", help="profile N steps per side to stderr")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (depth 8, batch 4, 16x16, 2 reps)")
    args = p.parse_args(argv)
    if args.smoke:
        args.depth, args.batch, args.size, args.reps, args.warmup = 8, 4, 16, 2, 1
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup(args.threads)
    pyro.enable_validation(False)  # training runs without validation (as pact-pyro train does)
    fns = build(args)
    if args.profile:
        profile(fns, args.profile)
    replay = fns.pop("pact_replay", None)
    compiled = {k: fns.pop(k) for k in ("plain_compiled", "pact_single_compiled") if k in fns}
    extra = fns.pop("pact_extra_fused", None)
    cpu: dict = {}
    faults: dict = {}
    times = interleaved(fns, args.reps, args.warmup, cpu, faults)
    record = {
        "benchmark": "train_step",
        "sides": {k: side_stats(v) for k, v in times.items()},
        "pact_over_plain": ratio_stats(times["pact"], times["plain"]),
        "goal": "pact_over_plain.ratio_of_medians <= 1.10",
    }
    record["pact_single_over_plain"] = ratio_stats(times["pact_single"], times["plain"])
    record["cpu_time"] = {  # process CPU time (all threads): a cross-check less exposed to other processes
        "sides": {k: side_stats(v) for k, v in cpu.items()},
        **{
            f"{k}_over_plain": ratio_stats(v, cpu["plain"])["ratio_of_medians"]
            for k, v in cpu.items()
            if k != "plain"
        },
    }
    record["minor_page_faults_per_step"] = {k: int(statistics.median(v)) for k, v in faults.items()}
    if compiled:  # their own pass, after compilation in the warm-up
        ct = interleaved({"plain": fns["plain"], **compiled}, args.reps, args.warmup)
        record["compiled"] = {
            "sides": {k: side_stats(v) for k, v in ct.items()},
            "pact_single_compiled_over_plain_compiled": ratio_stats(
                ct["pact_single_compiled"], ct["plain_compiled"]
            ),
            "plain_compiled_over_plain": ratio_stats(ct["plain_compiled"], ct["plain"]),
            "pact_single_compiled_over_plain": ratio_stats(ct["pact_single_compiled"], ct["plain"]),
        }
    if extra is not None:  # beside its reference: the compiled plain step when there is one
        ref = "plain_compiled" if compiled else "plain"
        bt = interleaved({ref: {**fns, **compiled}[ref], "pact_extra_fused": extra}, args.reps, args.warmup)
        share = statistics.median(bt["pact_extra_fused"]) / statistics.median(bt[ref])
        record["bound"] = {
            "sides": {k: side_stats(v) for k, v in bt.items()},
            "reference": ref,
            "extra_over_reference": round(share, 4),
            "smallest_pact_over_plain": round(1 + share, 4),
        }
    if replay is not None:  # its own interleaved pass: its larger footprint would perturb the sides above
        rt = interleaved({"plain": fns["plain"], "pact_replay": replay}, args.reps, args.warmup)
        record["replay"] = {
            "sides": {k: side_stats(v) for k, v in rt.items()},
            "pact_replay_over_plain": ratio_stats(rt["pact_replay"], rt["plain"]),
        }
    record["settings"] = {
        k: getattr(args, k) for k in ("depth", "batch", "size", "optimizer", "reps", "warmup", "smoke")
    }
    record["settings"]["guide"] = "relaxed (GuideMessenger)"
    record["env"] = environment(args.threads)
    emit(record)
    return record


if __name__ == "__main__":
    main()
