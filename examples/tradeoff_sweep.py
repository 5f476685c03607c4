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
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch

from pact_pyro.diagnostics import error_auroc
from pact_pyro.evaluate import evaluate
from pact_pyro.train import TrainConfig, load_images, load_run, train

FIELDS = [
    "method", "variant", "depth", "tau", "seed", "threshold", "accuracy", "flops_mean", "flops_std",
    "flops_std_pct", "flops_ratio", "flops_full", "units_mean", "units_correct", "units_wrong", "n_correct",
    "n_wrong", "unit_patterns", "error_auroc_units", "examples", "train_seconds", "stage", "run", "commit",
    "config_sha", "map_std", "uniform_maps",
]  # fmt: skip

#: the adaptive methods a preset may list (per stage), each with its deterministic baseline for compare()
ADAPTIVE = ("pact", "act", "spatial-pact", "sact")
BASELINE = {"pact": "act", "spatial-pact": "sact"}


class Margin(NamedTuple):
    """One adaptive operating point's margins in accuracy points, as :func:`compare` passes them to
    :func:`verdicts`: over its baseline (ACT, SACT) and over the plain family, each interpolated at its FLOPs
    (NaN outside their range); ``bound``, for a point cheaper than every baseline point, its margin over the
    baseline's cheapest point (a lower bound of ``base`` if the baseline's accuracy does not fall as its
    FLOPs grow), else NaN."""

    tau: float
    base: float
    plain: float
    se: float  # standard error of the accuracy over seeds (NaN with one seed)
    bound: float


def plan(preset: dict) -> list[tuple[str, dict]]:
    """``(run name, TrainConfig fields)`` for every run of a preset, in priority order: per seed PACT and ACT
    interleaved per τ, the variants, the plain depth family (deepest first); then the ``finetune`` stage
    (PACT and ACT per τ, the fine-tune variants, each τ's extra seeds) and the ``scratch`` stage.

    Private keys: ``_variant`` (variant name), ``_stage`` (``""``, ``finetune`` or ``scratch``) and ``_after``
    (names of runs that must finish first: a fine-tune waits for its source run).
    """
    base = dict(preset.get("base", {}))
    runs = _plan_main(preset, base)
    runs += _plan_finetune(preset, base)
    for method in ADAPTIVE:
        spec = preset.get("scratch", {}).get(method)
        for tau in (spec or {}).get("taus", []):
            extra = {k: v for k, v in spec.items() if k != "taus"}
            for seed in preset.get("seeds", [0]):
                cfg = {**base, **extra, "method": method, "tau": tau, "seed": seed, "_stage": "scratch"}
                runs.append((f"{method}_{_net(cfg)}_tau{tau:g}_s{seed}", cfg))
    names = [n for n, _ in runs]
    if len(set(names)) != len(names):
        raise ValueError(
            f"preset gives two runs the same name: {sorted(n for n in names if names.count(n) > 1)[:3]}"
        )
    return runs


def _net(cfg: dict) -> str:
    """The network part of a run name: ``d20`` (the CIFAR ResNet of that depth) or a torchvision arch."""
    arch = cfg.get("arch", "preact")
    return f"d{cfg.get('depth', 20)}" if arch == "preact" else arch


def _plan_finetune(preset: dict, base: dict) -> list[tuple[str, dict]]:
    ft = preset.get("finetune")
    if not ft:
        return []
    if "source" not in ft:
        raise ValueError("preset 'finetune' must name its 'source' run (e.g. 'plain_d20_s0')")
    common = {k: v for k, v in ft.items() if k not in ("source", "variants", *ADAPTIVE)}
    private = {"_stage": "finetune", "_after": [ft["source"]], "_source": ft["source"]}
    runs, extra_runs = [], []
    taus = sorted({t for m in ADAPTIVE for t in ft.get(m, {}).get("taus", [])})
    # per-example halting (PACT vs ACT, per τ) first, then per-position halting (spatial PACT vs SACT)
    order = [(tau, m) for group in (ADAPTIVE[:2], ADAPTIVE[2:]) for tau in taus for m in group]
    for tau, method in order:
        spec = ft.get(method, {})
        if tau not in spec.get("taus", []):
            continue
        fields = {k: v for k, v in spec.items() if k not in ("taus", "extra_seeds")}
        cfg = {**base, **common, **fields, "method": method, "tau": tau}
        for seed in preset.get("seeds", [0]):
            runs.append((f"ft_{method}_{_net(cfg)}_tau{tau:g}_s{seed}", {**cfg, "seed": seed, **private}))
        for seed in spec.get("extra_seeds", {}).get(f"{tau:g}", []):
            extra_runs.append(
                (f"ft_{method}_{_net(cfg)}_tau{tau:g}_s{seed}", {**cfg, "seed": seed, **private})
            )
    variants = []
    for var in ft.get("variants", []):
        extra = {k: v for k, v in var.items() if k != "name"}
        if "tau" not in extra or "method" not in extra:
            raise ValueError(f"variant {var!r} must set 'method' and 'tau'")
        spec = {k: v for k, v in ft.get(extra["method"], {}).items() if k not in ("taus", "extra_seeds")}
        for seed in var.get("seeds", preset.get("seeds", [0])):
            cfg = {**base, **common, **spec, **extra, "seed": seed, **private, "_variant": var["name"]}
            cfg.pop("seeds", None)
            variants.append((f"ft_{cfg['method']}_{_net(cfg)}_tau{cfg['tau']:g}_{var['name']}_s{seed}", cfg))
    return runs + variants + extra_runs  # A/B variants decide defaults: before the extra seeds


def _plan_main(preset: dict, base: dict) -> list[tuple[str, dict]]:
    runs = []
    for seed in preset.get("seeds", [0]):
        pact, act = preset.get("pact", {}), preset.get("act", {})
        taus = sorted(set(pact.get("taus", [])) | set(act.get("taus", [])))
        for tau in taus:
            for method, spec in (("pact", pact), ("act", act)):
                if tau in spec.get("taus", []):
                    extra = {k: v for k, v in spec.items() if k not in ("taus",)}
                    cfg = {**base, **extra, "method": method, "tau": tau, "seed": seed}
                    runs.append((f"{method}_{_net(cfg)}_tau{tau:g}_s{seed}", cfg))
        for var in preset.get("variants", []):
            extra = {k: v for k, v in var.items() if k != "name"}
            cfg = {**base, **pact, **extra, "seed": seed}
            cfg.pop("taus", None)
            if "tau" not in cfg or "method" not in cfg:
                raise ValueError(f"variant {var!r} must set 'method' and 'tau'")
            cfg["_variant"] = var["name"]
            runs.append((f"{cfg['method']}_{_net(cfg)}_tau{cfg['tau']:g}_{var['name']}_s{seed}", cfg))
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
    total = torch.tensor([sum(float(r[k]) for k in ucols) for r in rows], dtype=torch.float64)
    correct = torch.tensor([r["label"] == r["prediction"] for r in rows])
    patterns = {tuple(r[k] for k in ucols) for r in rows}

    def mean(t):
        return float(t.mean()) if t.numel() else float("nan")

    return {
        "error_auroc_units": error_auroc(total.numpy(), (~correct).numpy()),
        "units_correct": mean(total[correct]),
        "units_wrong": mean(total[~correct]),
        "n_correct": int(correct.sum()),
        "n_wrong": int((~correct).sum()),
        "unit_patterns": len(patterns),
    }


def evaluate_run(
    run_dir: Path, preset: dict, data_root: str | None, variant: str = "", stage: str = ""
) -> list[dict]:
    """Evaluate a trained run on the preset's test subset: one row per test threshold (PACT) or one row."""
    spec = preset.get("eval", {})
    model, guide, cfg = load_run(run_dir, "cpu")
    data = load_images(cfg, False, data_root).subset(spec.get("test_subset"), 0)
    latent = cfg.method in BASELINE  # PACT and spatial PACT: thresholded halting latents
    thresholds = spec.get("pact_thresholds", [0.5]) if latent else [0.5]
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
                "stage": stage,
                "depth": cfg.depth,
                "tau": cfg.tau if cfg.method != "plain" else "",
                "seed": cfg.seed,
                "threshold": thr if latent else "",
                "accuracy": res["accuracy"],
                "flops_mean": res["flops_mean"],
                "flops_std": res["flops_std"],
                "flops_std_pct": 100 * res["flops_std"] / res["flops_mean"],
                "flops_ratio": res["flops_ratio"],
                "flops_full": res["flops_full"],
                "units_mean": "/".join(f"{u:.3f}" for u in res["units_mean"]),
                "examples": res["examples"],
                "run": run_dir.name,
                "map_std": res.get("map_std", ""),
                "uniform_maps": res.get("uniform_maps", ""),
                **ada,
            }
        )
    return rows


def collect(runs_dir: Path, names: list[str], kept: dict[str, list[dict]] | None = None) -> list[dict]:
    """Rows of every finished run, in plan order: its ``sweep_eval.json``, else the rows ``kept`` from an
    earlier CSV (a fresh clone resumes from the repository's CSV without the run directories)."""
    rows = []
    for name in names:
        f = runs_dir / name / "sweep_eval.json"
        if f.is_file():
            sha = _run_sha(runs_dir / name)
            rows.extend({**r, "config_sha": r.get("config_sha") or sha} for r in json.loads(f.read_text()))
        elif kept and name in kept:
            rows.extend(kept[name])
    return rows


_INT_FIELDS = ("depth", "seed", "n_correct", "n_wrong", "unit_patterns", "examples")


def read_kept(csv_path: Path) -> dict[str, list[dict]]:
    """Rows of an existing sweep CSV by run name, numbers parsed back (empty when there is none)."""
    if not csv_path.is_file():
        return {}
    out: dict[str, list[dict]] = {}
    with open(csv_path) as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                try:  # integers stay integers (a FLOP count of 81102528 must not come back as 8.11025e+07)
                    row[k] = int(v) if k in _INT_FIELDS or v.lstrip("-").isdigit() else float(v)
                except (AttributeError, TypeError, ValueError):
                    row[k] = v if v is not None else ""
            for k in ("method", "variant", "stage", "run", "commit", "units_mean", "config_sha"):
                row[k] = r.get(k) or ""
            out.setdefault(row["run"], []).append(row)
    return out


#: settings that do not change what a run learns (where it ran, how often it logged or checkpointed, where
#: its fine-tune source lives on this machine): left out of the run's config fingerprint
_NOT_TRAINING = (
    "device", "data_root", "log_every", "checkpoint_every", "test_subset", "compile", "init_from", "workers",
    "extra",
)  # fmt: skip


def config_sha(fields: dict) -> str:
    """A fingerprint of the training settings of a run (:data:`_NOT_TRAINING` left out): a row is only
    reused for a plan entry with the same fingerprint, so changing a preset's recipe retrains its runs."""
    import hashlib

    cfg = dataclasses.asdict(TrainConfig(**{k: v for k, v in fields.items() if not k.startswith("_")}))
    keep = {k: v for k, v in sorted(cfg.items()) if k not in _NOT_TRAINING}
    return hashlib.sha1(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _run_sha(run_dir: Path) -> str:
    """:func:`config_sha` of a run directory's ``config.json`` ("" when there is none)."""
    f = run_dir / "config.json"
    if not f.is_file():
        return ""
    raw = json.loads(f.read_text())
    known = {field.name for field in dataclasses.fields(TrainConfig)}  # drops "versions", "init_from_sha256"
    return config_sha({k: v for k, v in raw.items() if k in known})


def code_commit() -> str:
    """The commit of the code running the sweep, for the CSV: ``+dirty`` with uncommitted changes outside
    ``results/`` and ``runs/``, which the sweep writes itself (its CSV, table and plot are not code)."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True
        )
        status = ["git", "status", "--porcelain", "--", ".", ":(exclude)results", ":(exclude)runs"]
        dirty = subprocess.run(status, cwd=here.parent, capture_output=True, text=True).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "") if rev.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


class Claim:
    """``<runs>/<name>.claim``, created exclusively, so that several worker processes share one plan. A claim
    whose process is gone (same host) is stale and taken over."""

    def __init__(self, runs_dir: Path, name: str) -> None:
        self.path = runs_dir / f"{name}.claim"

    def held_by_other(self) -> bool:
        try:
            host, pid = self.path.read_text().split()
        except (FileNotFoundError, ValueError):
            return False
        if host != os.uname().nodename:
            return True
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return int(pid) != os.getpid()

    def acquire(self) -> bool:
        if self.path.exists() and not self.held_by_other():
            self.path.unlink(missing_ok=True)  # stale
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.uname().nodename} {os.getpid()}\n")
        return True

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


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
        "| stage | method | variant | depth | τ | seed | threshold | accuracy | mean FLOPs (M) | "
        "FLOP std / mean | units/block | units correct / wrong | unit patterns |\n|" + "---|" * 13
    )
    lines = [head]

    def order(r):
        tau = -1.0 if r["tau"] == "" else float(r["tau"])
        return (
            r.get("stage", ""),
            r["method"],
            r.get("variant", ""),
            tau,
            r["depth"],
            r["seed"],
            str(r["threshold"]),
        )

    for r in sorted(rows, key=order):
        tau = "" if r["tau"] == "" else f"{float(r['tau']):g}"
        lines.append(
            f"| {r.get('stage') or 'main'} | {r['method']} | {r.get('variant', '')} | {r['depth']} | {tau} | "
            f"{r['seed']} | "
            f"{r['threshold']} | {100 * r['accuracy']:.2f} % | {r['flops_mean'] / 1e6:.1f} | "
            f"{r['flops_std_pct']:.1f} % | {r['units_mean']} | {r['units_correct']:.2f} / "
            f"{r['units_wrong']:.2f} | {r['unit_patterns']} |"
        )
    return "\n".join(lines) + "\n"


def _interp(x: float, pts: list[tuple[float, float]], tol: float = 0.005) -> float:
    """Linear interpolation of ``(flops, accuracy)`` points at ``x``; NaN outside their FLOP range, except
    within ``tol`` (relative) of an end, which counts as that end (the same depth pattern measured with and
    without a method's own heads differs by ~0.1 % of the FLOPs)."""
    pts = sorted(pts)
    if pts and pts[0][0] * (1 - tol) <= x < pts[0][0]:
        return pts[0][1]
    if pts and pts[-1][0] < x <= pts[-1][0] * (1 + tol):
        return pts[-1][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[0][1] if len(pts) == 1 and pts[0][0] == x else float("nan")


def _operating_points(rows: list[dict]) -> dict[tuple, list[dict]]:
    """The rows by operating point ``(stage, method, variant, τ, depth)``, seeds together; a halting
    method's rows only at threshold 0.5."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["method"] in BASELINE and str(r["threshold"]) not in ("0.5", "0.50"):
            continue
        tau = float(r["tau"]) if r["tau"] != "" else -1.0
        groups.setdefault(
            (r.get("stage", ""), r["method"], r.get("variant", ""), tau, int(r["depth"])), []
        ).append(r)
    return groups


def _curve(groups: dict[tuple, list[dict]], method: str, stage: str, variant: str = "") -> list[tuple]:
    """``(mean FLOPs, mean accuracy)`` over seeds of each operating point of one method, stage and variant."""
    import statistics as st

    return [
        (st.fmean(float(r["flops_mean"]) for r in rs), st.fmean(float(r["accuracy"]) for r in rs))
        for (s, m, v, *_), rs in groups.items()
        if m == method and s == stage and v == variant
    ]


def _num(v: float, fmt: str) -> str:
    """A table cell: ``v`` formatted, or an em dash where there is no value (NaN)."""
    return "—" if math.isnan(v) else format(v, fmt)


def compare(rows: list[dict]) -> str:
    """Markdown: every PACT and spatial-PACT operating point (threshold 0.5, mean ± SE over seeds) against its
    baseline of the same stage (ACT, SACT) and the plain depth family, both linearly interpolated at its mean
    FLOPs ("—" outside their range; "≥ m", the ``bound`` below, for a point cheaper than every baseline
    point), with adaptivity (FLOP std / mean, unit patterns, units of wrong vs correct images, error AUROC).
    A variant is held against the baseline's curve of the same variant when the baseline ran it (a 9-epoch
    PACT against 9-epoch ACT, not against the 3-epoch curve), else against the baseline's default curve (an
    A/B of one PACT setting against ACT as shipped)."""
    import statistics as st

    groups = _operating_points(rows)
    if not any(method in BASELINE for _, method, *_ in groups):  # a sweep in progress
        return "No PACT or spatial-PACT run has finished yet: nothing to compare.\n"

    def mean(rs, f):
        return st.fmean(float(r[f]) for r in rs)

    def curve(method, stage, variant=""):
        return _curve(groups, method, stage, variant)

    plain = curve("plain", "")
    head = (
        "| stage | method | τ | seeds | accuracy (%) | mean FLOPs (M) | baseline here | − baseline | "
        "plain here | − plain | FLOP std / mean | unit patterns | units wrong / correct | error AUROC |"
    )
    lines = [head, "|" + "---|" * 14]
    margins: dict[tuple[str, str], list[Margin]] = {}
    for (stage, method, variant, tau, _), rs in sorted(groups.items()):
        if method not in BASELINE:
            continue
        acc = [100 * float(r["accuracy"]) for r in rs]
        a = st.fmean(acc)
        sd = st.stdev(acc) / len(acc) ** 0.5 if len(acc) > 1 else float("nan")  # SE over seeds
        se = "" if math.isnan(sd) else f" ± {sd:.2f}"
        x = mean(rs, "flops_mean")
        base = curve(BASELINE[method], stage, variant) or curve(BASELINE[method], stage)
        ref = 100 * _interp(x, base) if base else float("nan")
        pl = 100 * _interp(x, plain) if plain else float("nan")
        # Below the baseline's FLOP range nothing interpolates, but if the baseline's accuracy does not fall
        # as its FLOPs grow, it is at most its cheapest point's there: a lower bound of the margin.
        cheapest = min(base) if base else (math.inf, math.nan)
        bound = a - 100 * cheapest[1] if math.isnan(ref) and x < cheapest[0] else float("nan")
        if not variant:
            margins.setdefault((stage or "main", method), []).append(Margin(tau, a - ref, a - pl, sd, bound))
        name = f"{stage or 'main'}{' / ' + variant if variant else ''}"
        auroc = st.fmean(float(r.get("error_auroc_units") or "nan") for r in rs)
        # no interpolated value: "—", or the lower bound where the point is cheaper than every baseline point
        vs_base = f"≥ {bound:+.2f}" if not math.isnan(bound) else _num(a - ref, "+.2f")
        lines.append(
            f"| {name} | {method} vs {BASELINE[method]} | {tau:g} | {len(rs)} | {a:.2f}{se} | "
            f"{x / 1e6:.1f} | {_num(ref, '.2f')} | {vs_base} | {_num(pl, '.2f')} | {_num(a - pl, '+.2f')} | "
            f"{mean(rs, 'flops_std_pct'):.1f} % | "
            f"{st.fmean(float(r['unit_patterns']) for r in rs):.0f} | "
            f"{mean(rs, 'units_wrong'):.2f} / {mean(rs, 'units_correct'):.2f} | {_num(auroc, '.3f')} |"
        )
    return "\n".join(lines) + "\n" + verdicts(margins) + ab_bullets(groups, curve)


def ab_bullets(groups: dict[tuple, list[dict]], curve) -> str:
    """Markdown bullets, one per variant (an A/B of one training setting): its accuracy against its own
    method's default curve of the same stage, interpolated at the variant's mean FLOPs (a variant that
    moves the operating point is judged on the curve, not against the τ it was trained at). Outside the
    default curve's FLOP range the nearest default point is named instead."""
    import statistics as st

    out = []
    for (stage, method, variant, tau, _), rs in sorted(groups.items()):
        if not variant:
            continue
        a = 100 * st.fmean(float(r["accuracy"]) for r in rs)
        x = st.fmean(float(r["flops_mean"]) for r in rs)
        ref = curve(method, stage)
        line = (
            f"- A/B {stage or 'main'} / {variant} ({method} τ {tau:g}, {len(rs)} seed(s)): {a:.2f} % at "
            f"{x / 1e6:.1f} MFLOPs"
        )
        d = 100 * _interp(x, ref) if ref else float("nan")
        if not math.isnan(d):
            line += f"; default {method} at these FLOPs {d:.2f} %: {a - d:+.2f}"
        elif ref:
            fx, fy = min(ref, key=lambda p: abs(p[0] - x))
            line += (
                f"; outside the default {method} curve's FLOP range, its nearest point {100 * fy:.2f} % "
                f"at {fx / 1e6:.1f} MFLOPs"
            )
        out.append(line)
    return ("\n" + "\n".join(out) + "\n") if out else ""


def verdicts(margins: dict[tuple[str, str], list[Margin]]) -> str:
    """Markdown bullets for issue 13's two criteria, per stage and adaptive method, from the :class:`Margin`
    of every operating point: the baseline margin at its worst (goal ≥ −0.3 points) and the plain-family
    margin at its best; points outside a curve's FLOP range are counted apart, those cheaper than every
    baseline point with their bound."""
    out = []
    for (stage, method), pts in sorted(margins.items()):
        base = [(m.base, m.tau) for m in pts if not math.isnan(m.base)]
        plain = [(m.plain, m.tau, m.se) for m in pts if not math.isnan(m.plain)]
        cheaper = [(m.bound, m.tau) for m in pts if not math.isnan(m.bound)]
        line = f"- {stage}, {method} ({len(pts)} τ): "
        if base:
            d, t = min(base)
            held = sum(x >= -0.3 for x, _ in base)
            line += (
                f"vs {BASELINE[method]} at matched FLOPs worst {d:+.2f} points (τ {t:g}); ≥ −0.3 at "
                f"{held} of {len(base)} points inside its FLOP range"
            )
        else:
            line += f"no point inside {BASELINE[method]}'s FLOP range"
        if cheaper:
            b, t = min(cheaper)
            line += (
                f"; {len(cheaper)} point(s) cheaper than every {BASELINE[method]} point: against its "
                f"cheapest point worst {b:+.2f} (τ {t:g}), a lower bound of the margin if "
                f"{BASELINE[method]}'s accuracy does not fall as its FLOPs grow"
            )
        if plain:
            d, t, se = max(plain)
            sd = "" if math.isnan(se) else f" ± {se:.2f} (SE over seeds)"
            above = sum(x >= 0 for x, _, _ in plain)
            line += f"; vs the plain family best {d:+.2f}{sd} (τ {t:g}), ≥ 0 at {above} of {len(plain)}"
        else:
            line += "; no point inside the plain family's FLOP range"
        out.append(line)
    return ("\n" + "\n".join(out) + "\n") if out else ""


def read_controls(preset: dict, out: Path) -> list[dict]:
    """The preset's ``controls``: networks trained outside the sweep to test what it found (e.g. by
    ``examples/static_depth.py``), each ``{"label": ..., "file": NAME}`` with ``NAME`` a JSON file next to the
    sweep's outputs holding ``eval.accuracy`` and ``eval.flops_mean``. Returns ``{label, accuracy,
    flops_mean, file}`` per control whose file exists; a missing one is named on stderr and left out (a
    fresh clone may not have run it yet)."""
    found = []
    for c in preset.get("controls", []):
        if not isinstance(c, dict) or not {"label", "file"} <= c.keys():
            raise ValueError(f"preset 'controls' entries need 'label' and 'file', got {c!r}")
        path = out.parent / c["file"]
        if not path.is_file():
            print(f"control {c['label']!r}: {str(path)!r} not found, left out", file=sys.stderr)
            continue
        ev = json.loads(path.read_text())["eval"]
        found.append(
            {
                "label": c["label"],
                "accuracy": ev["accuracy"],
                "flops_mean": ev["flops_mean"],
                "file": c["file"],
            }
        )
    return found


def control_bullets(controls: list[dict], rows: list[dict]) -> str:
    """Markdown bullets, one per control: its accuracy and FLOPs and the plain depth family's line there
    (the same interpolation as :func:`compare`)."""
    if not controls:
        return ""
    plain = _curve(_operating_points(rows), "plain", "")
    out = []
    for c in controls:
        a, x = 100 * float(c["accuracy"]), float(c["flops_mean"])
        pl = 100 * _interp(x, plain) if plain else float("nan")
        out.append(
            f"- control {c['label']} (`{c['file']}`): {a:.2f} % at {x / 1e6:.1f} MFLOPs; plain family there "
            f"{pl:.2f} %: {a - pl:+.2f}"
        )
    return "\n" + "\n".join(out) + "\n"


def plot(csv_path: Path, path: Path, title: str, controls: list[dict] | None = None) -> None:
    """The PNG of the sweep: :func:`pact_pyro.plots.plot_tradeoff` of the CSV (and the controls), written
    atomically. The accuracy axis starts 3 points below the shallowest plain network: an operating point that
    collapsed further (e.g. ACT at a large τ) sits on the bottom edge with its value written beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pact_pyro.plots import plot_tradeoff, read_sweep

    sweep = read_sweep(csv_path)
    plain = (
        sweep["accuracy"][sweep["method"] == "plain"] if "method" in sweep.columns else sweep["accuracy"][:0]
    )
    floor = 100 * float(plain.min()) - 3.0 if len(plain) else None
    fig = plot_tradeoff(sweep, title=title, controls=controls or (), y_floor=floor)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def source_file(out: Path, source: str) -> Path:
    """Where a fine-tune source's backbone is kept (``<out>_sources/<source>.pt``, ~1 MB for ResNet-20)."""
    return out.parent / f"{out.name}_sources" / f"{source}.pt"


def _finished(full_plan, runs_dir: Path, out: Path, kept: dict) -> tuple[set[str], set[str]]:
    """Runs that are done with the settings the preset asks for now, and stale ones (trained with other
    settings, or fine-tuned from a stale source): those are trained again, their CSV rows and exported
    backbone dropped."""
    want = {name: config_sha(fields) for name, fields in full_plan}
    done, stale = set(), set()
    for name, fields in full_plan:
        if (runs_dir / name / "sweep_eval.json").is_file():
            ok = _run_sha(runs_dir / name) == want[name]
        elif name in kept:
            ok = kept[name][0].get("config_sha") in ("", want[name])  # "": a row from before fingerprints
        else:
            continue
        if ok and fields.get("_source") not in stale:
            done.add(name)
        else:
            stale.add(name)
            why = "trained with other settings than the preset's, or from a stale source"
            print(f"{name}: {why}; it will be trained again", flush=True)
            kept.pop(name, None)
            source_file(out, name).unlink(missing_ok=True)
    return done, stale


def _state(name: str, fields: dict, runs_dir: Path, out: Path, done: set[str]) -> str:
    if name in done:
        return "done"
    if Claim(runs_dir, name).held_by_other():
        return "running"
    source = fields.get("_source")
    if source and not source_file(out, source).is_file():
        return f"waits for {source}"
    return "ready"


def stash(runs, runs_dir: Path, carry: Path, done: set[str]) -> int:
    """Copy ``config.json`` and ``checkpoint.pt`` of every started, unfinished run to ``carry/<run>/``."""
    import shutil

    for name, _ in runs:
        src = runs_dir / name
        if name in done or not (src / "checkpoint.pt").is_file():
            continue
        dst = carry / name
        dst.mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "checkpoint.pt"):
            shutil.copy2(src / f, dst / f)
        step = torch.load(dst / "checkpoint.pt", weights_only=True)["step"]
        print(f"stashed {name} at step {step} -> {dst}", flush=True)
    return 0


def unstash(runs, runs_dir: Path, carry: Path, done: set[str]) -> None:
    """Start unfinished runs from their stashed checkpoint when this machine has no newer one."""
    import shutil

    for name, _ in runs:
        src, dst = carry / name, runs_dir / name
        if name in done or not (src / "checkpoint.pt").is_file() or (dst / "checkpoint.pt").is_file():
            continue
        dst.mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "checkpoint.pt"):
            shutil.copy2(src / f, dst / f)
        print(f"{name}: continues from the stashed checkpoint in {src}", flush=True)


def _train_one(cfg: TrainConfig, run_dir: Path, afresh: bool = False) -> None:
    """Train, continuing an interrupted run directory when its settings still match the plan (``afresh``:
    start over, e.g. when its fine-tune source was retrained)."""
    if (run_dir / "checkpoint.pt").is_file() and not afresh:
        try:
            train(cfg, run_dir, progress=False, resume=True)
            return
        except ValueError as err:
            if "cannot resume" not in str(err):
                raise
            print(f"    {err}; training it again", flush=True)
    train(cfg, run_dir, overwrite=True, progress=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", required=True, help="preset JSON (examples/configs/*.json)")
    p.add_argument("--runs", required=True, help="folder of the run directories (resumable)")
    p.add_argument("--out", required=True, help="output prefix: writes <out>.csv, <out>.md and <out>.png")
    p.add_argument("--data-root", default=None, help="dataset folder (default: $PACT_PYRO_DATA, else ./data)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated run names to train (default: all; the table "
        "still covers every finished run of the preset)",
    )
    p.add_argument(
        "--worker",
        default=None,
        help="K/N: train only every N-th run of the plan from the K-th (default: share the whole plan with "
        "any other process on the same --runs through claim files)",
    )
    p.add_argument(
        "--poll", type=float, default=30.0, help="seconds between looks for runs whose source is done"
    )
    p.add_argument("--dry-run", action="store_true", help="list the runs, their stage and state, and exit")
    p.add_argument(
        "--stash",
        action="store_true",
        help="copy the latest checkpoint of every unfinished run into <out>_carry/ (to commit: a fresh clone "
        "continues those runs where they stopped) and exit",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="rewrite <out>.md and <out>.png from the rows kept in <out>.csv and the finished runs under "
        "--runs (e.g. after copying another machine's CSV), train nothing, and exit",
    )
    args = p.parse_args(argv)
    k, n = 0, 1
    if args.worker is not None:
        try:
            k, n = (int(v) for v in args.worker.split("/"))
            if not 0 <= k < n:
                raise ValueError
        except ValueError:
            p.error(f"--worker must be K/N with 0 <= K < N, got {args.worker!r}")

    torch.set_num_threads(args.threads)
    preset = json.loads(Path(args.preset).read_text())
    try:
        runs = plan(preset)
        controls = read_controls(preset, Path(args.out))  # a malformed entry fails before anything trains
    except ValueError as err:
        p.error(f"--preset {args.preset!r}: {err}")
    full = runs
    names = [name for name, _ in runs]  # the table covers every run, whichever process trained it
    for name, fields in runs:
        check = {k2: v for k2, v in fields.items() if not k2.startswith("_")}
        check["data_root"] = args.data_root or check.get("data_root") or "DATA_ROOT"  # checked when training
        TrainConfig(**check).validate()
        missing = [d for d in fields.get("_after", []) if d not in names]
        if missing:
            p.error(
                f"--preset {args.preset!r}: run {name} waits for {missing[0]!r}, which is not in the plan"
            )
    if args.only:
        keep = set(args.only.split(","))
        unknown = sorted(keep - set(names))
        if unknown:
            p.error(f"--only names runs that are not in the preset: {unknown}")
        runs = [r for r in runs if r[0] in keep]
    runs = runs[k::n]
    runs_dir, out = Path(args.runs), Path(args.out)
    kept = read_kept(out.with_suffix(".csv"))
    done, stale = _finished(full, runs_dir, out, kept)
    carry = out.parent / f"{out.name}_carry"
    if args.stash:
        return stash(runs, runs_dir, carry, done)
    title = f"{preset.get('name', Path(args.preset).stem)}: {preset.get('title', '')}".strip(": ")

    def write_outputs() -> list[dict]:
        rows = collect(runs_dir, names, kept)
        if rows:
            write_csv(rows, out.with_suffix(".csv"))
            plot(out.with_suffix(".csv"), out.with_suffix(".png"), title, controls)
            md = summarize(rows) + "\n" + compare(rows) + control_bullets(controls, rows)
            out.with_suffix(".md").write_text(md)
        return rows

    if args.report:
        if not kept and not runs_dir.is_dir():
            csv_path = str(out.with_suffix(".csv"))
            p.error(f"--report: no rows in {csv_path!r} and no --runs folder {args.runs!r}")
        rows = write_outputs()
        print(f"{len(rows)} rows -> {out.with_suffix('.md')}, {out.with_suffix('.png')}", flush=True)
        return 0
    unstash(runs, runs_dir, carry, done)
    if args.dry_run:
        for name, fields in runs:
            cfg = {k2: v for k2, v in fields.items() if not k2.startswith("_")}
            stage = fields.get("_stage") or "main"
            state = _state(name, fields, runs_dir, out, done)
            print(f"{stage:9s} {name:36s} {state:24s} {json.dumps(cfg)}")
        return 0
    runs_dir.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    commit = code_commit()
    start = time.time()

    def export_sources() -> None:  # keep finished fine-tune sources where a fresh clone finds them
        for src in {f["_source"] for _, f in runs if f.get("_source")}:
            path = source_file(out, src)
            if src not in stale and not path.is_file() and (runs_dir / src / "sweep_eval.json").is_file():
                from pact_pyro.finetune import export_backbone

                digest = export_backbone(runs_dir / src, path)
                print(f"    source {src} -> {path} (sha256 {digest[:12]})", flush=True)

    while True:
        export_sources()
        states = {name: _state(name, f, runs_dir, out, done) for name, f in runs}
        ready = [(name, f) for name, f in runs if states[name] == "ready"]
        if not ready:
            waiting = [name for name, _ in runs if states[name].startswith("waits")]
            if not waiting:
                break
            time.sleep(args.poll)
            continue
        name, fields = ready[0]
        claim = Claim(runs_dir, name)
        if not claim.acquire():
            continue
        try:
            if name not in stale and (runs_dir / name / "sweep_eval.json").is_file():  # finished meanwhile
                done.add(name)
                continue
            cfg_fields = {k2: v for k2, v in fields.items() if not k2.startswith("_")}
            if fields.get("_source"):
                cfg_fields["init_from"] = str(source_file(out, fields["_source"]))
            cfg = TrainConfig(**{**cfg_fields, "data_root": args.data_root or fields.get("data_root")})
            when = f"{time.time() - start:.0f}s into the sweep"
            print(f"[{len(done) + 1}/{len(names)}] {name}: training ({when})", flush=True)
            t0 = time.time()
            _train_one(cfg, runs_dir / name, afresh=name in stale)
            stale.discard(name)
            seconds = time.time() - t0
            rows = evaluate_run(runs_dir / name, preset, args.data_root, fields.get("_variant", ""),
                                fields.get("_stage", ""))  # fmt: skip
            for r in rows:
                r["train_seconds"], r["commit"] = seconds, commit
            (runs_dir / name / "sweep_eval.json").write_text(json.dumps(rows, indent=1))
            done.add(name)
        finally:
            claim.release()
        for r in rows:
            print(
                f"    acc {r['accuracy']:.4f}  flops {r['flops_mean'] / 1e6:.2f}M"
                f" ± {r['flops_std_pct']:.1f}%  "
                f"units {r['units_mean']}  patterns {r['unit_patterns']}  train {seconds:.0f}s",
                flush=True,
            )
        write_outputs()
    export_sources()
    rows = write_outputs()
    print(f"{len(rows)} rows -> {out.with_suffix('.csv')}, {out.with_suffix('.png')}", flush=True)
    return 0 if not any(math.isnan(r["accuracy"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
