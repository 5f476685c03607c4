"""``pact-pyro report RUN_DIR``: diagnostic figures and a short summary of a trained PACT run.

Loads the run (:func:`pact_pyro.train.load_run`), draws ``z ~ q(z | x)`` on a fixed test subset
(:func:`pact_pyro.diagnostics.to_inference_data`) and writes into ``RUN_DIR/report/`` (or ``--out``):

* ``summary.md`` and ``index.html``: the run's settings, accuracy and FLOPs, how deterministic ``q`` is,
  whether computation adapts to the input (per class, correct vs wrong, entropy), calibration;
* PNGs: ``units_histogram``, ``halting_probabilities``, ``class_units`` (``az.plot_forest``), ``reliability``,
  ``units_vs_entropy``, ``extreme_examples`` and, when sweep CSVs are given or ``results/*.csv`` exist,
  ``tradeoff`` (accuracy vs FLOPs);
* ``inference_data.nc`` (open with ``arviz.from_netcdf``) and ``diagnostics.json``.
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

from .data import CLASS_NAMES

__all__ = ["write_report"]


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3g}" if abs(v) < 1000 else f"{v:.4g}"
    return str(v)


def _md_table(df) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for idx, row in df.iterrows():
        lines.append(f"| {idx} | " + " | ".join(_fmt(v) for v in row.tolist()) + " |")
    return "\n".join(lines)


def _last_metrics(run: Path) -> dict:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return {}
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else {}


def write_report(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    test_subset: int | None = 2000,
    num_samples: int = 8,
    sweep: Sequence[str | os.PathLike] | None = None,
    data_root: str | os.PathLike | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: str = "cpu",
) -> Path:
    """Write the report of ``run_dir`` (module docstring); returns the report folder.

    :param test_subset: evaluate a fixed random subset of the test set of this size (``None``: all of it).
    :param num_samples: draws ``z ~ q`` per example (one early-exit pass each).
    :param sweep: sweep CSVs for the accuracy-vs-FLOPs plot; default ``results/*.csv`` when present.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import diagnostics as D
    from . import plots as P
    from .data import load_dataset
    from .train import load_run

    run = Path(run_dir)
    model, guide, cfg = load_run(run, device)
    if cfg.method != "pact":
        raise ValueError(
            f"report needs a PACT run (method='pact'), got method={cfg.method!r} in {str(run)!r}"
        )
    data = load_dataset(cfg.dataset, False, data_root or cfg.data_root)
    ids = list(range(len(data)))
    if test_subset is not None and test_subset < len(data):
        import torch

        ids = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:test_subset].tolist()
    subset = data.subset(test_subset, 0)
    out = Path(out) if out is not None else run / "report"
    out.mkdir(parents=True, exist_ok=True)

    start = time.time()
    idata = D.to_inference_data(
        model,
        guide,
        subset,
        num_samples=num_samples,
        batch_size=batch_size,
        seed=seed,
        example_ids=ids,
        attrs={"run_dir": str(run.resolve()), "dataset": cfg.dataset},
    )
    seconds = time.time() - start
    idata.to_netcdf(str(out / "inference_data.nc"))

    figures = {
        "units_histogram": (P.plot_units_histogram(idata), "Units executed per block"),
        "halting_probabilities": (P.plot_halting_probabilities(idata), "Halting probabilities h"),
        "class_units": (P.plot_class_units(idata), "Units per class (az.plot_forest)"),
        "units_vs_entropy": (P.plot_units_vs_entropy(idata), "Computation vs uncertainty"),
        "reliability": (P.plot_reliability(idata), "Calibration (reliability diagram)"),
        "extreme_examples": (
            P.plot_extreme_examples(idata, data.images, class_names=CLASS_NAMES.get(data.name)),
            "Fewest and most units",
        ),
    }
    if sweep is None:
        sweep = sorted(Path("results").glob("*.csv")) if Path("results").is_dir() else []
    sweep_note = ""
    if sweep:
        try:
            figures["tradeoff"] = (P.plot_tradeoff(P.read_sweep(sweep)), "Accuracy vs FLOPs (sweep)")
        except (ValueError, KeyError, OSError) as err:  # a CSV of another shape: say so, keep the report
            sweep_note = f"sweep CSVs not plotted: {err}"
    for name, (fig, _) in figures.items():
        fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)

    det = D.halting_determinism(idata)
    adapt = D.units_vs_uncertainty(idata)
    pred = D.predictive_checks(idata)
    table = D.units_table(idata)
    summary = D.summarize_class_units(idata).loc[lambda df: df.index.str.startswith("total")]
    thr = idata.constant_data["thresholded_units"].values
    total = thr.sum(1)
    mode_share = float((total == _mode(total)).mean())
    metrics = _last_metrics(run)
    (out / "diagnostics.json").write_text(
        json.dumps(
            {"determinism": det, "adaptivity": adapt, "predictive": pred, "seconds": seconds}, indent=2
        )
    )

    if thr.std(0).max() == 0:
        verdict = (
            "**Halting is input-independent**: every evaluated example ran the same units in every block "
            f"({thr[0].tolist()}). That is depth pruning, not adaptive computation."
        )
    else:
        verdict = (
            f"Halting is input-dependent: {1 - mode_share:.1%} of examples ran a different total number of "
            f"units than the most common total ({_mode(total)}); Spearman(units, predictive entropy) = "
            f"{adapt['spearman_units_entropy']:.2f}; wrong predictions ran {adapt['units_wrong']:.2f} units "
            f"on average vs {adapt['units_correct']:.2f} for correct ones."
        )
    L = json.loads(idata.attrs["units_per_block"])
    settings = (
        f"{cfg.dataset}, ResNet-{cfg.depth} (units per block {L}), prior {idata.attrs['prior']}, guide "
        f"{cfg.guide} (λ = {cfg.temperature:.3g}), {cfg.epochs:g} epochs, batch {cfg.batch_size}, "
        f"lr {cfg.lr:g}"
    )
    facts = [
        (
            "test examples",
            f"{len(ids)} ({'all' if len(ids) == len(data) else 'fixed random subset'}), "
            f"{num_samples} draws z ~ q each ({seconds:.0f} s)",
        ),
        ("accuracy (thresholded h ≥ 0.5)", f"{pred['accuracy_thresholded']:.2%}"),
        ("accuracy (posterior predictive, mean over draws)", f"{pred['accuracy_predictive']:.2%}"),
        (
            "FLOPs / full network",
            f"{pred['flops_ratio_thresholded']:.3f} thresholded, {pred['flops_ratio_sampled']:.3f} sampled",
        ),
        ("mean units per block (thresholded)", ", ".join(f"{v:.2f}" for v in thr.mean(0))),
        (
            "sampled N ≠ thresholded N (any block)",
            f"{det['sampled_differs']:.2%} of draws; exact per block "
            + ", ".join(f"{v:.2%}" for v in det["exact_differs_per_block"]),
        ),
        ("halting probabilities near 0 or 1 (< 0.05 or > 0.95)", f"{det['saturated']:.1%}"),
        ("log predictive density", f"{pred['lpd']:.4f} nats/example"),
        ("expected calibration error", f"{pred['ece']:.4f}"),
    ]
    if metrics:
        facts.append(
            (
                "last training log",
                ", ".join(
                    f"{k} {_fmt(v) if not isinstance(v, list) else [round(x, 2) for x in v]}"
                    for k, v in metrics.items()
                    if k in ("step", "loss", "units")
                ),
            )
        )
    _write_markdown(out, run, settings, verdict, facts, table, summary, figures, sweep_note)
    _write_html(out, run, settings, verdict, facts, table, summary, figures, sweep_note)
    return out


def _mode(a) -> int:
    import numpy as np

    vals, counts = np.unique(a, return_counts=True)
    return int(vals[counts.argmax()])


def _write_markdown(out, run, settings, verdict, facts, table, summary, figures, note) -> None:
    md = [f"# PACT report: `{run}`", "", settings, "", verdict, "", "| | |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in facts]
    md += ["", "## Units per class (thresholded)", "", _md_table(table), ""]
    md += ["## Total units per class under z ~ q (az.summary, kind='stats')", "", _md_table(summary), ""]
    md += [
        "R-hat, ESS and LOO are not reported: the draws are exact and independent samples of a per-example "
        "amortized posterior with point-estimated weights (see `pact_pyro.diagnostics`).",
        "",
    ]
    if note:
        md += [note, ""]
    for name, (_, title) in figures.items():
        md += [f"## {title}", "", f"![{title}]({name}.png)", ""]
    (out / "summary.md").write_text("\n".join(md))


def _write_html(out, run, settings, verdict, facts, table, summary, figures, note) -> None:
    esc = html.escape
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts)
    body = [
        f"<h1>PACT report: <code>{esc(str(run))}</code></h1>",
        f"<p>{esc(settings)}</p>",
        f"<p>{esc(verdict.replace('**', ''))}</p>",
        f"<table>{rows}</table>",
        "<h2>Units per class (thresholded)</h2>",
        table.to_html(float_format=lambda v: f"{v:.3g}"),
        "<h2>Total units per class under z ~ q (az.summary)</h2>",
        summary.to_html(),
    ]
    if note:
        body.append(f"<p>{esc(note)}</p>")
    for name, (_, title) in figures.items():
        body += [
            f"<h2>{esc(title)}</h2>",
            f'<img src="{name}.png" alt="{esc(title)}" style="max-width:100%">',
        ]
    style = "body{font-family:sans-serif;max-width:980px;margin:auto}td,th{padding:2px 8px;text-align:left}"
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>PACT report</title><style>{style}</style>"
    )
    (out / "index.html").write_text(page + "</head><body>" + "\n".join(body) + "</body></html>")
