"""Speed–accuracy trade-off on CIFAR-10: PACT and ACT over a τ grid, plain ResNets over a depth family.

Usage (the CPU preset: 17 configurations × 2 seeds = 34 trainings, ≈ 125 single-thread minutes of training,
≈ 70 min on 2 cores as two workers; see ``examples/configs/cifar10_cpu.json``)::

    for k in 0 1; do
      OMP_NUM_THREADS=1 python examples/tradeoff_sweep.py --preset examples/configs/cifar10_cpu.json \\
          --data-root ../shared/data --runs runs/tradeoff_cpu --out results/tradeoff_cifar10_cpu \\
          --worker $k/2 &
    done; wait

GPU users: ``--preset examples/configs/cifar10_gpu_sact.json`` (SACT's recipe, not run here).

Each run trains one model (``pact_pyro.train.train``) into ``<runs>/<name>/`` and is evaluated on the test set
into ``<runs>/<name>/sweep_eval.json``. **Resumable**: a run whose ``sweep_eval.json`` exists is not redone;
an unfinished run directory is trained again from scratch. After every run the CSV and the PNG are rewritten
from all finished runs, so an interrupted sweep still leaves a consistent table.

**Variants** (preset key ``variants``, a list of ``{"name": ..., <TrainConfig fields>}``): extra runs that
change one training setting (guide, temperature, τ warm-up, ...) at a τ of the grid, named
``<method>_d<depth>_tau<τ>_<name>_s<seed>``; they are CSV rows with ``variant = name`` and plot as separate
points, never merged with the main curve.

**Two workers** (``--worker 0/2`` and ``--worker 1/2`` in two processes, same ``--runs`` and ``--out``): each
trains every second run of the plan; CSV and PNG are rewritten atomically from all finished runs by whichever
finishes.

Rows of ``<out>.csv`` (one per run and, for PACT, per test threshold): ``method, variant, depth, tau, seed,
threshold, accuracy, flops_mean, flops_std, flops_std_pct`` (std of per-image FLOPs as % of its mean —
adaptivity), ``flops_ratio`` (to the same network with every unit), ``units_mean`` (per block, ``a/b/c``),
``units_correct`` / ``units_wrong`` (mean total executed units of correctly / wrongly classified test images),
``unit_patterns`` (number of distinct per-block unit tuples over the test images: 1 means the depth is
input-independent, i.e. pruning rather than adaptive computation), ``train_seconds``.
``<out>.md``: the same rows as a Markdown table. ``<out>.png``: test accuracy vs mean FLOPs (PACT threshold
mode, ACT, plain), error bars where seeds repeat.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from pact_pyro.data import load_dataset
from pact_pyro.evaluate import evaluate
from pact_pyro.train import TrainConfig, load_run, train

FIELDS = [
    "method", "variant", "depth", "tau", "seed", "threshold", "accuracy", "flops_mean", "flops_std",
    "flops_std_pct", "flops_ratio", "flops_full", "units_mean", "units_correct", "units_wrong", "n_correct",
    "n_wrong", "unit_patterns", "examples", "train_seconds", "run",
]  # fmt: skip


def plan(preset: dict) -> list[tuple[str, dict]]:
    """``(run name, TrainConfig fields)`` for every run of a preset: PACT and ACT interleaved per τ, then the
    plain depth family (deepest first)."""
    base = dict(preset.get("base", {}))
    runs = []
    for seed in preset.get("seeds", [0]):
        pact, act = preset.get("pact", {}), preset.get("act", {})
        taus = sorted(set(pact.get("taus", [])) | set(act.get("taus", [])))
        for tau in taus:
            for method, spec in (("pact", pact), ("act", act)):
                if tau in spec.get("taus", []):
                    extra = {k: v for k, v in spec.items() if k not in ("taus",)}
                    cfg = {**base, **extra, "method": method, "tau": tau, "seed": seed}
                    runs.append((f"{method}_d{cfg['depth']}_tau{tau:g}_s{seed}", cfg))
        for var in preset.get("variants", []):
            extra = {k: v for k, v in var.items() if k != "name"}
            cfg = {**base, **pact, **extra, "seed": seed}
            cfg.pop("taus", None)
            if "tau" not in cfg or "method" not in cfg:
                raise ValueError(f"variant {var!r} must set 'method' and 'tau'")
            cfg["_variant"] = var["name"]
            runs.append((f"{cfg['method']}_d{cfg['depth']}_tau{cfg['tau']:g}_{var['name']}_s{seed}", cfg))
        plain = preset.get("plain", {})
        for depth in sorted(plain.get("depths", []), reverse=True):
            extra = {k: v for k, v in plain.items() if k != "depths"}
            cfg = {**base, **extra, "method": "plain", "depth": depth, "seed": seed}
            runs.append((f"plain_d{depth}_s{seed}", cfg))
    return runs


def _adaptivity(pred_csv: Path) -> dict:
    """Per-image statistics from an ``evaluate(..., predictions=)`` CSV."""
    with open(pred_csv) as f:
        rows = list(csv.DictReader(f))
    ucols = [k for k in rows[0] if k.startswith("units_")]
    total = torch.tensor([sum(int(r[k]) for k in ucols) for r in rows], dtype=torch.float64)
    correct = torch.tensor([r["label"] == r["prediction"] for r in rows])
    patterns = {tuple(r[k] for k in ucols) for r in rows}

    def mean(t):
        return float(t.mean()) if t.numel() else float("nan")

    return {
        "units_correct": mean(total[correct]),
        "units_wrong": mean(total[~correct]),
        "n_correct": int(correct.sum()),
        "n_wrong": int((~correct).sum()),
        "unit_patterns": len(patterns),
    }


def evaluate_run(run_dir: Path, preset: dict, data_root: str | None, variant: str = "") -> list[dict]:
    """Evaluate a trained run on the preset's test subset: one row per test threshold (PACT) or one row."""
    spec = preset.get("eval", {})
    model, guide, cfg = load_run(run_dir, "cpu")
    data = load_dataset(cfg.dataset, False, data_root or cfg.data_root).subset(spec.get("test_subset"), 0)
    thresholds = spec.get("pact_thresholds", [0.5]) if cfg.method == "pact" else [0.5]
    rows = []
    for thr in thresholds:
        with tempfile.TemporaryDirectory() as tmp:
            pred = Path(tmp) / "pred.csv"
            res = evaluate(model, guide, data, "threshold", thr, spec.get("batch_size", 250), 0, pred, False)
            ada = _adaptivity(pred)
        rows.append(
            {
                "method": cfg.method,
                "variant": variant,
                "depth": cfg.depth,
                "tau": cfg.tau if cfg.method != "plain" else "",
                "seed": cfg.seed,
                "threshold": thr if cfg.method == "pact" else "",
                "accuracy": res["accuracy"],
                "flops_mean": res["flops_mean"],
                "flops_std": res["flops_std"],
                "flops_std_pct": 100 * res["flops_std"] / res["flops_mean"],
                "flops_ratio": res["flops_ratio"],
                "flops_full": res["flops_full"],
                "units_mean": "/".join(f"{u:.3f}" for u in res["units_mean"]),
                "examples": res["examples"],
                "run": run_dir.name,
                **ada,
            }
        )
    return rows


def collect(runs_dir: Path, names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        f = runs_dir / name / "sweep_eval.json"
        if f.is_file():
            rows.extend(json.loads(f.read_text()))
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in FIELDS})
    os.replace(tmp, path)


def summarize(rows: list[dict]) -> str:
    """A Markdown table of the sweep (PACT at every test threshold), by method, variant, τ/depth and seed."""
    head = (
        "| method | variant | depth | τ | seed | threshold | accuracy | mean FLOPs (M) | FLOP std / mean | "
        "units/block | units correct / wrong | unit patterns |\n|" + "---|" * 12
    )
    lines = [head]

    def order(r):
        tau = -1.0 if r["tau"] == "" else float(r["tau"])
        return (r["method"], r.get("variant", ""), tau, r["depth"], r["seed"], str(r["threshold"]))

    for r in sorted(rows, key=order):
        tau = "" if r["tau"] == "" else f"{float(r['tau']):g}"
        lines.append(
            f"| {r['method']} | {r.get('variant', '')} | {r['depth']} | {tau} | {r['seed']} | "
            f"{r['threshold']} | {100 * r['accuracy']:.2f} % | {r['flops_mean'] / 1e6:.1f} | "
            f"{r['flops_std_pct']:.1f} % | {r['units_mean']} | {r['units_correct']:.2f} / "
            f"{r['units_wrong']:.2f} | {r['unit_patterns']} |"
        )
    return "\n".join(lines) + "\n"


def plot(csv_path: Path, path: Path, title: str) -> None:
    """The PNG of the sweep: :func:`pact_pyro.plots.plot_tradeoff` of the CSV, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pact_pyro.plots import plot_tradeoff, read_sweep

    fig = plot_tradeoff(read_sweep(csv_path), title=title)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", required=True, help="preset JSON (examples/configs/*.json)")
    p.add_argument("--runs", required=True, help="folder of the run directories (resumable)")
    p.add_argument("--out", required=True, help="output prefix: writes <out>.csv and <out>.png")
    p.add_argument("--data-root", default=None, help="dataset folder (default: $PACT_PYRO_DATA, else ./data)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated run names to train (default: all; the table "
        "still covers every finished run of the preset)",
    )
    p.add_argument(
        "--worker", default="0/1", help="K/N: train every N-th run of the plan from the K-th (0/1: all)"
    )
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    args = p.parse_args(argv)
    try:
        k, n = (int(v) for v in args.worker.split("/"))
        if not 0 <= k < n:
            raise ValueError
    except ValueError:
        p.error(f"--worker must be K/N with 0 <= K < N, got {args.worker!r}")

    torch.set_num_threads(args.threads)
    preset = json.loads(Path(args.preset).read_text())
    runs = plan(preset)
    names = [name for name, _ in runs]  # the table covers every run, whichever process trained it
    variant_of = {name: cfg.pop("_variant", "") for name, cfg in runs}
    if args.only:
        keep = set(args.only.split(","))
        unknown = sorted(keep - set(names))
        if unknown:
            p.error(f"--only names runs that are not in the preset: {unknown}")
        runs = [r for r in runs if r[0] in keep]
    runs = runs[k::n]
    runs_dir, out = Path(args.runs), Path(args.out)
    if args.dry_run:
        for name, cfg in runs:
            print(name, json.dumps(cfg))
        return 0
    runs_dir.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    title = f"{preset.get('name', Path(args.preset).stem)}: {preset.get('title', '')}".strip(": ")
    start = time.time()
    for i, (name, fields) in enumerate(runs):
        run_dir = runs_dir / name
        if (run_dir / "sweep_eval.json").is_file():
            print(f"[{i + 1}/{len(runs)}] {name}: done, skipped", flush=True)
            continue
        cfg = TrainConfig(**{**fields, "data_root": args.data_root or fields.get("data_root")})
        t0 = time.time()
        print(
            f"[{i + 1}/{len(runs)}] {name}: training ({time.time() - start:.0f}s into the sweep)", flush=True
        )
        train(cfg, run_dir, overwrite=True, progress=False)
        seconds = time.time() - t0
        rows = evaluate_run(run_dir, preset, args.data_root, variant_of[name])
        for r in rows:
            r["train_seconds"] = seconds
        (run_dir / "sweep_eval.json").write_text(json.dumps(rows, indent=1))
        for r in rows:
            print(
                f"    acc {r['accuracy']:.4f}  flops {r['flops_mean'] / 1e6:.2f}M"
                f" ± {r['flops_std_pct']:.1f}%  "
                f"units {r['units_mean']}  patterns {r['unit_patterns']}  train {seconds:.0f}s",
                flush=True,
            )
        done = collect(runs_dir, names)
        write_csv(done, out.with_suffix(".csv"))
        plot(out.with_suffix(".csv"), out.with_suffix(".png"), title)
    done = collect(runs_dir, names)
    if done:
        write_csv(done, out.with_suffix(".csv"))
        plot(out.with_suffix(".csv"), out.with_suffix(".png"), title)
        out.with_suffix(".md").write_text(summarize(done))
    print(f"{len(done)} rows -> {out.with_suffix('.csv')}, {out.with_suffix('.png')}", flush=True)
    return 0 if not any(math.isnan(r["accuracy"]) for r in done) else 1


if __name__ == "__main__":
    sys.exit(main())
