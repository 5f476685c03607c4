"""Crash-safe, pickle-free training checkpoints.

A checkpoint is one file written by ``torch.save`` and read back with ``torch.load(weights_only=True)``:
only tensors, numbers, strings, lists, tuples and dicts are accepted, so a file carrying a pickle payload
(any other global) is refused before anything in it runs. It holds::

    format, version          "pact-pyro-checkpoint", 1
    config                   the TrainConfig as a dict
    model, guide             state dicts (weights and BatchNorm buffers)
    optim                    PyroOptim.get_state() (optimizer + LR-schedule state per parameter), keyed
                             by stable names "model.<param>" / "guide.<param>", not process-dependent Pyro ids
    rng                      torch, python, numpy and CUDA states; the data-order generator now and at the
                             start of the epoch; the torch state of every DDP rank
    epoch, step, step_in_epoch, world_size

Writes are atomic: a temporary file in the same directory is written, flushed, ``fsync``-ed and renamed over
the old checkpoint (``os.replace``), then the directory is ``fsync``-ed. A kill or a full disk at any moment
leaves either the previous checkpoint or the new one, never a mixture.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "atomic_save",
    "load_checkpoint",
    "check_state_dict",
    "capture_rng",
    "restore_rng",
    "optim_state",
    "restore_optim",
]

#: the ``format`` field every trainer checkpoint carries
FORMAT = "pact-pyro-checkpoint"
#: checkpoint layout version (bumped when the saved fields change)
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a loadable pact-pyro checkpoint (corrupt, truncated, unsafe, wrong architecture)."""


def atomic_save(obj: dict, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (temp file + fsync + rename + directory fsync).

    On any error (e.g. ``ENOSPC``) the temporary file is removed, the previous file at ``path`` is untouched
    and an ``OSError`` naming ``path`` is raised.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(
            err.errno, f"could not write checkpoint {str(path)!r} ({err}); the previous one is kept"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - directories cannot be fsync-ed on some filesystems
        pass
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load and check a checkpoint written by :func:`atomic_save` from the trainer.

    Raises :class:`FileNotFoundError` when ``path`` is missing and :class:`CheckpointError` (a ``ValueError``)
    when it is truncated, corrupt, not a pact-pyro checkpoint, or carries anything but plain data (pickled
    code).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes): truncated write?")
    if not zipfile.is_zipfile(
        path
    ):  # torch.save writes a zip archive; a cut-off one has no central directory
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or corrupt, or not a torch.save file (no complete zip)"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = str(err).strip().splitlines()
        why = next(
            (ln for ln in lines if "Unsupported" in ln or "GLOBAL" in ln), "a disallowed pickle opcode"
        )
        raise CheckpointError(
            f"checkpoint {str(path)!r} was refused: it holds more than tensors and plain data "
            f"({why.strip()}); "
            "it was not executed. Only load checkpoints from sources you trust."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or corrupt and cannot be read ({msg})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is a torch file but not a pact-pyro checkpoint (no format={FORMAT!r} entry)"
        )
    if ckpt.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {ckpt.get('version')!r}; "
            f"this pact-pyro reads {VERSION}"
        )
    missing = [k for k in ("config", "model", "guide", "step", "epoch") if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks the entries {missing}: corrupt or hand-edited")
    return ckpt


def check_state_dict(module: torch.nn.Module, state: dict, what: str, path: str | os.PathLike = "") -> None:
    """Raise :class:`CheckpointError` when ``state`` does not fit ``module`` (another architecture)."""
    own = module.state_dict()
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {str(path)!r}: {what} state is a {type(state).__name__}, not a dict"
        )
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [
        f"{k}: {tuple(state[k].shape)} in the checkpoint vs {tuple(v.shape)} here"
        for k, v in own.items()
        if k in state and isinstance(state[k], torch.Tensor) and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {shapes[0]})")
        raise CheckpointError(
            f"checkpoint {str(path)!r} is from another architecture: {what} tensors " + "; ".join(parts)
        )
    bad = [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not v.isfinite().all()
    ]
    if bad:
        raise CheckpointError(f"checkpoint {str(path)!r}: {what} tensor {bad[0]!r} holds NaN/inf values")


# --- random number generators ---------------------------------------------------------------------------


def capture_rng() -> dict:
    """torch (CPU and CUDA), python ``random`` and numpy global states as plain data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
    }


def restore_rng(state: dict) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )


# --- optimizer state under stable names -----------------------------------------------------------------


def _stable_names(modules: dict[str, torch.nn.Module]) -> dict[int, tuple[str, torch.Tensor]]:
    """``id(param) → ("<prefix>.<name>", param)`` for the parameters of ``modules``."""
    out = {}
    for prefix, module in modules.items():
        for name, p in module.named_parameters():
            out[id(p)] = (f"{prefix}.{name}", p)
    return out


def optim_state(optim, modules: dict[str, torch.nn.Module]) -> dict:
    """``optim.get_state()`` (a :class:`pyro.optim.PyroOptim`) keyed by stable parameter names.

    Pyro keys optimizer state by param-store names such as ``pact3$$$stem.weight`` whose prefix depends on how
    many models the process built; ``modules`` (e.g. ``{"model": model, "guide": guide}``) gives names that do
    not.
    """
    import pyro

    names = _stable_names(modules)
    by_store = optim.get_state()
    store = pyro.get_param_store()
    out = {}
    for p in optim.optim_objs:
        if id(p) not in names:
            raise ValueError(
                f"optimizer holds parameter {store.param_name(p)!r} that belongs to none of {list(modules)}"
            )
        out[names[id(p)][0]] = by_store[store.param_name(p)]
    return out


def restore_optim(optim, state: dict, modules: dict[str, torch.nn.Module]) -> None:
    """Load :func:`optim_state` output into a fresh :class:`pyro.optim.PyroOptim` before its first step.

    Optimizers are created for the parameters now, exactly as ``PyroOptim.__call__`` creates them on first
    sight, and the saved optimizer and LR-scheduler states are loaded into them, so the next ``svi.step`` is
    identical to the one an uninterrupted run would take.
    """
    from pyro.optim.optim import _load_state_dict

    by_name = {name: p for name, p in _stable_names(modules).values()}
    unknown = sorted(set(state) - set(by_name))
    if unknown:
        raise CheckpointError(f"optimizer state for unknown parameters {unknown[:3]} (another architecture?)")
    for name, s in state.items():
        p = by_name[name]
        optim.optim_objs[p] = _optim_for(optim, p, name)
        optim.grad_clip[p] = optim._get_grad_clip(p)
        _load_state_dict(optim.optim_objs[p], s)


def _optim_for(optim, p: torch.Tensor, stable_name: str):
    """``optim._get_optim(p)``, except that per-parameter ``optim_args`` (a callable) get the stable name:
    before the first step the parameters are not in Pyro's param store, where Pyro would look their name up.
    (The callable must accept it, e.g. :func:`pact_pyro.train.is_halting_param` reads both forms.)"""
    if not callable(getattr(optim, "pt_optim_args", None)):
        return optim._get_optim(p)
    if optim.pt_optim_args_argc == 1:
        args = optim.pt_optim_args(stable_name)
    else:
        args = optim.pt_optim_args(*stable_name.rsplit(".", 1))
    opt = optim.pt_optim_constructor([p], **args)
    scheduler = getattr(optim, "pt_scheduler_constructor", None)
    return scheduler(opt, **optim.kwargs) if scheduler is not None else opt


def summary(ckpt: dict[str, Any]) -> str:
    """One line describing a loaded checkpoint."""
    cfg = ckpt.get("config", {})
    return (
        f"step {ckpt['step']} (epoch {ckpt['epoch']}) of {cfg.get('method')} {cfg.get('dataset')} depth "
        f"{cfg.get('depth')}, world size {ckpt.get('world_size', 1)}"
    )
