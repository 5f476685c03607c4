"""Data-parallel training with ``torchrun`` (``torch.distributed``), for Pyro SVI.

``torchrun --nproc_per_node=K -m pact_pyro.cli train ...`` starts ``K`` processes; each sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and joins a process group (``gloo`` on CPU, ``nccl`` on CUDA). Then:

* **Data** (:func:`shard_batches`, the in-memory equivalent of ``DistributedSampler``): every rank draws the
  same permutation of the training set from the same seeded generator, cuts it into *global* batches of
  ``batch_size`` examples and takes the strided shard ``global_batch[rank::K]`` (``batch_size / K`` examples).
  Steps per epoch and the LR schedule are those of a 1-process run with the same ``batch_size``.
* **Gradients** (:func:`allreduce_loss_and_grads`, SVI's ``loss_and_grads`` hook): after ``loss.backward()``
  the gradients of every model and guide parameter are summed over ranks and divided by ``K`` before the
  optimizer steps, so every rank takes the same step: the gradient of the mean loss over the global batch
  (each rank's loss is already a per-example mean over its equal-size shard). The loss is averaged too, so a
  NaN on any rank stops every rank.
* **Weights** start identical (same seed, then a broadcast from rank 0); halting noise ``z ~ q`` uses a
  per-rank torch seed. BatchNorm normalises with per-rank batch statistics (as in plain DDP without
  ``SyncBatchNorm``); running statistics are averaged over ranks before each checkpoint.
* **Checkpoints and logs** are written by rank 0 only; the file is the same as a 1-process checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .data import TensorData, augment, normalize

__all__ = [
    "DistContext",
    "setup",
    "shard_batches",
    "allreduce_loss_and_grads",
    "average_buffers",
    "broadcast_state",
]


@dataclass(frozen=True)
class DistContext:
    """``rank`` of ``world_size`` processes (``world_size == 1``: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: torch.device) -> DistContext:
    """Join the process group described by torchrun's environment, if any.

    Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) nothing happens and a 1-process context is returned.
    """
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_available():  # pragma: no cover
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), local, owns_group=True)


def shard_batches(
    data: TensorData,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    augment_images: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled batches of this rank: ``(x [batch_size / K, C, H, W], y [batch_size / K])``, last partial
    global batch dropped.

    With ``world_size = 1`` this equals
    ``data.batches(data, batch_size, True, generator, device, augment_images, drop_last=True)`` exactly
    (same permutation, same augmentation draws). Augmentation is drawn for the whole global batch on every
    rank, so the generator advances identically everywhere and the data order does not depend on ``K``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..world_size-1, got rank={rank}, world_size={world_size}")
    if batch_size < world_size or batch_size % world_size:
        raise ValueError(
            f"batch_size must be a multiple of the number of processes {world_size}, got {batch_size}"
        )
    n = len(data)
    order = torch.randperm(n, generator=generator)
    for s in range(0, n - n % batch_size, batch_size):
        idx = order[s : s + batch_size]
        if augment_images:
            x = augment(normalize(data.images[idx], data.name), generator)[rank::world_size]
        else:
            x = normalize(data.images[idx[rank::world_size]], data.name)
        y = data.labels[idx[rank::world_size]]
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _params(modules: list[torch.nn.Module]) -> list[torch.Tensor]:
    """Parameters in a fixed order (the same on every rank)."""
    seen, out = set(), []
    for m in modules:
        for _, p in sorted(m.named_parameters(), key=lambda kv: kv[0]):
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def allreduce_loss_and_grads(loss_fn: Callable, modules: list[torch.nn.Module], world_size: int) -> Callable:
    """A ``loss_and_grads`` for :class:`pyro.infer.SVI`: backward, then average gradients and loss over ranks.

    ``loss_fn(model, guide, *args)`` returns the differentiable per-example loss of this rank's shard.
    """

    def loss_and_grads(model, guide, *args, **kwargs):
        loss = loss_fn(model, guide, *args, **kwargs)
        loss.backward()
        params = _params(modules)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1).to(grads[0].dtype)])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world_size
        offset = 0
        for p in params:
            k = p.numel()
            p.grad = flat[offset : offset + k].view_as(p).clone()
            offset += k
        return flat[-1].clone()

    return loss_and_grads


def average_buffers(modules: list[torch.nn.Module]) -> None:
    """Average floating-point buffers (BatchNorm running mean/var) over ranks, in place."""
    bufs = [
        b
        for m in modules
        for _, b in sorted(m.named_buffers(), key=lambda kv: kv[0])
        if b.is_floating_point()
    ]
    if not bufs:
        return
    flat = torch.cat([b.reshape(-1) for b in bufs])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for b in bufs:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def broadcast_state(modules: list[torch.nn.Module]) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            dist.broadcast(t.data, src=0)


def gather_rng(state: torch.Tensor, ctx: DistContext) -> list[torch.Tensor]:
    """Every rank's torch RNG state (uint8 tensors of equal length), on every rank."""
    if not ctx.active:
        return [state]
    out = [torch.empty_like(state) for _ in range(ctx.world_size)]
    dist.all_gather(out, state)
    return out
