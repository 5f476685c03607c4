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

from .data import DATASETS, batches, load_dataset
from .objective import MAPObjective
from .priors import PRIORS, TruncatedGeometric, TruncatedPoisson, UniformUnits, UnitsPrior
from .sites import units_site

__all__ = ["TrainConfig", "train", "build", "load_run", "resolve_device", "RunDirError"]


class RunDirError(FileExistsError):
    pass


@dataclass
class TrainConfig:
    """Settings of one training run (defaults: the MNIST demo, ≈3-4 minutes on 2 CPU cores)."""

    dataset: str = "mnist"
    depth: int = 20  # 6n + 2: 3 blocks of n units
    method: str = "pact"
    prior: str = "geometric"
    tau: float = 0.05  # geometric prior: log p(N) = -τN + const, per block
    poisson_rate: float = 2.0
    guide: str = "relaxed"
    temperature: float = 2 / 3  # Concrete λ (Maddison et al.'s binary suggestion)
    tau_warmup: float = 0.0  # fraction of training over which the prior weight ramps 0 → 1
    epochs: float = 2.0
    batch_size: int = 128
    optimizer: str = "adam"  # adam (one-cycle) or sgd (momentum 0.9, step decay)
    lr: float = 2e-3
    weight_decay: float = 0.0
    augment: bool = False
    train_subset: int | None = None
    test_subset: int | None = None
    seed: int = 0
    device: str = "auto"
    data_root: str | None = None
    log_every: int = 50
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
        if not 0 <= self.tau_warmup <= 1:
            bad("tau_warmup", "a fraction in [0, 1]")
        if not (self.epochs > 0):
            bad("epochs", "> 0")
        if self.batch_size < 1:
            bad("batch_size", ">= 1")
        if not (self.lr > 0):
            bad("lr", "> 0")
        if self.optimizer not in ("adam", "sgd"):
            bad("optimizer", "'adam' or 'sgd'")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            bad("device", "auto, cpu or cuda")

    def make_prior(self) -> UnitsPrior:
        if self.prior == "geometric":
            return TruncatedGeometric(self.tau)
        if self.prior == "poisson":
            return TruncatedPoisson(self.poisson_rate)
        return UniformUnits()


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available")
    return torch.device(device)


def build(cfg: TrainConfig):
    """Model and guide for a config (fresh weights), by ``cfg.method``: ``pact`` (PACT-ResNet + halting guide),
    ``act`` (ACT-ResNet with ponder weight ``cfg.tau``) or ``plain`` (ResNet); the last two get an
    :class:`~pact_pyro.guides.EmptyGuide`, so every method trains through the same SVI loop."""
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
        raise RunDirError(f"out={str(out)!r} already exists and is not empty; pass --overwrite or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _make_optim(cfg: TrainConfig, total_steps: int):
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


def train(cfg: TrainConfig, out: str | os.PathLike, overwrite: bool = False, progress: bool = True) -> Path:
    """Train a PACT model with SVI and write the run directory; returns its path."""
    cfg.validate()
    device = resolve_device(cfg.device)
    train_data = load_dataset(cfg.dataset, True, cfg.data_root).subset(cfg.train_subset, cfg.seed)
    out = prepare_run_dir(out, overwrite)
    pyro.set_rng_seed(cfg.seed)
    pyro.clear_param_store()
    model, guide = build(cfg)
    model.to(device)
    guide.to(device)
    steps_per_epoch = max(1, len(train_data) // cfg.batch_size)
    total = max(1, round(cfg.epochs * steps_per_epoch))
    optim = _make_optim(cfg, total)
    svi = pyro.infer.SVI(model.model, guide, optim, loss=MAPObjective())
    (out / "config.json").write_text(json.dumps({**dataclasses.asdict(cfg), "versions": _versions()}, indent=2))
    gen = torch.Generator().manual_seed(cfg.seed)
    step, epoch = 0, 0
    metrics = open(out / "metrics.jsonl", "a")
    bar = tqdm(total=total, desc=f"train {cfg.method} {cfg.dataset} d{cfg.depth}", disable=not progress)
    start = time.time()
    try:
        while step < total:
            epoch += 1
            model.train()
            guide.train()
            for x, y in batches(train_data, cfg.batch_size, True, gen, device, cfg.augment, drop_last=True):
                if cfg.tau_warmup > 0:
                    model.prior_weight = min(1.0, step / (cfg.tau_warmup * total))
                loss = svi.step(x, y)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at step {step}; lower --lr or raise --temperature")
                optim.step()  # advance the LR schedule
                step += 1
                if step % cfg.log_every == 0 or step == total:
                    n = [float(guide.trace.nodes[units_site(b)]["value"].detach().mean()) for b in range(len(model.units_per_block))
                         if units_site(b) in guide.trace.nodes]
                    rec = {"step": step, "epoch": epoch, "loss": loss, "units": n, "time": time.time() - start}
                    metrics.write(json.dumps(rec) + "\n")
                    metrics.flush()
                    bar.set_postfix(loss=f"{loss:.3f}", units="/".join(f"{v:.2f}" for v in n))
                bar.update()
                if step >= total:
                    break
            _atomic_save(
                {"model": model.state_dict(), "guide": guide.state_dict(), "epoch": epoch, "step": step},
                out / "checkpoint.pt",
            )
    finally:
        bar.close()
        metrics.close()
    return out


def load_run(path: str | os.PathLike, device: str = "auto"):
    """``(model, guide, config)`` of a finished run directory, in eval mode."""
    path = Path(path)
    if not (path / "config.json").is_file() or not (path / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"run directory {str(path)!r} has no config.json and checkpoint.pt")
    raw = json.loads((path / "config.json").read_text())
    raw.pop("versions", None)
    cfg = TrainConfig(**raw)
    try:
        ckpt = torch.load(path / "checkpoint.pt", map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"checkpoint {str(path / 'checkpoint.pt')!r} cannot be loaded safely: {err}") from None
    model, guide = build(cfg)
    model.load_state_dict(ckpt["model"])
    guide.load_state_dict(ckpt["guide"])
    dev = resolve_device(device)
    model.to(dev).eval()
    guide.to(dev).eval()
    return model, guide, cfg
