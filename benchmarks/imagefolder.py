"""Throughput of the streamed image-folder loader (``pact_pyro.imagefolder.FolderData``) in images per second,
with 0, 1 and 2 ``DataLoader`` workers.

A folder of ``--images`` CIFAR-10 JPEGs (links into ``--cifar``, the offline ``cifar10-jpeg`` copy)
is read once per repetition in training order (random resized crop to ``--size``, flip, normalisation) and in
evaluation order (resize, centre crop), in batches of ``--batch``. Reported: images/s per worker count (median
over repetitions) and the speedup of 2 workers over 0. Decoding only, no network.

Usage: ``python benchmarks/imagefolder.py --images 2000 --reps 3``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit, environment, setup  # noqa: E402

from pact_pyro.imagefolder import FolderData  # noqa: E402

DEFAULT_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cifar", default=str(DEFAULT_CIFAR), help="the cifar10-jpeg folder (train/<class>/)")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (60 images, 1 repetition)")
    args = p.parse_args(argv)
    if args.smoke:
        args.images, args.reps, args.size, args.batch, args.workers = 60, 1, 32, 16, [0, 1]
    return args


def link_folder(cifar: Path, root: Path, n: int) -> Path:
    """``root/train/<class>/`` with ``n / 10`` links per class into the CIFAR-10 JPEGs."""
    classes = sorted(p.name for p in (cifar / "train").iterdir() if p.is_dir())
    for c in classes:
        (root / "train" / c).mkdir(parents=True)
        for p in sorted((cifar / "train" / c).iterdir())[: n // len(classes)]:
            (root / "train" / c / p.name).symlink_to(p.resolve())
    return root


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup(args.threads)
    cifar = Path(args.cifar)
    if not (cifar / "train").is_dir():
        raise SystemExit(f"--cifar {str(cifar)!r} has no train/ folder (the cifar10-jpeg copy)")
    record: dict = {"benchmark": "imagefolder", "images_per_s": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = link_folder(cifar, Path(tmp) / "folder", args.images)
        (root / "val").symlink_to(root / "train")
        for w in args.workers:
            rates = {}
            for split in ("train", "val"):
                data = FolderData(root, split, image_size=args.size, workers=w)
                ts = []
                for r in range(args.reps):
                    t = time.perf_counter()
                    if split == "train":
                        batches = data.shuffled_batches(args.batch, torch.Generator().manual_seed(r), "cpu")
                    else:
                        batches = data.batches(args.batch)
                    n = sum(x.shape[0] for x, _ in batches)
                    ts.append(time.perf_counter() - t)
                rates[split] = round(n / sorted(ts)[len(ts) // 2], 1)
            record["images_per_s"][f"workers_{w}"] = rates
    per = record["images_per_s"]
    if "workers_0" in per and "workers_2" in per:
        record["speedup_2_over_0"] = {
            s: round(per["workers_2"][s] / per["workers_0"][s], 3) for s in per["workers_0"]
        }
    record["settings"] = {
        k: getattr(args, k) for k in ("images", "size", "batch", "workers", "reps", "smoke")
    }
    record["env"] = environment(args.threads)
    for w, r in per.items():
        print(f"{w}: train {r['train']} images/s, val {r['val']} images/s", file=sys.stderr)
    emit(record)
    return record


if __name__ == "__main__":
    main()
