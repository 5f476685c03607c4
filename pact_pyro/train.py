"""Training with ``pyro.infer.SVI`` and the MAP objective; the run directory.

A run directory holds ``config.json`` (every setting and library versions), ``checkpoint.pt`` (model, guide,
epoch, step; loaded with ``weights_only=True``) and ``metrics.jsonl`` (one JSON object per logged step and per
epoch). :func:`load_run` rebuilds the trained model and guide.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from tqdm.auto import tqdm

from .data import DATASETS, load_dataset
from .objective import MAPObjective, backward_once
from .priors import PRIORS, TruncatedGeometric, TruncatedPoisson, UniformUnits, UnitsPrior
from .sites import units_site

__all__ = ["TrainConfig", "train", "build", "load_run", "resolve_device", "RunDirError"]


class RunDirError(FileExistsError):
    """``out`` exists and is not empty, and neither ``resume`` nor ``overwrite`` was given."""


@dataclass
class TrainConfig:
    """Settings of one training run (defaults: the MNIST demo, ≈4 minutes on 2 quiet CPU cores)."""

    dataset: str = "mnist"
    depth: int = 20  # 6n + 2: 3 blocks of n units
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

        if self.dataset not in DATASETS:
            bad("dataset", f"one of {sorted(DATASETS)}")
        if not isinstance(self.depth, int) or self.depth < 8 or (self.depth - 2) % 6:
            bad("depth", "6n+2 with n >= 1 (8, 14, 20, 32, 56, 110)")
        if self.method not in ("pact", "act", "plain"):
            bad("method", "one of ['act', 'pact', 'plain']")
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
    """Model and guide for a config, by ``cfg.method``: ``pact`` (PACT-ResNet + halting guide), ``act``
    (ACT-ResNet with ponder weight ``cfg.tau``) or ``plain`` (ResNet); the last two get an
    :class:`~pact_pyro.guides.EmptyGuide`, so every method trains through the same SVI loop.

    Fresh weights, except that ``source`` (a backbone ``state_dict``, e.g.
    :func:`~pact_pyro.finetune.load_backbone_source` of ``cfg.init_from``) is loaded into the backbone
    strictly; halting heads stay fresh."""
    model, guide = _build(cfg)
    if source is not None:
        from .finetune import init_backbone

        init_backbone(model.backbone, source, cfg.init_from or "")
    return model, guide


def _build(cfg: TrainConfig):
    from pact_pyro.guides import EmptyGuide, get_guide
    from pact_pyro.models import act_resnet, pact_resnet, plain_resnet

    channels, _, classes, _, _ = DATASETS[cfg.dataset]
    if cfg.method == "act":
        model = act_resnet(cfg.depth, num_classes=classes, in_channels=channels, tau=cfg.tau)
        return model, EmptyGuide(model)
    if cfg.method == "plain":
        model = plain_resnet(cfg.depth, num_classes=classes, in_channels=channels)
        return model, EmptyGuide(model)
    model = pact_resnet(cfg.depth, num_classes=classes, in_channels=channels, prior=cfg.make_prior())
    guide = get_guide(cfg.guide, model, temperature=cfg.temperature)
    return model, guide


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _versions() -> dict:
    import torchvision

    return {"torch": torch.__version__, "pyro": pyro.__version__, "torchvision": torchvision.__version__}


def prepare_run_dir(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Create ``out``; refuse an existing non-empty run directory unless ``overwrite``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise RunDirError(
            f"out={str(out)!r} already exists and is not empty; pass --overwrite or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def is_halting_param(name: str) -> bool:
    """Whether a parameter (Pyro's ``module.param`` name) belongs to a halting head: a PACT guide's heads
    (``guide<k>_<b>.*``) or an ACT model's (``*.heads.*``)."""
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


_RESUME_FREE = ("device", "data_root", "log_every", "checkpoint_every", "test_subset", "compile")


def _check_resume_config(cfg: TrainConfig, saved: dict, path: Path) -> None:
    """Refuse to resume with settings that change the training trajectory."""
    now = dataclasses.asdict(cfg)
    defaults = dataclasses.asdict(TrainConfig())
    saved = {k: saved.get(k, defaults.get(k)) for k in set(saved) | set(now)}  # older runs lack newer fields
    diff = [
        f"{k}={saved.get(k)!r} (now {now.get(k)!r})"
        for k in sorted(set(now) | set(saved))
        if k not in _RESUME_FREE and k not in ("versions", "init_from_sha256") and saved.get(k) != now.get(k)
    ]
    if diff:
        raise ValueError(
            f"cannot resume {str(path)!r}: it was trained with "
            + ", ".join(diff[:4])
            + "; pass the same settings or start a new run"
        )


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric records past ``step`` (written after the checkpoint by a run that was then killed)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if rec.get("step", 0) <= step:
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


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
    from . import distributed

    cfg.validate()
    device = resolve_device(cfg.device)
    if cfg.amp and device.type != "cuda":
        raise ValueError(f"amp=True (bf16 autocast) needs a CUDA device, got device={str(device)!r}")
    ctx = distributed.setup(device)
    try:
        if device.type == "cuda" and ctx.active:
            device = torch.device("cuda", ctx.local_rank)
        return _train(cfg, Path(out), overwrite, progress, resume, device, ctx)
    finally:
        ctx.close()


def _train(cfg: TrainConfig, out: Path, overwrite: bool, progress: bool, resume: bool, device, ctx) -> Path:
    """The training run, top to bottom: check, prepare the run directory, build, restore, loop."""
    _check_world_batch(cfg, ctx)
    ckpt = _checkpoint_to_resume(cfg, out, resume, overwrite)
    source = _fine_tune_source(cfg) if ckpt is None else None
    data = load_dataset(cfg.dataset, True, cfg.data_root).subset(cfg.train_subset, cfg.seed)
    if len(data) < cfg.batch_size:
        raise ValueError(
            f"batch_size={cfg.batch_size} is larger than the training set ({len(data)} examples)"
        )
    _prepare_run_dir(cfg, out, ckpt, source, ctx, progress)
    model, guide = _build_on_device(cfg, source, device, ctx)
    total = max(1, round(cfg.epochs * (len(data) // cfg.batch_size)))
    optim = _make_optim(cfg, total)
    run = _Run(
        cfg, out, ctx, model, guide, optim, _make_svi(cfg, model, guide, optim, ctx), data, total, device
    )
    if ckpt is not None:
        run.restore(ckpt, progress)
    run.loop(progress)
    ctx.barrier()
    return out


def _check_world_batch(cfg: TrainConfig, ctx) -> None:
    if cfg.batch_size % ctx.world_size or cfg.batch_size // ctx.world_size < 2:
        raise ValueError(
            f"batch_size must be a multiple of the {ctx.world_size} processes with >= 2 examples each, "
            f"got {cfg.batch_size}"
        )


def _checkpoint_to_resume(cfg: TrainConfig, out: Path, resume: bool, overwrite: bool) -> dict | None:
    """The checkpoint ``--resume`` continues (None: start fresh); refuses a non-empty ``out`` otherwise."""
    from . import checkpoint as ck

    path = out / "checkpoint.pt"
    if resume and path.is_file():
        ckpt = ck.load_checkpoint(path)
        _check_resume_config(cfg, ckpt["config"], out)
        return ckpt
    if not resume and out.exists() and any(out.iterdir()) and not overwrite:  # checked on every rank
        raise RunDirError(
            f"out={str(out)!r} already exists and is not empty; pass --resume, --overwrite or another --out"
        )
    return None


def _fine_tune_source(cfg: TrainConfig) -> dict | None:
    """``cfg.init_from``'s backbone, checked against the model before anything is written."""
    if cfg.init_from is None:
        return None
    from .finetune import load_backbone_source

    source = load_backbone_source(cfg.init_from)
    build(cfg, source)  # a mismatch fails here, before the run directory exists
    return source


def _prepare_run_dir(cfg: TrainConfig, out: Path, ckpt: dict | None, source, ctx, progress: bool) -> None:
    """Fresh run: ``config.json`` (with versions and the source checksum), no old checkpoint or metrics.
    Resumed run: metric records past the checkpoint are dropped."""
    import sys

    from .checkpoint import summary

    ctx.barrier()
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if ckpt is None:
            (out / "checkpoint.pt").unlink(missing_ok=True)
            (out / "metrics.jsonl").unlink(missing_ok=True)
            record = {**dataclasses.asdict(cfg), "versions": _versions()}
            if source is not None:
                record["init_from_sha256"] = source.sha256
            (out / "config.json").write_text(json.dumps(record, indent=2))
        else:
            _truncate_metrics(out / "metrics.jsonl", ckpt["step"])
            if progress:
                print(f"resuming {str(out)!r} from {summary(ckpt)}", file=sys.stderr)
    ctx.barrier()


def _build_on_device(cfg: TrainConfig, source, device, ctx):
    """Seeded model and guide on ``device`` (same weights on every rank), units compiled if asked."""
    from . import distributed

    pyro.set_rng_seed(cfg.seed)
    pyro.clear_param_store()
    model, guide = build(cfg, source)
    model.to(device)
    guide.to(device)
    if cfg.compile:
        model.backbone.compile_units()
    if ctx.active:
        distributed.broadcast_state([model, guide])
        torch.manual_seed(cfg.seed + 1_000_003 * ctx.rank)  # independent halting noise per rank
    return model, guide


def _make_svi(cfg: TrainConfig, model, guide, optim, ctx) -> pyro.infer.SVI:
    """``SVI`` with the MAP objective; bf16 autocast (``amp``), DDP gradient averaging and the
    no-``retain_graph`` backward of compiled units wrap the loss as needed."""
    from . import distributed

    objective = MAPObjective()
    loss_fn = objective.differentiable_loss
    if cfg.amp:

        def loss_fn(model_fn, guide_fn, *args, **kwargs):
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                return objective.differentiable_loss(model_fn, guide_fn, *args, **kwargs)

    loss_and_grads = (
        distributed.allreduce_loss_and_grads(loss_fn, [model, guide], ctx.world_size) if ctx.active else None
    )
    if cfg.compile and loss_and_grads is None:  # compiled backward graphs refuse SVI's retain_graph
        loss_and_grads = backward_once(loss_fn)
    return pyro.infer.SVI(model.model, guide, optim, loss=loss_fn, loss_and_grads=loss_and_grads)


class _Run:
    """The state of a training loop: position (``step``, ``epochs_done``, ``skip``: batches of the current
    epoch already trained on), the data-order generator, and what the loop reads and writes."""

    def __init__(self, cfg, out, ctx, model, guide, optim, svi, data, total: int, device) -> None:
        self.cfg, self.out, self.ctx, self.device = cfg, out, ctx, device
        self.model, self.guide, self.optim, self.svi = model, guide, optim, svi
        self.data, self.total = data, total
        self.modules = {"model": model, "guide": guide}
        self.ckpt_path = out / "checkpoint.pt"
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step, self.epochs_done, self.skip, self.saved_at = 0, 0, 0, -1
        # channels-last applies to the inputs only: convolutions then run NHWC and propagate the format,
        # while the parameters stay contiguous, as Pyro's param store requires (it keeps ``.contiguous()``
        # copies, so NHWC parameters would be trained as copies the modules never see)
        self.fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format

    def restore(self, ckpt: dict, progress: bool) -> None:
        """Weights, optimizer and LR schedule, every RNG and the position of a checkpoint."""
        import sys

        from . import checkpoint as ck

        ck.check_state_dict(self.model, ckpt["model"], "model", self.ckpt_path)
        ck.check_state_dict(self.guide, ckpt["guide"], "guide", self.ckpt_path)
        self.model.load_state_dict(ckpt["model"])
        self.guide.load_state_dict(ckpt["guide"])
        ck.restore_optim(self.optim, ckpt["optim"], self.modules)
        ck.restore_rng(ckpt["rng"])
        per_rank = ckpt["rng"].get("per_rank_torch", [])
        if len(per_rank) == self.ctx.world_size:
            torch.set_rng_state(per_rank[self.ctx.rank])
        elif self.ctx.is_main and progress:
            print(
                f"note: checkpoint from {len(per_rank)} process(es), now {self.ctx.world_size}: halting "
                "noise streams restart",
                file=sys.stderr,
            )
        self.gen.set_state(ckpt["rng"]["data_epoch_start"])
        self.step, self.epochs_done, self.skip = ckpt["step"], ckpt["epochs_done"], ckpt["step_in_epoch"]
        self.saved_at = self.step

    def save(self, epoch_start_state: torch.Tensor, step_in_epoch: int) -> None:
        """Atomic checkpoint (rank 0 writes); refuses non-finite weights, keeping the last good one."""
        from . import checkpoint as ck
        from . import distributed

        for name, mod in self.modules.items():
            for pname, p in mod.named_parameters():
                if not bool(torch.isfinite(p).all()):
                    raise FloatingPointError(
                        f"{name} parameter {pname} became non-finite at step {self.step}; not saved over the "
                        f"last good checkpoint {str(self.ckpt_path)!r}"
                    )
        if self.ctx.active:
            distributed.average_buffers([self.model, self.guide])
        rng = ck.capture_rng()
        rng["per_rank_torch"] = distributed.gather_rng(rng["torch"], self.ctx)
        rng["data"] = self.gen.get_state()
        rng["data_epoch_start"] = epoch_start_state
        if self.ctx.is_main:
            ck.atomic_save(
                {
                    "format": ck.FORMAT,
                    "version": ck.VERSION,
                    "config": dataclasses.asdict(self.cfg),
                    "model": self.model.state_dict(),
                    "guide": self.guide.state_dict(),
                    "optim": ck.optim_state(self.optim, self.modules),
                    "rng": rng,
                    "epoch": self.epochs_done + (1 if step_in_epoch else 0),
                    "epochs_done": self.epochs_done,
                    "step_in_epoch": step_in_epoch,
                    "step": self.step,
                    "world_size": self.ctx.world_size,
                },
                self.ckpt_path,
            )
        self.saved_at = self.step

    def loop(self, progress: bool) -> None:
        """Epochs until ``total`` steps; a checkpoint every ``checkpoint_every`` steps and at each epoch's
        end."""
        cfg = self.cfg
        self.metrics = open(self.out / "metrics.jsonl", "a") if self.ctx.is_main else None
        self.bar = tqdm(
            total=self.total,
            initial=self.step,
            desc=f"train {cfg.method} {cfg.dataset} d{cfg.depth}",
            disable=not (progress and self.ctx.is_main),
        )
        self.start = time.time()
        try:
            while self.step < self.total:
                epoch_start = self.gen.get_state()
                consumed = self.epoch()
                if self.step >= self.total:  # stopped inside the epoch
                    if self.saved_at != self.step:
                        self.save(epoch_start, consumed)
                    break
                self.epochs_done += 1
                self.skip = 0
                if self.saved_at != self.step:
                    self.save(self.gen.get_state(), 0)  # end of epoch
        finally:
            self.bar.close()
            if self.metrics is not None:
                self.metrics.close()

    def epoch(self) -> int:
        """One pass over the (sharded) data from where it stands; returns the batches consumed."""
        from . import distributed

        cfg = self.cfg
        self.model.train()
        self.guide.train()
        epoch_start = self.gen.get_state()
        batches = distributed.shard_batches(
            self.data, cfg.batch_size, self.gen, self.device, cfg.augment, self.ctx.rank, self.ctx.world_size
        )
        for i, (x, y) in enumerate(batches):
            if i < self.skip:  # resumed mid-epoch: replay the data order up to the checkpoint
                continue
            loss = self.train_step(x, y)
            self.log(loss)
            if self.step >= self.total:
                return i + 1
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save(epoch_start, i + 1)
        return 0

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One SVI step (K copies of the batch for ``particles = K``, τ warm-up applied) and the LR step."""
        cfg = self.cfg
        x = x.contiguous(memory_format=self.fmt)
        if cfg.particles > 1:  # K samples of z per example: the plate holds K copies of the batch
            x, y = x.repeat(cfg.particles, 1, 1, 1), y.repeat(cfg.particles)
        if cfg.tau_warmup > 0:
            self.model.prior_weight = min(1.0, self.step / (cfg.tau_warmup * self.total))
        loss = self.svi.step(x, y)
        if not math.isfinite(loss):
            last = f"step {self.saved_at}" if self.saved_at >= 0 else "none yet"
            raise FloatingPointError(
                f"loss became {loss} at step {self.step + 1}; training stopped, last good checkpoint: "
                f"{last} ({str(self.ckpt_path)!r}); lower --lr or raise --temperature"
            )
        self.optim.step()  # advance the LR schedule
        self.step += 1
        return loss

    def log(self, loss: float) -> None:
        """A ``metrics.jsonl`` record every ``log_every`` steps (and at the last); the progress bar."""
        if self.metrics is not None and (self.step % self.cfg.log_every == 0 or self.step == self.total):
            nodes = self.guide.trace.nodes
            n = [
                float(nodes[units_site(b)]["value"].detach().mean())
                for b in range(len(self.model.units_per_block))
                if units_site(b) in nodes
            ]
            rec = {
                "step": self.step,
                "epoch": self.epochs_done + 1,
                "loss": loss,
                "units": n,
                "time": time.time() - self.start,
            }
            self.metrics.write(json.dumps(rec) + "\n")
            self.metrics.flush()
            self.bar.set_postfix(loss=f"{loss:.3f}", units="/".join(f"{v:.2f}" for v in n))
        self.bar.update()


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
    model, guide = build(cfg)
    check_state_dict(model, ckpt["model"], "model", path / "checkpoint.pt")
    check_state_dict(guide, ckpt["guide"], "guide", path / "checkpoint.pt")
    model.load_state_dict(ckpt["model"])
    guide.load_state_dict(ckpt["guide"])
    dev = resolve_device(device)
    model.to(dev).eval()
    guide.to(dev).eval()
    return model, guide, cfg
