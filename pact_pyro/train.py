"""Training with ``pyro.infer.SVI`` and the MAP objective; the run directory.

A run directory holds ``config.json`` (every setting and library versions), ``checkpoint.pt`` (model, guide,
epoch, step; loaded with ``weights_only=True``) and ``metrics.jsonl`` (one JSON object per logged step and per
epoch). :func:`load_run` rebuilds the trained model and guide.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch

from .data import DATASETS, load_dataset
from .priors import PRIORS, TruncatedGeometric, TruncatedPoisson, UniformUnits, UnitsPrior
from .sites import units_site
from .trainer import RunDirError, run_training

__all__ = [
    "TrainConfig",
    "METHODS",
    "ImageTask",
    "train",
    "build",
    "load_run",
    "load_images",
    "resolve_device",
    "RunDirError",
]


#: what ``TrainConfig.method`` selects: the generative model (and guide) trained
METHODS = {
    "pact": "PACT: halting latents per example and block, amortized Concrete guide",
    "act": "ACT (Graves; SACT code): deterministic halting, ponder cost",
    "plain": "the ResNet without halting (every unit)",
    "spatial-pact": "spatial PACT: halting latents per position, SACT's spatial heads in the guide",
    "sact": "SACT: ACT per position, ponder cost averaged over positions",
}


@dataclass
class TrainConfig:
    """Settings of one training run (defaults: the MNIST demo, ≈4 minutes on 2 quiet CPU cores)."""

    dataset: str = "mnist"  # mnist, fashion-mnist, cifar10 (in memory) or imagefolder (streamed)
    depth: int = 20  # 6n + 2: 3 blocks of n units (arch "preact")
    # "preact": SACT's pre-activation CIFAR ResNet of `depth`; resnet18/34/50/101/152: torchvision's, whose
    # stages are the blocks (pact_pyro.models.torchvision_resnet)
    arch: str = "preact"
    weights: str | None = (
        None  # torchvision archs: a state_dict path or a weights name (ResNet50_Weights.DEFAULT)
    )
    num_classes: int | None = None  # imagefolder: the class folders (set by train() when None)
    image_size: int = 224  # imagefolder: side of the training / evaluation crops
    workers: int = 2  # imagefolder: DataLoader worker processes
    method: str = "pact"
    prior: str = "geometric"
    tau: float = 0.1  # geometric prior: log p(N) = -τN + const, per block
    poisson_rate: float = 2.0
    # straight-through (hard z forward, Concrete gradient backward): on the MNIST demo it matched the relaxed
    # guide's thresholded accuracy (98.86% vs 98.99%) and kept sampled evaluation within 0.4 points of it
    # (relaxed: 0.5-0.6 points lower), since training already sees the hard decisions made at test time
    guide: str = "straight-through"
    temperature: float = 2 / 3  # Concrete λ (Maddison et al.'s binary suggestion)
    tau_warmup: float = 0.0  # fraction of training over which the prior weight ramps 0 → 1
    # relaxed samples of z per example per step (the batch is repeated K times; the loss is their mean):
    # a K-sample estimate of E_q at K times the cost of a step
    particles: int = 1
    epochs: float = 1.0
    batch_size: int = 128
    optimizer: str = "adam"  # adam or sgd (momentum 0.9)
    # auto: adam → one-cycle, sgd → step decay at 60/75/90 % (SACT); cosine: linear warm-up over
    # lr_warmup of the steps, then cosine to 0 (Nesterov momentum for sgd)
    schedule: str = "auto"
    lr: float = 2e-3
    lr_warmup: float = 0.0  # cosine schedule: fraction of steps of linear LR warm-up
    head_lr_mult: float = 1.0  # cosine schedule: learning-rate multiplier of the halting heads
    weight_decay: float = 0.0
    augment: bool = False
    train_subset: int | None = None
    test_subset: int | None = None
    seed: int = 0
    device: str = "auto"
    data_root: str | None = None
    log_every: int = 50
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: end of each epoch only)
    amp: bool = False  # bf16 autocast of the forward pass (CUDA only)
    compile: bool = False  # torch.compile the units' residual branches (ResNetBackbone.compile_units)
    # NHWC inputs (and so activations): ~15-20 % faster training convolutions on CPU (same results up to
    # float rounding)
    channels_last: bool = False
    # fine-tuning: a run directory or a backbone state_dict file whose backbone weights start this run
    # (pact_pyro.finetune); the halting heads start fresh. config.json records the file's sha256.
    init_from: str | None = None
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        def bad(name, expected):
            raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")

        from .nn.torchvision_resnet import TORCHVISION_ARCHS

        if self.dataset not in (*DATASETS, "imagefolder"):
            bad("dataset", f"one of {sorted(DATASETS) + ['imagefolder']}")
        if self.arch not in ("preact", *TORCHVISION_ARCHS):
            bad("arch", f"one of {['preact', *TORCHVISION_ARCHS]}")
        if self.arch == "preact" and (
            not isinstance(self.depth, int) or self.depth < 8 or (self.depth - 2) % 6
        ):
            bad("depth", "6n+2 with n >= 1 (8, 14, 20, 32, 56, 110)")
        if self.arch != "preact" and self.dataset in DATASETS and DATASETS[self.dataset][0] != 3:
            bad("arch", f"'preact' for the 1-channel {self.dataset} (torchvision ResNets take RGB)")
        if self.weights is not None and (self.arch == "preact" or self.init_from is not None):
            bad("weights", "None with arch='preact' or with init_from (use one source of weights)")
        if self.dataset == "imagefolder" and not self.data_root:
            bad("data_root", "the folder holding train/ and val/ for dataset='imagefolder'")
        for name, low in (("image_size", 16), ("workers", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                bad(name, f"an integer >= {low}")
        nc = self.num_classes
        if nc is not None and (not isinstance(nc, int) or isinstance(nc, bool) or nc < 2):
            bad("num_classes", "None or an integer >= 2")
        if self.method not in METHODS:
            bad("method", f"one of {list(METHODS)}")
        if self.method in ("spatial-pact", "sact") and self.arch != "preact":
            bad("arch", f"'preact' for method={self.method!r} (spatial halting is built on the CIFAR ResNet)")
        if self.prior not in PRIORS:
            bad("prior", f"one of {sorted(PRIORS)}")
        from pact_pyro.guides import GUIDES

        if self.guide not in GUIDES:
            bad("guide", f"one of {sorted(GUIDES)}")
        if not (math.isfinite(self.tau) and self.tau >= 0):
            bad("tau", "a finite number >= 0")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            bad("temperature", "a finite number > 0")
        if not isinstance(self.particles, int) or isinstance(self.particles, bool) or self.particles < 1:
            bad("particles", "an integer >= 1")
        if not 0 <= self.tau_warmup <= 1:
            bad("tau_warmup", "a fraction in [0, 1]")
        if not (isinstance(self.epochs, (int, float)) and math.isfinite(self.epochs) and self.epochs > 0):
            bad("epochs", "a finite number > 0")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 2:
            bad("batch_size", "an integer >= 2 (halting heads normalise over the batch)")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            bad("lr", "a finite number > 0")
        if not (isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < math.inf):
            bad("weight_decay", "a finite number >= 0")
        if not (isinstance(self.poisson_rate, (int, float)) and 0 < self.poisson_rate < math.inf):
            bad("poisson_rate", "a finite number > 0")
        for name in ("train_subset", "test_subset"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                bad(name, "None or an integer >= 1")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            bad("seed", "an integer >= 0")
        if not isinstance(self.log_every, int) or self.log_every < 1:
            bad("log_every", "an integer >= 1")
        ce = self.checkpoint_every
        if not isinstance(ce, int) or isinstance(ce, bool) or ce < 0:
            bad("checkpoint_every", "an integer >= 0 (0: checkpoint at the end of each epoch only)")
        if not isinstance(self.amp, bool):
            bad("amp", "True or False")
        if not isinstance(self.compile, bool):
            bad("compile", "True or False")
        if self.init_from is not None and not (isinstance(self.init_from, str) and self.init_from):
            bad("init_from", "None or a path (a run directory or a state_dict file)")
        if not isinstance(self.channels_last, bool):
            bad("channels_last", "True or False")
        if self.optimizer not in ("adam", "sgd"):
            bad("optimizer", "'adam' or 'sgd'")
        if self.schedule not in ("auto", "cosine"):
            bad("schedule", "'auto' or 'cosine'")
        if not (isinstance(self.lr_warmup, (int, float)) and 0 <= self.lr_warmup < 1):
            bad("lr_warmup", "a fraction in [0, 1)")
        hm = self.head_lr_mult
        if not (isinstance(hm, (int, float)) and math.isfinite(hm) and hm > 0):
            bad("head_lr_mult", "a finite number > 0")
        if hm != 1.0 and self.schedule != "cosine":
            bad("head_lr_mult", "1.0 unless schedule='cosine'")
        if not isinstance(self.device, str) or (
            self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:")
        ):
            bad("device", "auto, cpu or cuda")

    def make_prior(self) -> UnitsPrior:
        if self.prior == "geometric":
            return TruncatedGeometric(self.tau)
        if self.prior == "poisson":
            return TruncatedPoisson(self.poisson_rate)
        return UniformUnits()


def load_images(cfg: TrainConfig, train: bool, data_root=None):
    """The training (``train=True``) or test split of ``cfg.dataset``: in-memory
    :class:`~pact_pyro.data.TensorData`, or a streamed :class:`~pact_pyro.imagefolder.FolderData`
    (``val/``)."""
    root = data_root or cfg.data_root
    if cfg.dataset == "imagefolder":
        from .imagefolder import FolderData

        return FolderData(root, "train" if train else "val", cfg.image_size, cfg.workers)
    return load_dataset(cfg.dataset, train, root)


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU."""
    if not isinstance(device, str) or not (device in ("auto", "cpu") or device.split(":")[0] == "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available")
    return torch.device(device)


def build(cfg: TrainConfig, source: dict | None = None):
    """Model and guide for a config, by ``cfg.method`` (:data:`METHODS`): ``pact`` / ``spatial-pact``
    ((spatial) PACT-ResNet + halting guide), ``act`` / ``sact`` ((spatial) ACT-ResNet with ponder weight
    ``cfg.tau``) or ``plain`` (ResNet); those without latents get an
    :class:`~pact_pyro.guides.EmptyGuide`, so every method trains through the same SVI loop.

    Fresh weights, except that ``source`` (a backbone ``state_dict``, e.g.
    :func:`~pact_pyro.finetune.load_backbone_source` of ``cfg.init_from``) is loaded into the backbone
    strictly; halting heads stay fresh."""
    model, guide = _build(cfg, pretrained=source is None)
    if source is not None:
        from .nn.backbone import init_backbone

        init_backbone(model.backbone, source, cfg.init_from or "")
    return model, guide


def _torchvision_weights(name: str | None):
    """A state_dict path, or a torchvision weights name such as ``ResNet50_Weights.IMAGENET1K_V2``."""
    if name is None or Path(name).is_file() or "/" in name or name.endswith(".pt"):
        return name
    import torchvision.models as tvm

    try:
        return tvm.get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise ValueError(f"weights={name!r} is neither a file nor a torchvision weights name") from None


def _build(cfg: TrainConfig, pretrained: bool = True):
    from pact_pyro.guides import EmptyGuide, get_guide
    from pact_pyro.models import act_resnet, pact_resnet, plain_resnet, sact_resnet, spatial_pact_resnet

    channels, _, classes, _, _ = DATASETS.get(cfg.dataset, (3, None, None, None, None))
    classes = cfg.num_classes or classes
    if cfg.arch != "preact":
        from pact_pyro.models import act_torchvision_resnet, pact_torchvision_resnet, plain_torchvision_resnet

        weights = _torchvision_weights(cfg.weights) if pretrained else None
        if cfg.method == "act":
            model = act_torchvision_resnet(cfg.arch, weights, cfg.tau, classes)
            return model, EmptyGuide(model)
        if cfg.method == "plain":
            model = plain_torchvision_resnet(cfg.arch, weights, classes)
            return model, EmptyGuide(model)
        model = pact_torchvision_resnet(cfg.arch, weights, cfg.make_prior(), classes)
        return model, get_guide(cfg.guide, model, temperature=cfg.temperature)
    if cfg.method in ("act", "sact"):
        make = act_resnet if cfg.method == "act" else sact_resnet
        model = make(cfg.depth, num_classes=classes, in_channels=channels, tau=cfg.tau)
        return model, EmptyGuide(model)
    if cfg.method == "plain":
        model = plain_resnet(cfg.depth, num_classes=classes, in_channels=channels)
        return model, EmptyGuide(model)
    make = spatial_pact_resnet if cfg.method == "spatial-pact" else pact_resnet
    model = make(cfg.depth, num_classes=classes, in_channels=channels, prior=cfg.make_prior())
    guide = get_guide(cfg.guide, model, temperature=cfg.temperature)
    return model, guide


def is_halting_param(name: str) -> bool:
    """Whether a parameter belongs to a halting head: a PACT guide's heads (Pyro's name ``guide<k>_<b>.*``,
    a checkpoint's ``guide.heads.*``) or an ACT model's (``*.heads.*``)."""
    return name.startswith("guide") or ".heads." in name


def cosine_lambda(total_steps: int, warmup: float):
    """LR factor at step ``s``: linear warm-up over ``warmup · total`` steps, then cosine from 1 to 0."""
    w = int(round(warmup * total_steps))

    def factor(s: int) -> float:
        if s < w:
            return (s + 1) / w
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - w) / max(1, total_steps - w))))

    return factor


def _make_optim(cfg: TrainConfig, total_steps: int):
    if cfg.schedule == "cosine":
        opt = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD
        extra = {} if cfg.optimizer == "adam" else {"momentum": 0.9, "nesterov": True}

        def optim_args(param_name: str) -> dict:  # Pyro passes the nn.Module-style name
            lr = cfg.lr * (cfg.head_lr_mult if is_halting_param(param_name) else 1.0)
            return {"lr": lr, "weight_decay": cfg.weight_decay, **extra}

        return pyro.optim.LambdaLR(
            {
                "optimizer": opt,
                "optim_args": optim_args,
                "lr_lambda": cosine_lambda(total_steps, cfg.lr_warmup),
            }
        )
    if cfg.optimizer == "adam":
        return pyro.optim.OneCycleLR(
            {
                "optimizer": torch.optim.Adam,
                "optim_args": {"lr": cfg.lr, "weight_decay": cfg.weight_decay},
                "max_lr": cfg.lr,
                "total_steps": total_steps,
            }
        )
    milestones = [int(total_steps * f) for f in (0.6, 0.75, 0.9)]  # SACT: 60k/75k/90k of 100k
    return pyro.optim.MultiStepLR(
        {
            "optimizer": torch.optim.SGD,
            "optim_args": {"lr": cfg.lr, "momentum": 0.9, "weight_decay": cfg.weight_decay},
            "milestones": milestones,
            "gamma": 0.1,
        }
    )


_RESUME_FREE = ("device", "data_root", "log_every", "checkpoint_every", "test_subset", "compile", "init_from")


def train(
    cfg: TrainConfig,
    out: str | os.PathLike,
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
) -> Path:
    """Train with SVI and write the run directory; returns its path.

    Checkpoints (``checkpoint.pt``, see :mod:`pact_pyro.checkpoint`) are written atomically every
    ``cfg.checkpoint_every`` steps (0: none mid-epoch), at the end of every epoch and at the end of training.
    ``resume=True`` continues from the run directory's checkpoint (or starts from scratch when there is none
    yet); on CPU the final weights are bit-identical to those of an uninterrupted run. An existing non-empty
    ``out`` is refused unless ``resume`` or ``overwrite``. Started by ``torchrun`` with ``WORLD_SIZE > 1`` the
    run is data-parallel (:mod:`pact_pyro.distributed`); ``cfg.batch_size`` is then the global batch.
    A non-finite loss raises :class:`FloatingPointError` and leaves the last good checkpoint in place.
    """
    cfg.validate()
    if cfg.dataset == "imagefolder" and cfg.num_classes is None:
        from .imagefolder import count_classes

        cfg.num_classes = count_classes(cfg.data_root)
    device = resolve_device(cfg.device)
    if cfg.amp and device.type != "cuda":
        raise ValueError(f"amp=True (bf16 autocast) needs a CUDA device, got device={str(device)!r}")
    return run_training(ImageTask(cfg), Path(out), overwrite, progress, resume, device)


class ImageTask:
    """Image classification (:class:`TrainConfig`) for :func:`pact_pyro.trainer.run_training`: in-memory
    datasets, one epoch = one shuffled pass (strided shards under DDP), τ warm-up by fraction of training,
    channels-last inputs and ``particles`` copies of each batch."""

    resume_free = _RESUME_FREE

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.data = None
        # channels-last applies to the inputs only: convolutions then run NHWC and propagate the format,
        # while the parameters stay contiguous, as Pyro's param store requires (it keeps ``.contiguous()``
        # copies, so NHWC parameters would be trained as copies the modules never see)
        self.fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format

    def load_data(self) -> None:
        cfg = self.cfg
        self.data = load_images(cfg, train=True).subset(cfg.train_subset, cfg.seed)
        if len(self.data) < cfg.batch_size:
            raise ValueError(
                f"batch_size={cfg.batch_size} is larger than the training set ({len(self.data)} examples)"
            )

    def total_steps(self) -> int:
        return max(1, round(self.cfg.epochs * (len(self.data) // self.cfg.batch_size)))

    def build(self, source):
        return build(self.cfg, source)

    def make_optim(self, total: int):
        return _make_optim(self.cfg, total)

    def batches(self, gen, rank: int, world: int, device):
        from .distributed import shard_batches

        if self.cfg.dataset == "imagefolder":  # streamed; the transforms augment
            return self.data.shuffled_batches(self.cfg.batch_size, gen, device, rank, world)
        return shard_batches(self.data, self.cfg.batch_size, gen, device, self.cfg.augment, rank, world)

    def prepare(self, x: torch.Tensor, y: torch.Tensor):
        x = x.contiguous(memory_format=self.fmt)
        if self.cfg.particles > 1:  # K samples of z per example: the plate holds K copies of the batch
            x, y = x.repeat(self.cfg.particles, 1, 1, 1), y.repeat(self.cfg.particles)
        return x, y

    def prior_weight(self, step: int, total: int) -> float | None:
        if self.cfg.tau_warmup > 0:
            return min(1.0, step / (self.cfg.tau_warmup * total))
        return None

    def record(self, model, guide) -> dict:
        nodes = guide.trace.nodes
        units = [
            float(nodes[units_site(b)]["value"].detach().mean())
            for b in range(len(model.units_per_block))
            if units_site(b) in nodes
        ]
        return {"units": units}

    def after_step(self, model, guide, step: int, total: int) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def load_run(path: str | os.PathLike, device: str = "auto"):
    """``(model, guide, config)`` of a run directory (its latest checkpoint), in eval mode.

    The checkpoint is read with ``torch.load(weights_only=True)``; corrupt, truncated, unsafe (pickled code)
    or other-architecture files raise :class:`~pact_pyro.checkpoint.CheckpointError` (a ``ValueError``).
    Checkpoints written by 1-process and DDP runs are the same format.
    """
    from .checkpoint import check_state_dict, load_checkpoint

    path = Path(path)
    if not (path / "config.json").is_file() or not (path / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"run directory {str(path)!r} has no config.json and checkpoint.pt")
    try:
        raw = json.loads((path / "config.json").read_text())
        raw.pop("versions", None)
        raw.pop("init_from_sha256", None)
        cfg = TrainConfig(**raw)
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{str(path / 'config.json')!r} is not a pact-pyro config: {err}") from None
    ckpt = load_checkpoint(path / "checkpoint.pt")
    model, guide = _build(cfg, pretrained=False)  # the checkpoint holds the weights
    check_state_dict(model, ckpt["model"], "model", path / "checkpoint.pt")
    check_state_dict(guide, ckpt["guide"], "guide", path / "checkpoint.pt")
    model.load_state_dict(ckpt["model"])
    guide.load_state_dict(ckpt["guide"])
    dev = resolve_device(device)
    model.to(dev).eval()
    guide.to(dev).eval()
    return model, guide, cfg
