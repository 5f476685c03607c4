"""``pact-pyro report`` on a spatial PACT run: ponder-cost maps, their spread, their saliency correlation."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("pandas")

from pact_pyro.checkpoint import atomic_save, load_checkpoint  # noqa: E402
from pact_pyro.cli import main  # noqa: E402
from pact_pyro.report import write_report  # noqa: E402
from pact_pyro.train import TrainConfig, train  # noqa: E402

N_TEST = 96
FIGURES = ("ponder_maps_least", "ponder_maps_most", "class_ponder_maps", "map_statistics", "tradeoff")


def _tiny_run(data_root, out, method: str, steps: float):
    cfg = TrainConfig(
        dataset="cifar10",
        method=method,
        depth=14,  # 2 units per block: one halting decision per position
        tau=0.5,
        train_subset=256,
        epochs=steps / 4,  # 4 batches of 64 per epoch
        batch_size=64,
        data_root=str(data_root),
        device="cpu",
        log_every=1,
    )
    return train(cfg, out, progress=False)


def _spread_heads(run) -> None:
    """Random local halting terms (bias 0), so that the tiny run's maps vary over positions for sure."""
    path = run / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    g = torch.Generator().manual_seed(0)
    for key, value in ckpt["guide"].items():
        if key.endswith("local_conv.weight"):
            ckpt["guide"][key] = torch.randn(value.shape, generator=g, dtype=value.dtype)
        elif key.endswith("local_conv.bias"):
            ckpt["guide"][key] = torch.zeros_like(value)
    atomic_save(ckpt, path)


def test_report_of_a_tiny_spatial_pact_run(data_root, tmp_path, one_thread):
    run = _tiny_run(data_root, tmp_path / "run", "spatial-pact", steps=2)
    _spread_heads(run)
    (tmp_path / "sweep.csv").write_text("method,tau,accuracy,flops_ratio\nspatial-pact,0.5,0.3,0.8\n")
    args = ["report", str(run), "--test-subset", str(N_TEST), "--num-samples", "1", "--batch-size", "48"]
    assert main([*args, "--sweep", str(tmp_path / "sweep.csv")]) == 0
    out = run / "report"
    for name in FIGURES:
        assert (out / f"{name}.png").stat().st_size > 5000, name
    assert not (out / "inference_data.nc").exists()

    diag = json.loads((out / "diagnostics.json").read_text())
    assert diag["examples"] == N_TEST
    assert 0 <= diag["accuracy_thresholded"] <= 1 and 0 < diag["flops_ratio_thresholded"] <= 1
    assert all(1 <= u <= 2 for u in diag["units_mean_per_block"])
    lo, hi = diag["ponder_map_range"]
    assert diag["ponder_map_possible_range"] == [3, 6] and 3 <= lo <= hi <= 6
    assert all(s >= 0 for s in diag["map_std_mean_per_block"] + diag["map_std_max_per_block"])
    assert all(0 <= c <= N_TEST for c in diag["uniform_per_block"])
    assert 0 <= diag["uniform_all_blocks"] <= min(diag["uniform_per_block"])
    assert 1 <= diag["spearman_map_saliency_count"] <= N_TEST  # the spread heads make maps non-uniform
    assert -1 <= diag["spearman_map_saliency_mean"] <= 1 and 0 <= diag["spearman_map_saliency_positive"] <= 1
    assert 0 <= diag["sampled"]["accuracy_sampled"] <= 1
    assert all(0 <= v <= 1 for v in diag["sampled"]["positions_differ_per_block"])

    with open(out / "examples.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N_TEST and len({r["example"] for r in rows}) == N_TEST
    uniform = 0
    for r in rows:
        stds = [float(r[f"map_std_block_{b}"]) for b in (1, 2, 3)]
        assert min(stds) >= 0
        uniform += max(stds) == 0
        # nearest upsampling by whole factors keeps each block's mean: mean ponder = Σ_b mean units
        ponder = sum(float(r[f"units_block_{b}"]) for b in (1, 2, 3))
        assert float(r["ponder_mean"]) == pytest.approx(ponder, abs=1e-5)
        rho = float(r["spearman_map_saliency"])
        assert math.isnan(rho) == (max(stds) == 0) and (math.isnan(rho) or -1 <= rho <= 1)
    assert uniform == diag["uniform_all_blocks"]

    md = (out / "summary.md").read_text()
    assert "Spatial PACT report" in md and "Spearman(ponder map, gradient saliency)" in md
    assert "images halting at the same unit everywhere" in md and "to_inference_data" in md
    assert "![Average ponder-cost map per class](class_ponder_maps.png)" in md and "| airplane |" in md
    assert '<img src="ponder_maps_most.png"' in (out / "index.html").read_text()


def test_report_refuses_a_sact_run(data_root, tmp_path, one_thread):
    run = _tiny_run(data_root, tmp_path / "sact", "sact", steps=1)
    with pytest.raises(ValueError, match=r"method='pact' or 'spatial-pact'.*method='sact'"):
        write_report(run, test_subset=8)
