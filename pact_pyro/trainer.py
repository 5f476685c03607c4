"""The one training loop: run directory, atomic checkpoints, bit-exact resume, DDP, τ schedules, metrics.

Every task (images: :class:`pact_pyro.train.ImageTask`; sequences: :class:`pact_pyro.train_seq.SequenceTask`)
trains through :func:`run_training`, which reads top to bottom::

    check the batch → find the checkpoint to resume → fine-tune source → load data → run directory
    → build model and guide → optimizer and SVI → restore → loop

The task supplies what differs (:class:`Task`): its config (a dataclass, stored in ``config.json`` and every
checkpoint), data (one epoch of batches from a seeded generator), model builder, optimizer, the prior-weight
schedule (``model.prior_weight``: a warm-up by fraction, or a ramp once validation accuracy reaches a level),
what a metric record holds, and an optional validation hook with state that checkpoints carry.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pyro
import torch
from tqdm.auto import tqdm

from .objective import MAPObjective, backward_once

__all__ = ["Task", "run_training", "check_resume_config"]


class RunDirError(FileExistsError):
    """``out`` exists and is not empty, and neither ``resume`` nor ``overwrite`` was given."""


class Task(Protocol):
    """What a task gives the loop (see :class:`pact_pyro.train.ImageTask` for the reference)."""

    cfg: Any  #: a dataclass with ``seed``, ``batch_size``, ``log_every``, ``checkpoint_every``
    resume_free: tuple[str, ...]  #: config fields a resumed run may change

    def load_data(self) -> None:
        """Load (or check) the training data; runs before anything is written."""

    def total_steps(self) -> int:
        """Optimizer steps of the whole run."""

    def build(self, source: dict | None) -> tuple[torch.nn.Module, torch.nn.Module]:
        """Model and guide with fresh weights (a fine-tune ``source`` loaded into the backbone)."""

    def make_optim(self, total: int) -> pyro.optim.PyroOptim:
        """The optimizer and learning-rate schedule."""

    def batches(self, gen: torch.Generator, rank: int, world: int, device) -> Iterator:
        """One epoch of ``(x, y)`` for this process, drawn with ``gen``."""

    def prepare(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-step input transform (memory format, particles)."""

    def prior_weight(self, step: int, total: int) -> float | None:
        """``model.prior_weight`` for the step about to run (0-based ``step``); ``None``: leave it."""

    def record(self, model, guide) -> dict:
        """Task fields of a metric record (e.g. the mean executed units)."""

    def after_step(self, model, guide, step: int, total: int) -> dict:
        """After step ``step`` (1-based): validation fields for the metric record (empty: nothing to add)."""

    def state_dict(self) -> dict:
        """Task state a checkpoint keeps (e.g. where a τ ramp began)."""

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""


def _versions() -> dict:
    import torchvision

    return {"torch": torch.__version__, "pyro": pyro.__version__, "torchvision": torchvision.__version__}


def check_resume_config(cfg, saved: dict, path: Path, resume_free: tuple[str, ...] = ()) -> None:
    """Refuse to resume with settings that change the training trajectory (fields missing from an older
    config count as their defaults)."""
    now = dataclasses.asdict(cfg)
    defaults = dataclasses.asdict(type(cfg)())
    saved = {k: saved.get(k, defaults.get(k)) for k in set(saved) | set(now)}
    diff = [
        f"{k}={saved.get(k)!r} (now {now.get(k)!r})"
        for k in sorted(set(now) | set(saved))
        if k not in resume_free and k not in ("versions", "init_from_sha256") and saved.get(k) != now.get(k)
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


def run_training(task: Task, out: Path, overwrite: bool, progress: bool, resume: bool, device) -> Path:
    """Train ``task`` into ``out`` on ``device``: one process, or data-parallel when started by ``torchrun``
    (the process group is set up and torn down here; each process takes its local CUDA device)."""
    from . import distributed

    ctx = distributed.setup(device)
    try:
        if device.type == "cuda" and ctx.active:
            device = torch.device("cuda", ctx.local_rank)
        return _run_training(task, out, overwrite, progress, resume, device, ctx)
    finally:
        ctx.close()


def _run_training(task: Task, out: Path, overwrite: bool, progress: bool, resume: bool, device, ctx) -> Path:
    """The training run, top to bottom: check, prepare the run directory, build, restore, loop."""
    cfg = task.cfg
    _check_world_batch(cfg, ctx)
    ckpt = _checkpoint_to_resume(task, out, resume, overwrite)
    source = _fine_tune_source(task) if ckpt is None else None
    task.load_data()
    _prepare_run_dir(cfg, out, ckpt, source, ctx, progress)
    model, guide = _build_on_device(task, source, device, ctx)
    total = task.total_steps()
    optim = task.make_optim(total)
    run = _Run(task, out, ctx, model, guide, optim, _make_svi(cfg, model, guide, optim, ctx), total, device)
    if ckpt is not None:
        run.restore(ckpt, progress)
    run.loop(progress)
    ctx.barrier()
    return out


def _check_world_batch(cfg, ctx) -> None:
    if cfg.batch_size % ctx.world_size or cfg.batch_size // ctx.world_size < 2:
        raise ValueError(
            f"batch_size must be a multiple of the {ctx.world_size} processes with >= 2 examples each, "
            f"got {cfg.batch_size}"
        )


def _checkpoint_to_resume(task: Task, out: Path, resume: bool, overwrite: bool) -> dict | None:
    """The checkpoint ``--resume`` continues (None: start fresh); refuses a non-empty ``out`` otherwise."""
    from . import checkpoint as ck

    path = out / "checkpoint.pt"
    if resume and path.is_file():
        ckpt = ck.load_checkpoint(path)
        check_resume_config(task.cfg, ckpt["config"], out, task.resume_free)
        return ckpt
    if not resume and out.exists() and any(out.iterdir()) and not overwrite:  # checked on every rank
        raise RunDirError(
            f"out={str(out)!r} already exists and is not empty; pass --resume, --overwrite or another --out"
        )
    return None


def _fine_tune_source(task: Task) -> dict | None:
    """``cfg.init_from``'s backbone, checked against the model before anything is written."""
    init_from = getattr(task.cfg, "init_from", None)
    if init_from is None:
        return None
    from .finetune import load_backbone_source

    source = load_backbone_source(init_from)
    task.build(source)  # a mismatch fails here, before the run directory exists
    return source


def _prepare_run_dir(cfg, out: Path, ckpt: dict | None, source, ctx, progress: bool) -> None:
    """Fresh run: ``config.json`` (with versions and the source checksum), no old checkpoint or metrics.
    Resumed run: metric records past the checkpoint are dropped."""
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


def _build_on_device(task: Task, source, device, ctx):
    """Seeded model and guide on ``device`` (same weights on every rank), units compiled if asked."""
    from . import distributed

    cfg = task.cfg
    pyro.set_rng_seed(cfg.seed)
    pyro.clear_param_store()
    model, guide = task.build(source)
    model.to(device)
    guide.to(device)
    if getattr(cfg, "compile", False):
        model.backbone.compile_units()
    if ctx.active:
        distributed.broadcast_state([model, guide])
        torch.manual_seed(cfg.seed + 1_000_003 * ctx.rank)  # independent halting noise per rank
    return model, guide


def _make_svi(cfg, model, guide, optim, ctx) -> pyro.infer.SVI:
    """``SVI`` with the MAP objective; bf16 autocast (``amp``), DDP gradient averaging and the
    no-``retain_graph`` backward of compiled units wrap the loss as needed."""
    from . import distributed

    objective = MAPObjective()
    loss_fn = objective.differentiable_loss
    if getattr(cfg, "amp", False):

        def loss_fn(model_fn, guide_fn, *args, **kwargs):
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                return objective.differentiable_loss(model_fn, guide_fn, *args, **kwargs)

    loss_and_grads = (
        distributed.allreduce_loss_and_grads(loss_fn, [model, guide], ctx.world_size) if ctx.active else None
    )
    if getattr(cfg, "compile", False) and loss_and_grads is None:  # compiled backward refuses retain_graph
        loss_and_grads = backward_once(loss_fn)
    return pyro.infer.SVI(model.model, guide, optim, loss=loss_fn, loss_and_grads=loss_and_grads)


class _Run:
    """The state of a training loop: position (``step``, ``epochs_done``, ``skip``: batches of the current
    epoch already trained on), the data-order generator, and what the loop reads and writes."""

    def __init__(self, task: Task, out, ctx, model, guide, optim, svi, total: int, device) -> None:
        self.task, self.cfg, self.out, self.ctx, self.device = task, task.cfg, out, ctx, device
        self.model, self.guide, self.optim, self.svi = model, guide, optim, svi
        self.total = total
        self.modules = {"model": model, "guide": guide}
        self.ckpt_path = out / "checkpoint.pt"
        self.gen = torch.Generator().manual_seed(task.cfg.seed)
        self.step, self.epochs_done, self.skip, self.saved_at = 0, 0, 0, -1

    def restore(self, ckpt: dict, progress: bool) -> None:
        """Weights, optimizer and LR schedule, every RNG, the task state and the position of a checkpoint."""
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
        self.task.load_state_dict(ckpt.get("task", {}))
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
                    "task": self.task.state_dict(),
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
            desc=f"train {cfg.method} {getattr(cfg, 'dataset', None) or cfg.task}",
            disable=not (progress and self.ctx.is_main),
        )
        self.start = time.time()
        try:
            while self.step < self.total:
                epoch_start = self.gen.get_state()
                consumed = self.epoch(epoch_start)
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

    def epoch(self, epoch_start: torch.Tensor) -> int:
        """One pass over the task's batches from where it stands (``epoch_start``: the data generator's state
        when the epoch began, what a mid-epoch checkpoint replays from); returns the batches consumed."""
        self.model.train()
        self.guide.train()
        batches = self.task.batches(self.gen, self.ctx.rank, self.ctx.world_size, self.device)
        every = self.cfg.checkpoint_every
        for i, (x, y) in enumerate(batches):
            if i < self.skip:  # resumed mid-epoch: replay the data order up to the checkpoint
                continue
            loss = self.train_step(x, y)
            self.log(loss, self.task.after_step(self.model, self.guide, self.step, self.total))
            if self.step >= self.total:
                return i + 1
            if every and self.step % every == 0:
                self.save(epoch_start, i + 1)
        return 0

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One SVI step on the task's prepared inputs with the scheduled prior weight, then the LR step."""
        x, y = self.task.prepare(x, y)
        weight = self.task.prior_weight(self.step, self.total)
        if weight is not None:
            self.model.prior_weight = weight
        loss = self.svi.step(x, y)
        if not math.isfinite(loss):
            last = f"step {self.saved_at}" if self.saved_at >= 0 else "none yet"
            raise FloatingPointError(
                f"loss became {loss} at step {self.step + 1}; training stopped, last good checkpoint: "
                f"{last} ({str(self.ckpt_path)!r}); lower --lr or raise --temperature"
            )
        if hasattr(self.optim, "step"):  # advance the LR schedule (PyroLRScheduler)
            self.optim.step()
        self.step += 1
        return loss

    def log(self, loss: float, extra: dict) -> None:
        """A ``metrics.jsonl`` record every ``log_every`` steps, at the last, and whenever the task adds
        validation fields; the progress bar."""
        due = self.step % self.cfg.log_every == 0 or self.step == self.total
        if self.metrics is not None and (extra or due):
            task = self.task.record(self.model, self.guide)
            rec = {"step": self.step, "epoch": self.epochs_done + 1, "loss": loss, **task}
            rec["time"] = time.time() - self.start
            rec.update(extra)
            self.metrics.write(json.dumps(rec) + "\n")
            self.metrics.flush()
            units = task.get("units")
            shown = "/".join(f"{v:.2f}" for v in units) if isinstance(units, list) else f"{units}"
            self.bar.set_postfix(loss=f"{loss:.3f}", units=shown)
        self.bar.update()
