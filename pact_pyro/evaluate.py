"""Evaluate a trained run on a test set: accuracy, FLOPs (mean, std, full) and units per block."""

from __future__ import annotations

import json
import os

import torch
from tqdm.auto import tqdm

from .data import TensorData, batches
from .flops import FlopTable
from .imagefolder import FolderData
from .threshold import threshold

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(
    model,
    guide,
    data: TensorData | FolderData,
    mode: str = "threshold",
    threshold_value: float = 0.5,
    batch_size: int = 256,
    seed: int = 0,
    predictions: str | os.PathLike | None = None,
    progress: bool = True,
    chunk_size: int | None = None,
) -> dict:
    """One JSON-ready dict: ``accuracy``, ``flops_mean``, ``flops_std``, ``flops_full``, ``units_mean``
    (per block), ``examples``, ``mode``; for spatial models also ``map_std`` (the per-image standard deviation
    of the units map over positions, averaged over blocks and images) and ``uniform_maps`` (images whose every
    block halts everywhere at the same unit). ``predictions`` writes per-example label, prediction, units
    (CSV; spatial models: the mean units over positions).
    ``chunk_size`` is passed to :func:`~pact_pyro.threshold.threshold` (the same results, less memory)."""
    device = next(model.backbone.parameters()).device
    streamed = hasattr(data, "input_shape")  # a FolderData: decoded batch by batch
    C, H, W = data.input_shape if streamed else data.images.shape[1:]
    table = FlopTable.for_model(model, (C, H, W), guide)
    gen = torch.Generator(device=device).manual_seed(seed)
    preds, units, flops, map_std, uniform = [], [], [], [], []
    for x, _ in tqdm(
        data.batches(batch_size, device) if streamed else batches(data, batch_size, device=device),
        desc=f"evaluate ({mode})",
        disable=not progress,
        total=-(-len(data) // batch_size),
    ):
        r = threshold(model, guide, x, threshold_value, mode, gen, table, chunk_size)
        preds.append(r.logits.argmax(-1).cpu())
        units.append(r.units.cpu())
        flops.append(r.flops.cpu())
        if r.maps is not None:
            std = torch.stack(
                [m.flatten(1).double().std(1, unbiased=False) for m in r.maps], -1
            )  # [B, blocks]
            map_std.append(std.mean(1).cpu())
            uniform.append((std == 0).all(1).cpu())
    pred, units, flops = torch.cat(preds), torch.cat(units), torch.cat(flops).double()
    if predictions is not None:
        with open(predictions, "w") as f:
            f.write(
                "index,label,prediction," + ",".join(f"units_{b}" for b in range(units.shape[1])) + ",flops\n"
            )
            for i in range(len(pred)):
                row = [i, int(data.labels[i]), int(pred[i]), *units[i].tolist(), int(flops[i])]
                f.write(",".join(map(str, row)) + "\n")
    spatial = {}
    if map_std:
        spatial = {"map_std": float(torch.cat(map_std).mean()), "uniform_maps": int(torch.cat(uniform).sum())}
    return {
        "accuracy": float((pred == data.labels).double().mean()),
        "flops_mean": float(flops.mean()),
        "flops_std": float(flops.std(unbiased=False)),
        "flops_full": int(table.full),
        "flops_ratio": float(flops.mean() / table.full),
        "units_mean": units.double().mean(0).tolist(),
        "units_max": [len(b) for b in table.units],
        "examples": len(pred),
        "mode": mode,
        **spatial,
    }


def dumps(result: dict) -> str:
    return json.dumps(result)
