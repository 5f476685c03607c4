"""The static-depth control: the units per block that PACT settled on, as a plain network cut from the source.

Fine-tuned at τ = 0.1 from a plain ResNet-20, PACT runs 1/2/3 units in its three blocks for nearly every
image (``results/tradeoff_cifar10_cpu_long_e45.md``), and at plain ResNet-14's FLOPs (2/2/2) it is the more
accurate network. Is what PACT learned more than that depth allocation? This script trains the plain network
with exactly those blocks — the source's stem, the first ``L_b`` units of block ``b``
(:func:`pact_pyro.finetune.truncate_backbone`) and its classifier, no halting heads — with the fine-tune
recipe of the long preset (SGD, cosine from LR 0.02, weight decay 5e-4, augmentation, batch 128), through the
library's training loop, and evaluates it on the test set. If it matches PACT, PACT's contribution at that τ
is the allocation it found; if it trails, the halting latents' training did more than pick depths.

Without ``--source`` the same network trains from scratch with the long preset's stage-1 recipe (LR 0.1 with a
2 % warm-up, cosine; 45 epochs by default, the length the control in ``results/`` was trained for; the preset
now trains for 80, ``--epochs 80``): the control for PACT trained from scratch, which settles on a static
allocation too (1/1/2 units at τ = 0.1).

Writes ``OUT/`` (a resumable run directory: ``config.json``, ``metrics.jsonl``, ``checkpoint.pt``) and
``OUT/eval.json`` (accuracy, FLOPs, units per block, the units, the source and its sha256).

Usage::

    python examples/static_depth.py --source results/tradeoff_cifar10_cpu_long_e45_sources/plain_d20_s0.pt \\
        --units 1 2 3 --epochs 9 --out runs/static_123 --data-root ../shared/data
    python examples/static_depth.py --units 1 1 2 --out runs/static_112_scratch --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from pact_pyro.guides import EmptyGuide
from pact_pyro.models import PlainResNet

from pact_pyro.data import DATASETS
from pact_pyro.evaluate import evaluate
from pact_pyro.finetune import load_backbone_source, truncate_backbone
from pact_pyro.nn.backbone import ResNetBackbone, init_backbone
from pact_pyro.train import ImageTask, TrainConfig, load_images, resolve_device
from pact_pyro.trainer import run_training


class StaticDepthTask(ImageTask):
    """:class:`~pact_pyro.train.ImageTask` whose network is ``ResNetBackbone(units)`` loaded from the source
    truncated to ``units`` (instead of the network of ``cfg.depth``)."""

    def __init__(self, cfg: TrainConfig, units: list[int]) -> None:
        super().__init__(cfg)
        self.units = units
        self.model: PlainResNet | None = None

    def build(self, source):
        channels, _, classes, _, _ = DATASETS[self.cfg.dataset]
        model = PlainResNet(ResNetBackbone(self.units, in_channels=channels, num_classes=classes))
        if source is not None:  # None when resuming: the checkpoint holds the weights
            init_backbone(model.backbone, truncate_backbone(source, self.units), self.cfg.init_from or "")
        self.model = model
        return model, EmptyGuide(model)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--source",
        default=None,
        help="the plain network: a run directory or a backbone .pt file (default: train from scratch)",
    )
    p.add_argument("--units", type=int, nargs="+", required=True, help="L_b per block, e.g. 1 2 3")
    p.add_argument("--out", required=True, help="run directory (resumed when it holds a checkpoint)")
    p.add_argument("--dataset", default="cifar10", choices=sorted(DATASETS))
    p.add_argument("--data-root", default=None, help="dataset folder (default: $PACT_PYRO_DATA, else ./data)")
    p.add_argument("--epochs", type=float, default=None, help="default: 9 with --source, 45 from scratch")
    p.add_argument("--lr", type=float, default=None, help="default: 0.02 with --source, 0.1 from scratch")
    p.add_argument(
        "--lr-warmup", type=float, default=None, help="warm-up fraction; default: 0 with --source, 0.02 else"
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scratch = args.source is None
    if scratch:
        if not args.units or min(args.units) < 1:
            p.error(f"--units must be positive unit counts per block, got {args.units}")
        source, source_units = None, max(args.units)
    else:
        try:
            source = load_backbone_source(args.source)
            truncate_backbone(source, args.units)  # a bad --units fails here, before anything is written
        except (FileNotFoundError, ValueError) as err:
            p.error(str(err))
        source_units = 1 + max(int(k.split(".")[2]) for k in source if k.startswith("blocks."))
    epochs = args.epochs if args.epochs is not None else (45.0 if scratch else 9.0)
    lr = args.lr if args.lr is not None else (0.1 if scratch else 0.02)
    warmup = args.lr_warmup if args.lr_warmup is not None else (0.02 if scratch else 0.0)
    cfg = TrainConfig(  # depth: the source network's; the trained one has extra["units"] per block
        dataset=args.dataset, method="plain", depth=6 * source_units + 2, extra={"units": args.units},
        epochs=epochs, batch_size=args.batch_size,
        optimizer="sgd", schedule="cosine", lr=lr, lr_warmup=warmup, weight_decay=5e-4, augment=True,
        channels_last=True, train_subset=args.train_subset, test_subset=args.test_subset, seed=args.seed,
        data_root=args.data_root, init_from=args.source, device="auto",
    )  # fmt: skip
    out = Path(args.out)
    task = StaticDepthTask(cfg, args.units)
    device = resolve_device(cfg.device)
    run_training(task, out, overwrite=False, progress=sys.stderr.isatty(), resume=True, device=device)
    assert task.model is not None
    test = load_images(cfg, train=False).subset(cfg.test_subset, cfg.seed)
    task.model.eval()
    result = evaluate(task.model, EmptyGuide(task.model), test, progress=False)
    result.update(units=args.units, source=args.source, source_sha256=source.sha256 if source else None)
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
