"""``pact-pyro report RUN_DIR``: diagnostic figures and a short summary of a trained PACT run.

Loads the run (:func:`pact_pyro.train.load_run`), draws ``z ~ q(z | x)`` on a fixed test subset
(:func:`pact_pyro.diagnostics.to_inference_data`) and writes into ``RUN_DIR/report/`` (or ``--out``):

* ``summary.md`` and ``index.html``: the run's settings, accuracy and FLOPs, how deterministic ``q`` is,
  whether computation adapts to the input (per class, correct vs wrong, entropy), calibration;
* PNGs: ``units_histogram``, ``halting_probabilities``, ``class_units`` (``az.plot_forest``), ``reliability``,
  ``units_vs_entropy``, ``extreme_examples`` and, when sweep CSVs are given or ``results/*.csv`` exist,
  ``tradeoff`` (accuracy vs FLOPs);
* ``inference_data.nc`` (open with ``arviz.from_netcdf``) and ``diagnostics.json``.

Spatial PACT runs (``method="spatial-pact"``, one halting decision per position) get a report of their
ponder-cost maps instead (:func:`pact_pyro.plots.ponder_map`; thresholded with
:func:`pact_pyro.threshold.threshold`): ``summary.md``, ``index.html``, ``diagnostics.json``, ``examples.csv``
(one row per test image) and the PNGs ``ponder_maps_least`` and ``ponder_maps_most`` (the images with the
fewest and most FLOPs, with their maps), ``class_ponder_maps`` (average map per class), ``map_statistics``
(per-image standard deviation of each block's units map over positions; rank correlation between the ponder
map and the full network's gradient saliency, :mod:`pact_pyro.saliency`) and ``tradeoff``. The ArviZ figures
are left out: :func:`pact_pyro.diagnostics.to_inference_data` records one ``N`` per example and block, and a
spatial model has one per position (its halting probabilities are maps, not numbers).
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


def _last_log(metrics: dict | None) -> list[tuple[str, str]]:
    """The report's "last training log" fact (step, loss, units), or nothing without metrics."""
    if not metrics:
        return []
    shown = (
        f"{k} {_fmt(v) if not isinstance(v, list) else [round(x, 2) for x in v]}"
        for k, v in metrics.items()
        if k in ("step", "loss", "units")
    )
    return [("last training log", ", ".join(shown))]


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
    if cfg.method not in ("pact", "spatial-pact"):
        raise ValueError(
            f"report needs a PACT run (method='pact' or 'spatial-pact'), got method={cfg.method!r} in "
            f"{str(run)!r}: its figures are those of the guide q(z | x), which {cfg.method} runs do not have "
            "(evaluate them with `pact-pyro evaluate`)"
        )
    data = load_dataset(cfg.dataset, False, data_root or cfg.data_root)
    ids = list(range(len(data)))
    if test_subset is not None and test_subset < len(data):
        import torch

        ids = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:test_subset].tolist()
    subset = data.subset(test_subset, 0)
    out = Path(out) if out is not None else run / "report"
    out.mkdir(parents=True, exist_ok=True)
    if cfg.method == "spatial-pact":
        _spatial_report(run, out, model, guide, cfg, data, subset, ids, num_samples, sweep, batch_size, seed)
        return out

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
    sweep_note = _add_tradeoff(figures, sweep)
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
        (
            "error AUROC: units N̂ / expected units E_q[N] / predictive entropy",
            f"{adapt['error_auroc_units']:.3f} / {adapt['error_auroc_expected_units']:.3f} / "
            f"{adapt['error_auroc_entropy']:.3f} (0.5: no better than chance)",
        ),
        ("log predictive density", f"{pred['lpd']:.4f} nats/example"),
        ("expected calibration error", f"{pred['ece']:.4f}"),
    ]
    facts += _last_log(metrics)
    _write_markdown(out, run, settings, verdict, facts, table, summary, figures, sweep_note)
    _write_html(out, run, settings, verdict, facts, table, summary, figures, sweep_note)
    return out


def _add_tradeoff(figures: dict, sweep) -> str:
    """Add the accuracy-vs-FLOPs figure of ``sweep`` (default ``results/*.csv``); a note if it fails."""
    from . import plots as P

    if sweep is None:
        sweep = sorted(Path("results").glob("*.csv")) if Path("results").is_dir() else []
    if sweep:
        try:
            figures["tradeoff"] = (P.plot_tradeoff(P.read_sweep(sweep)), "Accuracy vs FLOPs (sweep)")
        except (ValueError, KeyError, OSError) as err:  # a CSV of another shape: say so, keep the report
            return f"sweep CSVs not plotted: {err}"
    return ""


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
    _write_page(out, "PACT report", body, figures)


def _write_page(out, title: str, body: list[str], figures: dict) -> None:
    """``out/index.html``: the HTML fragments ``body``, then every figure, under ``title``."""
    esc = html.escape
    for name, (_, t) in figures.items():
        body = [*body, f"<h2>{esc(t)}</h2>", f'<img src="{name}.png" alt="{esc(t)}" style="max-width:100%">']
    style = "body{font-family:sans-serif;max-width:980px;margin:auto}td,th{padding:2px 8px;text-align:left}"
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{style}</style>"
    )
    (out / "index.html").write_text(page + "</head><body>" + "\n".join(body) + "</body></html>")


_SPATIAL_NO_ARVIZ = (
    "The ArviZ figures of per-example PACT reports (units histogram, halting probabilities, az.plot_forest, "
    "calibration under z ~ q, inference_data.nc) are not made for spatial PACT: "
    "`pact_pyro.diagnostics.to_inference_data` records one number of units per example and block, while a "
    "spatial model halts per position (its halting probabilities are maps [B, H, W], not numbers)."
)


def _settings(cfg, model) -> str:
    configs = [p.config() for p in getattr(model, "priors", [])]
    prior = json.dumps(configs[0] if configs and all(c == configs[0] for c in configs) else configs)
    kind = "spatial PACT " if cfg.method == "spatial-pact" else ""
    return (
        f"{cfg.dataset}, {kind}ResNet-{cfg.depth} (units per block "
        f"{list(model.units_per_block)}), prior {prior}, guide {cfg.guide} (λ = {cfg.temperature:.3g}), "
        f"{cfg.epochs:g} epochs, batch {cfg.batch_size}, lr {cfg.lr:g}"
    )


def _spatial_report(run, out, model, guide, cfg, data, subset, ids, num_samples, sweep, batch_size, seed):
    """The report of a spatial PACT run (module docstring): ponder-cost maps, their spread over positions and
    their rank correlation with the gradient saliency of the full network."""
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    import torch

    from . import plots as P
    from .data import batches
    from .flops import FlopTable
    from .saliency import gradient_saliency, map_saliency_correlation, units_map_std
    from .threshold import threshold

    device = next(model.backbone.parameters()).device
    names = CLASS_NAMES.get(data.name)
    L = list(model.units_per_block)
    table = FlopTable.for_model(model, tuple(subset.images.shape[1:]), guide)
    gen = torch.Generator(device=device).manual_seed(seed)
    acc: dict[str, list] = {
        k: [] for k in ("maps", "pred", "flops", "sal", "corr", "std", "s_acc", "s_flops")
    }
    acc["s_diff"] = []
    start = time.time()
    for x, y in batches(subset, batch_size, device=device):
        r = threshold(model, guide, x, flop_table=table)
        total = P.ponder_map(r.maps, x.shape[-2:])
        sal = gradient_saliency(model.backbone, x)
        acc["maps"].append([m.cpu() for m in r.maps])
        acc["pred"].append(r.logits.argmax(-1).cpu())
        acc["flops"].append(r.flops.cpu())
        acc["sal"].append(sal.cpu())
        acc["corr"].append(map_saliency_correlation(total, sal).cpu())
        acc["std"].append(units_map_std(r.maps).cpu())
        for _ in range(num_samples):  # z ~ q: how far sampled halting is from the thresholded rule
            d = threshold(model, guide, x, mode="sample", generator=gen, flop_table=table)
            acc["s_acc"].append((d.logits.argmax(-1) == y).double().sum().item())
            acc["s_flops"].append(d.flops.double().sum().item())
            acc["s_diff"].append(
                [(a != b).double().sum().item() for a, b in zip(d.maps, r.maps, strict=True)]
            )
    seconds = time.time() - start
    maps = [torch.cat(ms) for ms in zip(*acc["maps"], strict=True)]
    pred, flops, corr, std = (torch.cat(acc[k]) for k in ("pred", "flops", "corr", "std"))
    total = P.ponder_map(maps, subset.images.shape[-2:])
    labels = subset.labels
    n = len(labels)
    correct = (pred == labels).numpy()
    ratio = flops.double().numpy() / table.full
    mean_ponder = total.flatten(1).mean(1).double().numpy()
    std_np, corr_np = std.numpy(), corr.numpy()
    uniform = (std_np == 0).all(1)
    finite = np.isfinite(corr_np)

    # the images with the fewest and most FLOPs (ties: mean ponder cost, then position)
    order = np.lexsort((np.arange(n), mean_ponder, flops.numpy()))
    k = min(8, n)
    figures = {}
    for key, idx, title in (
        ("ponder_maps_least", order[:k], "Fewest FLOPs: images and ponder-cost maps"),
        ("ponder_maps_most", order[::-1][:k], "Most FLOPs: images and ponder-cost maps"),
    ):
        idx = torch.as_tensor(idx.copy())
        titles = [
            f"y={P._name(int(labels[i]), names)}\npred {P._name(int(pred[i]), names)}\n{ratio[i]:.2f} FLOPs"
            for i in idx.tolist()
        ]
        fig = P.plot_ponder_maps(subset.images[idx], total[idx], titles, units_per_block=L, suptitle=title)
        figures[key] = (fig, title)
    figures["class_ponder_maps"] = (
        P.plot_class_ponder_maps(total, labels, names),
        "Average ponder-cost map per class",
    )
    figures["map_statistics"] = (
        P.plot_map_statistics(std, corr),
        "Spread of the units maps over positions; ponder map vs gradient saliency",
    )
    sweep_note = _add_tradeoff(figures, sweep)
    for name, (fig, _) in figures.items():
        fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)

    s_total = max(num_samples * n, 1)
    sampled = {
        "accuracy_sampled": sum(acc["s_acc"]) / s_total if num_samples else float("nan"),
        "flops_ratio_sampled": sum(acc["s_flops"]) / s_total / table.full if num_samples else float("nan"),
        "positions_differ_per_block": [
            sum(d[b] for d in acc["s_diff"]) / (s_total * m[0].numel()) if num_samples else float("nan")
            for b, m in enumerate(maps)
        ],
    }
    diag = {
        "examples": n,
        "accuracy_thresholded": float(correct.mean()),
        "flops_ratio_thresholded": float(ratio.mean()),
        "units_mean_per_block": [float(m.double().mean()) for m in maps],
        "ponder_map_mean": float(mean_ponder.mean()),
        "ponder_map_range": [float(total.min()), float(total.max())],
        "ponder_map_possible_range": [len(L), sum(L)],
        "map_std_mean_per_block": std_np.mean(0).tolist(),
        "map_std_max_per_block": std_np.max(0).tolist(),
        "uniform_per_block": [int(v) for v in (std_np == 0).sum(0)],
        "uniform_all_blocks": int(uniform.sum()),
        "spearman_map_saliency_mean": float(corr_np[finite].mean()) if finite.any() else float("nan"),
        "spearman_map_saliency_median": float(np.median(corr_np[finite])) if finite.any() else float("nan"),
        "spearman_map_saliency_positive": float((corr_np[finite] > 0).mean())
        if finite.any()
        else float("nan"),
        "spearman_map_saliency_count": int(finite.sum()),
        "sampled": sampled,
        "seconds": seconds,
    }
    (out / "diagnostics.json").write_text(json.dumps(diag, indent=2))
    per_image = pd.DataFrame(
        {
            "example": ids,
            "label": labels.numpy(),
            "pred": pred.numpy(),
            "flops": flops.numpy(),
            "flops_ratio": ratio,
            "ponder_mean": mean_ponder,
            **{f"units_block_{b + 1}": maps[b].flatten(1).double().mean(1).numpy() for b in range(len(L))},
            **{f"map_std_block_{b + 1}": std_np[:, b] for b in range(len(L))},
            "spearman_map_saliency": corr_np,
        }
    )
    per_image.to_csv(out / "examples.csv", index=False)

    rows = {}
    lab = labels.numpy()
    for c in [*np.unique(lab).tolist(), "all"]:
        m = np.ones(n, dtype=bool) if c == "all" else lab == c
        row = {f"N block {b + 1}": per_image[f"units_block_{b + 1}"][m].mean() for b in range(len(L))}
        cm = corr_np[m & finite]
        row.update(
            ponder=mean_ponder[m].mean(),
            flops_ratio=ratio[m].mean(),
            accuracy=correct[m].mean(),
            uniform=int(uniform[m].sum()),
            spearman=cm.mean() if cm.size else float("nan"),
            count=int(m.sum()),
        )
        rows[P._name(c, names) if c != "all" else c] = row
    table_df = pd.DataFrame.from_dict(rows, orient="index")

    spread = n - int(uniform.sum())
    if spread == 0 and len(np.unique(mean_ponder)) == 1:
        verdict = (
            "**Halting is input- and position-independent**: every evaluated image ran the same units "
            f"at every position (ponder cost {mean_ponder[0]:g} everywhere). That is depth pruning, not "
            "adaptive computation."
        )
    elif spread == 0:
        verdict = (
            "**Halting is not spatial**: every image's units map is uniform in every block (one depth per "
            f"image and block); the total still varies between images ({mean_ponder.min():g} to "
            f"{mean_ponder.max():g})."
        )
    else:
        verdict = (
            f"Halting is spatially adaptive: {spread} of {n} images have a non-uniform units map in some "
            "block; Spearman(ponder map, gradient saliency) = "
            f"{diag['spearman_map_saliency_mean']:.2f} on average "
            f"({diag['spearman_map_saliency_positive']:.0%} of them positive)."
        )
    metrics = _last_metrics(run)
    facts = [
        (
            "test examples",
            f"{n} ({'all' if n == len(data) else 'fixed random subset'}), {num_samples} draws z ~ q each "
            f"({seconds:.0f} s)",
        ),
        ("accuracy (thresholded h ≥ 0.5)", f"{diag['accuracy_thresholded']:.2%}"),
        (
            "FLOPs / full network",
            f"{ratio.mean():.3f} thresholded (per image {ratio.min():.3f} to {ratio.max():.3f}), "
            f"{sampled['flops_ratio_sampled']:.3f} sampled",
        ),
        ("accuracy (sampled z ~ q, mean over draws)", f"{sampled['accuracy_sampled']:.2%}"),
        (
            "positions whose sampled N ≠ thresholded N",
            ", ".join(f"{v:.2%}" for v in sampled["positions_differ_per_block"]) + " per block",
        ),
        (
            "mean units per block (mean over positions)",
            ", ".join(f"{v:.2f}" for v in diag["units_mean_per_block"]),
        ),
        (
            "ponder-cost map Σ_b N_b(i, j)",
            f"mean {diag['ponder_map_mean']:.2f}, values {total.min():g} to {total.max():g} "
            f"(possible {len(L)} to {sum(L)})",
        ),
        (
            "per-image std of the units map over positions",
            "mean "
            + ", ".join(f"{v:.3f}" for v in diag["map_std_mean_per_block"])
            + " per block (max "
            + ", ".join(f"{v:.3f}" for v in diag["map_std_max_per_block"])
            + ")",
        ),
        (
            "images halting at the same unit everywhere",
            f"{int(uniform.sum())} of {n} in every block; per block "
            + ", ".join(str(v) for v in diag["uniform_per_block"]),
        ),
        (
            "Spearman(ponder map, gradient saliency)",
            f"mean {diag['spearman_map_saliency_mean']:.3f}, "
            f"median {diag['spearman_map_saliency_median']:.3f} over the {int(finite.sum())} images with a "
            "non-uniform ponder map",
        ),
    ]
    facts += _last_log(metrics)
    notes = [
        "Saliency: the L2 norm over channels of the gradient of the predicted class's logit with respect "
        "to the input, computed with the full network (every unit, eval mode); the correlation is "
        "Spearman's, per image over positions, undefined (left out) for uniform ponder maps.",
        _SPATIAL_NO_ARVIZ,
    ]
    if sweep_note:
        notes.append(sweep_note)
    _write_spatial_pages(out, run, _settings(cfg, model), verdict, facts, table_df, figures, notes)


def _write_spatial_pages(out, run, settings, verdict, facts, table, figures, notes) -> None:
    title = f"Spatial PACT report: `{run}`"
    md = [f"# {title}", "", settings, "", verdict, "", "| | |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in facts]
    md += ["", "## Per class (thresholded)", "", _md_table(table), ""]
    for note in notes:
        md += [note, ""]
    for name, (_, t) in figures.items():
        md += [f"## {t}", "", f"![{t}]({name}.png)", ""]
    (out / "summary.md").write_text("\n".join(md))

    esc = html.escape
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts)
    body = [
        f"<h1>Spatial PACT report: <code>{esc(str(run))}</code></h1>",
        f"<p>{esc(settings)}</p>",
        f"<p>{esc(verdict.replace('**', ''))}</p>",
        f"<table>{rows}</table>",
        "<h2>Per class (thresholded)</h2>",
        table.to_html(float_format=lambda v: f"{v:.3g}"),
        *(f"<p>{esc(note.replace('`', ''))}</p>" for note in notes),
    ]
    _write_page(out, "Spatial PACT report", body, figures)
