"""``pact-pyro`` command line: ``train``, ``evaluate``, ``flops``.

User errors (bad flags, missing data, an existing run directory) print one line ``pact-pyro: error: …`` and
exit with status 2; nothing on disk is overwritten.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]


def _positive_float(text: str) -> float:
    return float(text)


_SEQ_FLAGS = [
    ("--bits", int, "parity vector length"),
    ("--seq-len", int, "addition: numbers per sequence"),
    ("--digits", int, "addition: digits per number"),
    ("--max-ponder", int, "ponder steps M per input step"),
    ("--hidden-size", int, "LSTM hidden size"),
    ("--steps", int, "training steps"),
    ("--tau-ramp-steps", int, "steps of the linear ramp of τ from 0"),
    ("--tau-start-accuracy", float, "validation accuracy that starts the τ ramp (0: step 0)"),
    ("--eval-every", int, "steps between validations (they decide when the τ ramp starts)"),
]


def build_parser() -> argparse.ArgumentParser:
    """The ``pact-pyro`` argument parser (commands ``train``, ``evaluate``, ``flops``, ``report``)."""
    from .train import TrainConfig

    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="pact-pyro",
        description="Probabilistic Adaptive Computation Time (PACT) in Pyro: train, evaluate, count FLOPs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train",
        help="train a model and evaluate it by thresholding",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t.add_argument(
        "--dataset", default=d.dataset, help="mnist, fashion-mnist, cifar10, or imagefolder (--data-root DIR)"
    )
    t.add_argument("--depth", type=int, default=d.depth, help="ResNet depth 6n+2 (3 blocks of n units)")
    t.add_argument(
        "--method",
        default=d.method,
        help="pact (halting latents), act, plain, spatial-pact (per-position latents), sact (spatial ACT)",
    )
    t.add_argument(
        "--arch",
        default=None,
        help="preact (the CIFAR ResNet of --depth; default) or a torchvision ResNet: resnet18/34/50/101/152; "
        "with --task: the recurrent architecture (lstm)",
    )
    t.add_argument(
        "--weights",
        default=None,
        help="torchvision archs: a state_dict file or a weights name (e.g. ResNet50_Weights.IMAGENET1K_V2)",
    )
    t.add_argument(
        "--num-classes", type=int, default=None, help="imagefolder: classes (default: the folders)"
    )
    t.add_argument(
        "--image-size", type=int, default=d.image_size, help="imagefolder: side of the square crops"
    )
    t.add_argument("--workers", type=int, default=d.workers, help="imagefolder: DataLoader worker processes")
    t.add_argument("--prior", default=d.prior, help="computation prior p(N): geometric, uniform or poisson")
    t.add_argument(
        "--tau", type=float, default=d.tau, help="time penalty τ of the geometric prior (nats per unit)"
    )
    t.add_argument(
        "--poisson-rate", type=float, default=d.poisson_rate, help="rate of the truncated Poisson prior"
    )
    t.add_argument("--guide", default=d.guide, help="relaxed (Concrete) or straight-through")
    t.add_argument("--temperature", type=float, default=d.temperature, help="Concrete temperature λ")
    t.add_argument(
        "--tau-warmup",
        type=float,
        default=d.tau_warmup,
        help="fraction of training over which the prior's weight ramps from 0 to 1",
    )
    t.add_argument(
        "--particles", type=int, default=d.particles, help="relaxed samples of z per example per step"
    )
    t.add_argument("--epochs", type=float, default=d.epochs, help="training epochs (fractions allowed)")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="minibatch size")
    t.add_argument(
        "--optimizer", default=d.optimizer, help="adam (one-cycle LR) or sgd (momentum, step decay)"
    )
    t.add_argument(
        "--schedule",
        default=d.schedule,
        help="LR schedule: auto (adam: one-cycle, sgd: step decay at 60/75/90%%) or cosine (warm-up, cosine)",
    )
    t.add_argument("--lr", type=float, default=d.lr, help="(peak) learning rate")
    t.add_argument(
        "--lr-warmup", type=float, default=d.lr_warmup, help="cosine schedule: fraction of linear LR warm-up"
    )
    t.add_argument(
        "--head-lr-mult",
        type=float,
        default=d.head_lr_mult,
        help="cosine schedule: learning-rate multiplier of the halting heads",
    )
    t.add_argument(
        "--init-from",
        default=None,
        help="fine-tune: start the backbone from a run directory or a backbone state_dict file "
        "(halting heads start fresh)",
    )
    t.add_argument("--channels-last", action="store_true", help="NHWC inputs: faster convolutions on CPU")
    t.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2 weight decay")
    t.add_argument("--augment", action="store_true", help="random crop and flip (CIFAR)")
    t.add_argument(
        "--train-subset", type=int, default=None, help="train on a fixed random subset of this size"
    )
    t.add_argument(
        "--test-subset", type=int, default=None, help="evaluate on a fixed random subset of this size"
    )
    t.add_argument("--seed", type=int, default=d.seed, help="random seed")
    t.add_argument("--device", default=d.device, help="auto (CUDA when present), cpu or cuda")
    t.add_argument("--data-root", default=None, help="dataset folder (default: $PACT_PYRO_DATA, else ./data)")
    t.add_argument("--out", required=True, help="run directory to create")
    t.add_argument(
        "--task",
        default=None,
        help="synthetic sequence task (parity or addition): train a recurrent model (pact_pyro.train_seq)",
    )
    for flag, kind, text in _SEQ_FLAGS:
        t.add_argument(flag, type=kind, default=None, help=f"--task runs: {text} (default: the task preset)")
    t.add_argument("--overwrite", action="store_true", help="allow writing into an existing non-empty --out")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue --out from its checkpoint (same settings; bit-identical final weights on CPU)",
    )
    t.add_argument(
        "--checkpoint-every",
        type=int,
        default=d.checkpoint_every,
        help="steps between checkpoints (0: end of each epoch only)",
    )
    t.add_argument("--amp", action="store_true", help="bf16 autocast of the forward pass (CUDA only)")
    t.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the units' residual branches (~20%% faster CPU steps after ~25 s compiling)",
    )
    t.add_argument("--log-every", type=int, default=d.log_every, help="steps between metrics.jsonl records")
    t.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation after training")
    t.add_argument("--no-progress", action="store_true", help="hide progress bars")

    e = sub.add_parser(
        "evaluate",
        help="evaluate a run directory on the test set, print JSON",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    e.add_argument("run_dir", help="a run directory written by train")
    e.add_argument("--mode", default="threshold", help="threshold (deterministic) or sample (z ~ q)")
    e.add_argument("--threshold", type=float, default=0.5, help="halting threshold on h")
    e.add_argument(
        "--predictions", default=None, help="write per-example label, prediction and units to this CSV"
    )
    e.add_argument(
        "--data-root", default=None, help="dataset folder (default: the run's, $PACT_PYRO_DATA, ./data)"
    )
    e.add_argument("--test-subset", type=int, default=None, help="evaluate on a fixed random subset")
    e.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    e.add_argument("--seed", type=int, default=0, help="seed of sampled evaluation")
    e.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="at most this many examples per unit call (about one block state of memory; faster on CPU)",
    )
    e.add_argument("--device", default="auto", help="auto, cpu or cuda")
    e.add_argument("--no-progress", action="store_true", help="hide progress bars")

    f = sub.add_parser(
        "flops",
        help="FLOPs of a network by SACT's rules, print JSON",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    f.add_argument(
        "--dataset", default="cifar10", help="mnist, fashion-mnist or cifar10 (sets the input shape)"
    )
    f.add_argument("--depth", type=int, default=32, help="ResNet depth 6n+2")
    f.add_argument(
        "--method", default="pact", help="pact/act/spatial-pact/sact (with halting heads) or plain"
    )
    r = sub.add_parser(
        "report",
        help="diagnostic plots and a Markdown/HTML summary of a PACT or spatial-PACT run (ponder maps)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    r.add_argument("run_dir", help="a run directory written by train")
    r.add_argument("--out", default=None, help="report folder (default: RUN_DIR/report)")
    r.add_argument(
        "--test-subset", type=int, default=2000, help="fixed random test subset (0: whole test set)"
    )
    r.add_argument("--num-samples", type=int, default=8, help="draws z ~ q per test example")
    r.add_argument(
        "--sweep", nargs="*", default=None, help="sweep CSVs to plot (default: every CSV in results/)"
    )
    r.add_argument("--data-root", default=None, help="dataset folder (default: the run's, $PACT_PYRO_DATA)")
    r.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    r.add_argument("--seed", type=int, default=0, help="seed of the draws")
    r.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    return p


def _evaluate(
    run_dir,
    mode,
    thr,
    predictions,
    data_root,
    test_subset,
    batch_size,
    seed,
    device,
    progress,
    chunk_size=None,
) -> dict:
    from .early_exit import check_chunk_size
    from .threshold import _check_mode
    from .train_seq import evaluate_seq_run, is_seq_run

    _check_mode(thr, mode)  # before any loading
    check_chunk_size(chunk_size)
    if is_seq_run(run_dir):  # a --task run: its seeded test set, per-example difficulty in --predictions
        return evaluate_seq_run(run_dir, mode, thr, predictions, test_subset, batch_size, seed)
    from .evaluate import evaluate
    from .train import load_images, load_run

    model, guide, cfg = load_run(run_dir, device)
    data = load_images(cfg, False, data_root).subset(test_subset, 0)
    return evaluate(model, guide, data, mode, thr, batch_size, seed, predictions, progress, chunk_size)


def _run(args: argparse.Namespace) -> int:
    if args.command == "train" and args.task is not None:
        return _train_seq(args)
    if args.command == "train":
        from .train import TrainConfig, train

        cfg = TrainConfig(
            dataset=args.dataset,
            depth=args.depth,
            arch=args.arch or "preact",
            weights=args.weights,
            num_classes=args.num_classes,
            image_size=args.image_size,
            workers=args.workers,
            method=args.method,
            prior=args.prior,
            tau=args.tau,
            poisson_rate=args.poisson_rate,
            guide=args.guide,
            temperature=args.temperature,
            tau_warmup=args.tau_warmup,
            particles=args.particles,
            epochs=args.epochs,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            schedule=args.schedule,
            lr=args.lr,
            lr_warmup=args.lr_warmup,
            head_lr_mult=args.head_lr_mult,
            init_from=args.init_from,
            channels_last=args.channels_last,
            weight_decay=args.weight_decay,
            augment=args.augment,
            train_subset=args.train_subset,
            test_subset=args.test_subset,
            seed=args.seed,
            device=args.device,
            data_root=args.data_root,
        )
        cfg.checkpoint_every, cfg.amp, cfg.log_every = args.checkpoint_every, args.amp, args.log_every
        cfg.compile = args.compile
        out = train(
            cfg, args.out, overwrite=args.overwrite, progress=not args.no_progress, resume=args.resume
        )
        if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 alone reports and evaluates
            return 0
        print(f"run directory: {out}", file=sys.stderr)
        if not args.no_eval:
            res = _evaluate(
                out,
                "threshold",
                0.5,
                None,
                args.data_root,
                args.test_subset,
                256,
                0,
                args.device,
                not args.no_progress,
            )
            (out / "eval_threshold.json").write_text(json.dumps(res, indent=2))
            print(json.dumps(res))
        return 0
    if args.command == "evaluate":
        res = _evaluate(
            args.run_dir,
            args.mode,
            args.threshold,
            args.predictions,
            args.data_root,
            args.test_subset,
            args.batch_size,
            args.seed,
            args.device,
            not args.no_progress,
            args.chunk_size,
        )
        print(json.dumps(res))
        return 0
    if args.command == "flops":
        return _flops(args)
    if args.command == "report":
        from .report import write_report

        out = write_report(
            args.run_dir,
            args.out,
            args.test_subset or None,
            args.num_samples,
            args.sweep,
            args.data_root,
            args.batch_size,
            args.seed,
            args.device,
        )
        print(f"report: {out / 'index.html'}")
        return 0
    raise AssertionError(args.command)


def _train_seq(args: argparse.Namespace) -> int:
    """``train --task``: the task preset (:class:`~pact_pyro.train_seq.SeqConfig`) overridden by the flags
    given on the command line."""
    from .train_seq import SeqConfig, evaluate_seq_run, train_seq

    given = {
        tok[2:].split("=")[0].replace("-", "_") for tok in getattr(args, "argv", []) if tok.startswith("--")
    }
    unused = sorted(
        given & {"dataset", "depth", "epochs", "augment", "train_subset", "optimizer", "compile", "init_from"}
    )
    if unused:
        raise ValueError(f"--{unused[0].replace('_', '-')} does not apply to --task runs (see --steps, --lr)")
    cfg = SeqConfig(task=args.task, arch=args.arch or "lstm")
    for name in (
        "method",
        "prior",
        "tau",
        "poisson_rate",
        "guide",
        "temperature",
        "batch_size",
        "lr",
        "seed",
    ):
        if name in given:
            setattr(cfg, name, getattr(args, name))
    for flag, _, _ in _SEQ_FLAGS:
        name = flag[2:].replace("-", "_")
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.test_subset is not None:
        cfg.test_examples = args.test_subset
    if "checkpoint_every" in given:
        cfg.checkpoint_every = args.checkpoint_every
    out = train_seq(
        cfg, args.out, overwrite=args.overwrite, progress=not args.no_progress, resume=args.resume
    )
    print(f"run directory: {out}", file=sys.stderr)
    if not args.no_eval:
        res = evaluate_seq_run(out)
        (out / "eval_threshold.json").write_text(json.dumps(res, indent=2))
        print(json.dumps(res))
    return 0


def _flops(args) -> int:
    from .data import DATASETS
    from .flops import FlopTable
    from .train import TrainConfig, build

    cfg = TrainConfig(dataset=args.dataset, depth=args.depth, method=args.method)
    cfg.validate()
    model, guide = build(cfg)
    c, s = DATASETS[args.dataset][0], DATASETS[args.dataset][1]
    table = FlopTable.for_model(model, (c, s, s), guide)
    print(
        json.dumps(
            {
                "dataset": args.dataset,
                "depth": args.depth,
                "method": args.method,
                "flops_full": table.full,
                **table.to_dict(),
            }
        )
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pact-pyro`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status. Bad input exits
    with status 2 and one line ``pact-pyro: error: …`` naming the argument and the value."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # which flags were given (train --task)
    try:
        return _run(args)
    except (ValueError, TypeError, OSError, NotImplementedError, FloatingPointError) as err:
        parser.exit(2, f"pact-pyro: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, "pact-pyro: interrupted\n")


if __name__ == "__main__":
    sys.exit(main())
