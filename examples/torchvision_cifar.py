"""PACT on torchvision ResNets, on CPU: a plain ResNet-18/50 trained on a 64×64 image folder made from the
CIFAR-10 JPEGs, then PACT fine-tuned from it at two τ, threshold-evaluated, and early exit timed.

The folder (``--folder``, built once from ``--cifar`` = the offline ``cifar10-jpeg`` copy): ``train/`` and
``val/`` with ``--per-class`` and ``--val-per-class`` images per class, resized to ``--size`` (64) pixels.
Every run goes through the library's trainer (``--dataset imagefolder --arch resnet18``), PACT starting from
the plain run of the same script (``init_from``: halting heads fresh, bias −3)::

    OMP_NUM_THREADS=2 python examples/torchvision_cifar.py --arch resnet18 --runs runs/tv18
    OMP_NUM_THREADS=2 python examples/torchvision_cifar.py --arch resnet50 --runs runs/tv50

Prints one JSON summary (also ``<runs>/summary.json``): the plain network's accuracy, PACT's accuracy, mean
FLOPs and units per stage at each τ, and the early-exit wall speedup (thresholding vs the full network, same
weights) at batch 1 and 64 next to the FLOP speedup. Finished runs are not redone. ``--smoke`` runs a tiny
version (for tests).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet18", help="resnet18/34/50/101/152")
    p.add_argument(
        "--cifar", default="../shared/data/cifar10-jpeg", help="CIFAR-10 JPEGs ({train,test}/<class>/)"
    )
    p.add_argument("--folder", default="data/cifar10-64", help="the image folder to build (or reuse)")
    p.add_argument("--per-class", type=int, default=1000, help="training images per class")
    p.add_argument("--val-per-class", type=int, default=200, help="validation images per class")
    p.add_argument("--size", type=int, default=64, help="side of the resized images")
    p.add_argument("--runs", default="runs/tv", help="folder of the run directories")
    p.add_argument("--plain-epochs", type=float, default=10.0)
    p.add_argument("--finetune-epochs", type=float, default=3.0)
    p.add_argument("--taus", type=float, nargs="+", default=[0.01, 0.03])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="a tiny version of everything (tests)")
    return p


def build_folder(cifar: Path, folder: Path, per_class: int, val_per_class: int, size: int) -> Path:
    """``folder/{train,val}/<class>/*.jpg`` resized to ``size`` from the CIFAR-10 JPEGs (kept if present)."""
    from PIL import Image

    if (folder / "val").is_dir():
        return folder
    if not cifar.is_dir():
        raise FileNotFoundError(f"--cifar {str(cifar)!r} does not exist (the cifar10-jpeg folder)")
    tmp = folder.with_name(folder.name + ".tmp")
    for split, src, n in (("train", "train", per_class), ("val", "test", val_per_class)):
        for cls in sorted(p.name for p in (cifar / src).iterdir() if p.is_dir()):
            out = tmp / split / cls
            out.mkdir(parents=True, exist_ok=True)
            for f in sorted((cifar / src / cls).iterdir())[:n]:
                Image.open(f).convert("RGB").resize((size, size), Image.BICUBIC).save(
                    out / f.name, quality=95
                )
    tmp.rename(folder)
    return folder


def train_once(cfg, out: Path) -> Path:
    from pact_pyro.train import train

    if (out / "done").is_file():
        return out
    train(cfg, out, overwrite=True, progress=False)
    (out / "done").write_text("")
    return out


@torch.no_grad()
def early_exit_speedup(model, guide, data, batch: int, reps: int) -> dict:
    """Wall time of thresholding vs the full network on the same images; FLOP speedup for comparison."""
    from pact_pyro import threshold

    x = torch.cat([xb for xb, _ in data.batches(batch)])[:batch]
    model.eval()
    guide.eval()

    def timed(fn) -> float:
        fn()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return sorted(ts)[len(ts) // 2]

    full = timed(lambda: model.backbone(x))
    r = threshold(model, guide, x)
    thr = timed(lambda: threshold(model, guide, x))
    every = threshold(model, guide, x, threshold=1.0).flops.double().mean()
    flop_speedup = float(every / r.flops.double().mean())
    return {"wall_speedup": full / thr, "flop_speedup": flop_speedup, "quotient": full / thr / flop_speedup}


def main(args: argparse.Namespace) -> dict:
    from pact_pyro.evaluate import evaluate
    from pact_pyro.train import TrainConfig, load_images, load_run

    if args.smoke:
        args.per_class, args.val_per_class, args.size = 6, 3, 32
        args.plain_epochs, args.finetune_epochs, args.taus, args.batch_size = 1.0, 1.0, [0.05], 12
    folder = build_folder(Path(args.cifar), Path(args.folder), args.per_class, args.val_per_class, args.size)
    runs = Path(args.runs)
    base = dict(dataset="imagefolder", data_root=str(folder), arch=args.arch, image_size=args.size,
                workers=args.workers, batch_size=args.batch_size, optimizer="sgd", schedule="cosine",
                weight_decay=5e-4, channels_last=True, device="cpu", log_every=20)  # fmt: skip
    plain = train_once(TrainConfig(**base, method="plain", lr=0.1, epochs=args.plain_epochs), runs / "plain")
    summary: dict = {"arch": args.arch, "size": args.size, "folder": str(folder)}
    model, guide, cfg = load_run(plain, "cpu")
    val = load_images(cfg, train=False)
    summary["plain"] = evaluate(model, guide, val, progress=False)
    for tau in args.taus:
        ft = TrainConfig(**base, method="pact", tau=tau, lr=0.02, head_lr_mult=10.0, init_from=str(plain),
                         epochs=args.finetune_epochs)  # fmt: skip
        run = train_once(ft, runs / f"pact_tau{tau:g}")
        model, guide, cfg = load_run(run, "cpu")
        res = evaluate(model, guide, val, progress=False)
        reps = 3 if args.smoke else 20
        res["early_exit"] = {
            f"batch_{b}": early_exit_speedup(model, guide, val, b, reps) for b in (1, min(64, len(val)))
        }
        summary[f"pact_tau{tau:g}"] = res
    (runs / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(build_parser().parse_args())
