"""Figures of the halting posterior, made from the :class:`arviz.InferenceData` of
:func:`pact_pyro.diagnostics.to_inference_data`, and of spatial halting (ponder-cost maps: :func:`ponder_map`,
:func:`plot_ponder_maps`, :func:`plot_class_ponder_maps`, :func:`plot_map_statistics`). Every ``plot_*``
function returns a ``matplotlib.figure.Figure``.

matplotlib is imported lazily. In a script, select a non-interactive backend first (``pact-pyro report`` uses
``Agg``); in a notebook the figures display inline.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .diagnostics import class_units, expected_units, import_arviz, predictive_entropy, reliability

if TYPE_CHECKING:  # pragma: no cover
    import pandas
    import torch
    from matplotlib.figure import Figure

__all__ = [
    "plot_units_histogram",
    "plot_halting_probabilities",
    "plot_class_units",
    "plot_reliability",
    "plot_units_vs_entropy",
    "plot_extreme_examples",
    "extreme_order",
    "read_sweep",
    "plot_tradeoff",
    "ponder_map",
    "plot_ponder_maps",
    "plot_class_ponder_maps",
    "plot_map_statistics",
]

_THR = "#1f77b4"  # thresholded
_SMP = "#ff7f0e"  # sampled


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _blocks(idata) -> list[int]:
    import json

    return json.loads(idata.attrs["units_per_block"])


def plot_units_histogram(idata) -> Figure:
    """One panel per block: the fraction of examples that executed ``N = 1..L`` units, thresholded (bars)
    and sampled from ``q`` (outlined bars)."""
    plt = _plt()
    L = _blocks(idata)
    thr = idata.constant_data["thresholded_units"].values
    smp = idata.posterior["units"].values.reshape(-1, len(L))
    fig, axes = plt.subplots(1, len(L), figsize=(3.2 * len(L), 3.0), sharey=True, squeeze=False)
    for b, ax in enumerate(axes[0]):
        n = np.arange(1, L[b] + 1)
        ft = np.array([(thr[:, b] == k).mean() for k in n])
        fs = np.array([(smp[:, b] == k).mean() for k in n])
        ax.bar(n - 0.18, ft, width=0.36, color=_THR, label="thresholded (h ≥ 0.5)")
        ax.bar(n + 0.18, fs, width=0.36, facecolor="none", edgecolor=_SMP, hatch="//", label="sampled z ~ q")
        ax.set_xticks(n)
        ax.set_xlabel("units executed N")
        ax.set_title(f"block {b + 1} (L = {L[b]}): mean N̂ = {thr[:, b].mean():.2f}", fontsize=10)
        ax.set_ylim(0, 1.05)
    axes[0, 0].set_ylabel("fraction of examples")
    axes[0, 0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_halting_probabilities(idata, bins: int = 20) -> Figure:
    """One panel per block: histogram (log count) of the halting probabilities ``h`` the thresholded rule
    evaluated. With no entropy term in the objective they should pile up near 0 and 1."""
    from .diagnostics import _reached_heads

    plt = _plt()
    L = _blocks(idata)
    h = idata.constant_data["halting_prob"].values
    mask = _reached_heads(idata)
    fig, axes = plt.subplots(1, len(L), figsize=(3.2 * len(L), 3.0), sharey=True, squeeze=False)
    edges = np.linspace(0, 1, bins + 1)
    for b, ax in enumerate(axes[0]):
        hb = h[:, b][mask[:, b]]
        ax.hist(hb, bins=edges, color=_THR, log=True)
        ax.axvline(float(idata.attrs["threshold"]), color="k", ls="--", lw=1)
        undecided = ((hb > 0.2) & (hb < 0.8)).mean() if hb.size else float("nan")
        ax.set_title(f"block {b + 1}: {hb.size} heads, {undecided:.1%} in (0.2, 0.8)", fontsize=10)
        ax.set_xlabel("halting probability h")
    axes[0, 0].set_ylabel("count (log scale)")
    fig.tight_layout()
    return fig


def plot_class_units(idata, hdi_prob: float = 0.9) -> Figure:
    """Forest plot (``az.plot_forest``) of the per-class mean units under ``z ~ q``, one column per block
    plus the total; the intervals are HDIs across draws."""
    az = import_arviz()
    plt = _plt()
    cu = class_units(idata)
    names = list(cu.posterior.data_vars)
    fig, axes = plt.subplots(
        1, len(names), figsize=(2.6 * len(names), 0.35 * cu.posterior.sizes["class"] + 1.6)
    )
    for ax, name in zip(np.atleast_1d(axes), names, strict=True):
        az.plot_forest(cu, var_names=[name], combined=True, hdi_prob=hdi_prob, ax=ax, textsize=9, colors=_THR)
        ax.set_title(name.replace("_", " "), fontsize=10)
        if ax is np.atleast_1d(axes)[0]:  # "block_1[3]" / "[3]" → "class 3"
            ax.set_yticklabels(
                ["class " + t.get_text().split("[")[-1].rstrip("]") for t in ax.get_yticklabels()]
            )
        else:
            ax.set_yticklabels([])
    fig.suptitle(f"mean units per class under z ~ q ({hdi_prob:.0%} HDI across draws)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_reliability(idata, bins: int = 10) -> Figure:
    """Reliability diagram of the posterior predictive: accuracy against confidence per bin, with the
    diagonal of perfect calibration and the bin counts underneath."""
    plt = _plt()
    r = reliability(idata, bins)
    centers = (r["edges"][:-1] + r["edges"][1:]) / 2
    fig, (ax, axc) = plt.subplots(
        2, 1, figsize=(4.2, 4.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True
    )
    ok = r["count"] > 0
    ax.bar(
        centers[ok], r["accuracy"][ok], width=1 / bins, edgecolor="k", color=_THR, alpha=0.8, label="accuracy"
    )
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.plot(r["confidence"][ok], r["accuracy"][ok], "o", color=_SMP, ms=4, label="(confidence, accuracy)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"posterior predictive calibration, ECE = {r['ece']:.3f}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    axc.bar(centers, r["count"], width=1 / bins, color="0.6", log=True)
    axc.set_xlabel("confidence max_k p(y = k | x)")
    axc.set_ylabel("count")
    axc.set_xlim(0, 1)
    return fig


def plot_units_vs_entropy(idata, seed: int = 0) -> Figure:
    """Total thresholded units ``Σ_b N̂_b`` (jittered) against the predictive entropy, correct predictions in
    blue and errors as red crosses. Adaptive computation shows as entropy (and errors) rising with units."""
    plt = _plt()
    cd = idata.constant_data
    total = cd["thresholded_units"].values.sum(1)
    correct = cd["thresholded_pred"].values == cd["label"].values
    ent = predictive_entropy(idata)
    jitter = np.random.default_rng(seed).uniform(-0.25, 0.25, total.shape)
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    ax.scatter(total[correct] + jitter[correct], ent[correct], s=6, alpha=0.35, color=_THR, label="correct")
    ax.scatter(
        total[~correct] + jitter[~correct], ent[~correct], s=22, marker="x", color="#d62728", label="wrong"
    )
    for t in np.unique(total):
        ax.plot([t - 0.3, t + 0.3], [ent[total == t].mean()] * 2, color="k", lw=2)
    ax.set_xticks(np.unique(total))
    ax.set_xlabel("total units executed Σ_b N̂_b (thresholded)")
    ax.set_ylabel("predictive entropy (nats)")
    ax.set_title("computation vs uncertainty (black bar: mean entropy)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def extreme_order(idata) -> np.ndarray:
    """Examples from fewest to most units: by the thresholded total ``Σ_b N̂_b``, ties broken by the guide's
    expected total ``Σ_b E_q[N_b | x]`` (:func:`~pact_pyro.diagnostics.expected_units`), then by position.

    Without the tie-break, a model that runs the same units for every image (PACT at τ ≥ 0.1 on CIFAR-10)
    would show the first and last images of the test set as its "fewest" and "most". Returns ``[example]``
    indices into ``idata``'s ``example`` dimension.
    """
    return _order_by_units(*_unit_totals(idata))


def _unit_totals(idata) -> tuple[np.ndarray, np.ndarray]:
    """Per example: the thresholded total ``Σ_b N̂_b`` and the guide's expected total ``Σ_b E_q[N_b | x]``."""
    return idata.constant_data["thresholded_units"].values.sum(1), expected_units(idata).sum(1)


def _order_by_units(total: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return np.lexsort((np.arange(len(total)), expected, total))


def plot_extreme_examples(idata, images, k: int = 8, class_names: Sequence[str] | None = None) -> Figure:
    """The ``k`` test images that took the fewest and the ``k`` that took the most thresholded units, ties
    broken by the guide's expected units ``E_q[N | x]`` (:func:`extreme_order`); each title gives both.

    :param images: uint8 or float ``[n, C, H, W]`` indexed by the ``example`` coordinate of ``idata``
        (e.g. ``TensorData.images`` of the evaluated set).
    """
    plt = _plt()
    cd = idata.constant_data
    ids = idata.constant_data["example"].values
    total, expected = _unit_totals(idata)
    order = _order_by_units(total, expected)
    k = min(k, len(order))
    rows = [("fewest", order[:k]), ("most", order[::-1][:k])]
    fig, axes = plt.subplots(2, k, figsize=(1.35 * k, 4.5), squeeze=False)
    for r, (title, idx) in enumerate(rows):
        for j, i in enumerate(idx):
            ax = axes[r, j]
            img = np.asarray(images[int(ids[i])], dtype=np.float64)
            img = (img - img.min()) / max(img.max() - img.min(), 1e-12)
            ax.imshow(
                img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0),
                cmap="gray" if img.shape[0] == 1 else None,
            )
            lab, pred = int(cd["label"].values[i]), int(cd["thresholded_pred"].values[i])
            color = "k" if lab == pred else "#d62728"
            label = f"y={_name(lab, class_names)}\npred {_name(pred, class_names)}"
            ax.set_title(
                f"N={total[i]} E={expected[i]:.3f}\n{label}",
                fontsize=8,
                color=color,
            )
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(f"{title} units", fontsize=9)
    fig.suptitle(
        "test images with the fewest (top) and most (bottom) units N (ties: expected units E = E_q[N | x]); "
        "red: misclassified",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def _name(c: int, class_names: Sequence[str] | None) -> str:
    return class_names[c] if class_names else str(c)


def read_sweep(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> pandas.DataFrame:
    """Concatenate sweep CSVs (e.g. ``results/*.csv`` of ``examples/tradeoff_sweep.py``), adding a ``source``
    column. Needs an ``accuracy`` column and a FLOPs column (``flops_mean``, ``flops`` or ``flops_ratio``)."""
    import pandas as pd

    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    frames = []
    for p in paths:
        df = pd.read_csv(p)
        df["source"] = Path(p).stem
        frames.append(df)
    if not frames:
        raise ValueError("paths must name at least one CSV file, got none")
    df = pd.concat(frames, ignore_index=True)
    if "accuracy" not in df.columns or not any(
        c in df.columns for c in ("flops_ratio", "flops_mean", "flops")
    ):
        raise ValueError(f"sweep CSV needs 'accuracy' and a FLOPs column, got columns {list(df.columns)}")
    return df


def plot_tradeoff(
    sweep: pandas.DataFrame,
    threshold_value: float = 0.5,
    title: str | None = None,
    controls: Sequence[Mapping[str, Any]] = (),
    y_floor: float | None = None,
) -> Figure:
    """Test accuracy against mean FLOPs per example: one line per ``method`` (or ``source``), error bars
    (standard deviation) where seeds repeat.

    ``controls``: reference networks trained outside the sweep, each a mapping with ``label``, ``accuracy``
    (a fraction) and ``flops_mean`` (in the sweep's FLOP unit), drawn as black stars with their label in the
    legend (e.g. the static network a PACT run settled on, trained without heads).

    Points are annotated with ``τ`` (PACT/ACT) or the depth (plain networks). Each PACT model appears on its
    line once, at ``threshold_value``; its other test thresholds (a ``threshold`` column) are faded crosses.
    Rows with a ``variant`` (a training setting changed, see ``examples/tradeoff_sweep.py``) are never part
    of their method's line: a variant run at one τ is a labelled point (mean and standard deviation over its
    seeds), one run at several τ a dashed line of its own, annotated with τ.

    ``y_floor``: the lowest accuracy shown, in percent (default: all points). A point below it is drawn on
    the bottom edge as a downward triangle with its accuracy written beside it, so that one collapsed
    operating point does not squeeze the rest of the figure into a thin band.
    """
    import pandas as pd

    plt = _plt()
    xcol = next(c for c in ("flops_mean", "flops", "flops_ratio") if c in sweep.columns)
    scale = 1e6 if xcol != "flops_ratio" else 1.0
    df = sweep.copy()

    def text(col: str) -> pd.Series:  # an all-empty CSV column reads as float NaN
        return df[col].astype(object).where(df[col].notna(), "").astype(str) if col in df.columns else ""

    variant = text("variant") if "variant" in df.columns else pd.Series("", df.index)
    thr = df["threshold"] if "threshold" in df.columns else pd.Series(float("nan"), df.index)
    at_thr = thr.isna() | (thr == threshold_value)
    group = next((c for c in ("method", "source") if c in df.columns), None)
    if group == "method" and "stage" in df.columns:  # fine-tuned and from-scratch runs are separate lines
        suffix = text("stage").map({"finetune": " (fine-tuned)", "scratch": " (scratch)"}).fillna("")
        df["_line"] = df["method"].astype(str) + suffix
        group = "_line"
    keys = [c for c in ("depth", "tau") if c in df.columns]

    def points(g: pd.DataFrame, by: list[str]) -> pd.DataFrame:
        """One point per ``by`` value (per row without ``by``): mean and standard deviation over seeds of the
        FLOPs ``x`` and the accuracy ``y``, in FLOP order."""
        if not by:
            pts = pd.DataFrame({"x": g[xcol], "xs": float("nan"), "y": g["accuracy"], "ys": float("nan")})
        else:
            stats = dict(x=(xcol, "mean"), xs=(xcol, "std"), y=("accuracy", "mean"), ys=("accuracy", "std"))
            pts = g.groupby(by, dropna=False).agg(**stats).reset_index()
        return pts.sort_values("x")

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    shown: list[tuple[float, float, str, str]] = []  # (x, accuracy %, colour, name) of every plotted point
    main = df[at_thr & (variant == "")]
    lines = list(main.groupby(group) if group else [("", main)])
    for i, (name, g) in enumerate(lines):
        color = f"C{i}"
        agg = points(g, keys)
        ax.errorbar(
            agg["x"] / scale,
            100 * agg["y"],
            xerr=agg["xs"].fillna(0) / scale,
            yerr=100 * agg["ys"].fillna(0),
            fmt="o-",
            color=color,
            ms=4,
            capsize=3,
            label=str(name),
        )
        for _, row in agg.iterrows():
            tau = row.get("tau", float("nan"))
            note = (
                f"τ={tau:g}"
                if isinstance(tau, float) and tau == tau
                else f"d{int(row['depth'])}"
                if "depth" in row
                else ""
            )
            ax.annotate(
                note,
                (row["x"] / scale, 100 * row["y"]),
                textcoords="offset points",
                xytext=(3, 3),
                fontsize=7,
                color=color,
            )
            shown.append((row["x"] / scale, 100 * row["y"], color, f"{name} {note}".strip()))
        other = df[(~at_thr) & (variant == "") & (df[group] == name)] if group else df.iloc[:0]
        if len(other):
            ax.scatter(
                other[xcol] / scale,
                100 * other["accuracy"],
                marker="x",
                color=color,
                alpha=0.4,
                s=18,
                label=f"{name}, thresholds ≠ {threshold_value:g}",
            )
    is_variant = at_thr & (variant != "")
    vrows = df[is_variant].assign(_variant=variant[is_variant])  # unfiltered, assign would realign: NaN rows
    # variants take the colours the lines left, then tab20's light shades: none repeats a line's colour
    from matplotlib.colors import to_hex

    light = plt.get_cmap("tab20").colors[1::2]
    palette = [f"C{k}" for k in range(len(lines), 10)] + [to_hex(c) for c in light]
    vkeys = [c for c in (group if group == "_line" else "method", "_variant") if c in vrows.columns]
    if "tau" not in vrows.columns:
        vrows = vrows.assign(tau=float("nan"))
    for j, (key, g) in enumerate(vrows.groupby(vkeys, sort=False) if len(vrows) else []):
        key = dict(zip(vkeys, key if isinstance(key, tuple) else (key,), strict=True))
        color = palette[j % len(palette)]
        pts = points(g, ["tau"])
        name = f"{key.get(vkeys[0], '')}, {key['_variant']}"
        one = len(pts) == 1
        ax.errorbar(
            pts["x"] / scale,
            100 * pts["y"],
            xerr=pts["xs"].fillna(0) / scale,
            yerr=100 * pts["ys"].fillna(0),
            fmt="D" if one else "D--",
            ms=5 if one else 4,
            capsize=3,
            color=color,
            label=f"{key.get(vkeys[0], '')} τ={pts['tau'].iloc[0]:g}, {key['_variant']}" if one else name,
        )
        for _, row in pts.iterrows():
            if not one:
                xy = (row["x"] / scale, 100 * row["y"])
                ax.annotate(
                    f"τ={row['tau']:g}",
                    xy,
                    textcoords="offset points",
                    xytext=(3, -9),
                    fontsize=7,
                    color=color,
                )
            shown.append((row["x"] / scale, 100 * row["y"], color, f"{name} τ={row['tau']:g}"))
    for k, c in enumerate(controls):
        ax.scatter(
            float(c["flops_mean"]) / scale,
            100 * float(c["accuracy"]),
            marker=("*", "P", "X", "p")[k % 4],
            s=80 if k % 4 == 0 else 45,
            color="black",
            zorder=5,
            label=f"control: {c['label']}",
        )
    shown += [
        (float(c["flops_mean"]) / scale, 100 * float(c["accuracy"]), "black", c["label"]) for c in controls
    ]
    below = [p for p in shown if y_floor is not None and p[1] < y_floor]
    if below:
        ax.set_ylim(bottom=y_floor)  # the top stays where autoscaling put it
        for x, y, color, name in below:
            ax.plot([x], [y_floor], marker="v", color=color, ms=7, clip_on=False, zorder=6)
            note = f"{name}: {y:.1f} % (below the axis)"
            ax.annotate(
                note, (x, y_floor), textcoords="offset points", xytext=(6, 4), fontsize=7, color=color
            )
    ax.set_xlabel("FLOPs / full network" if xcol == "flops_ratio" else "mean FLOPs per example (millions)")
    ax.set_ylabel("test accuracy (%)")
    title = title or f"accuracy vs computation (PACT at threshold {threshold_value:g})"
    ax.set_title(textwrap.fill(title, 100), fontsize=8 if len(title) > 80 else 9)
    ax.grid(alpha=0.3)
    if group or len(df[variant != ""]) or len(controls):
        # a long legend goes beside the axes, not over the data
        if len(ax.get_legend_handles_labels()[1]) > 8:
            fig.set_size_inches(10.0, 4.8)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        else:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# -- spatial halting: ponder-cost maps ---------------------------------------------------------------------


def ponder_map(maps: Sequence[torch.Tensor], size: int | Sequence[int]) -> torch.Tensor:
    """SACT's ponder-cost map: the sum over blocks of each block's units map, upsampled (nearest) to ``size``.

    :param maps: per block, the units run at each position, ``[B, H_b, W_b]`` (``ThresholdResult.maps``).
    :param size: the input resolution ``H`` or ``(H, W)`` (e.g. ``x.shape[-2:]``).
    :returns: float32 ``[B, H, W]``; with ``L_b`` units in block ``b`` its values lie in
        ``[blocks, Σ_b L_b]`` (every block runs at least its first unit everywhere).
    """
    import torch
    import torch.nn.functional as F

    if len(maps) == 0:
        raise ValueError("maps must hold at least one block's [B, H, W] units map, got none")
    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(hw) != 2:
        raise ValueError(f"size must be H or (H, W), got {size!r}")
    total = torch.zeros(maps[0].shape[0], *hw, dtype=torch.float32, device=maps[0].device)
    for m in maps:
        if m.dim() != 3 or m.shape[0] != total.shape[0]:
            raise ValueError(f"every units map must be [{total.shape[0]}, H_b, W_b], got {tuple(m.shape)}")
        total += F.interpolate(m.detach().unsqueeze(1).float(), size=hw, mode="nearest").squeeze(1)
    return total


def _numpy(t) -> np.ndarray:
    return np.asarray(t.detach().cpu() if hasattr(t, "detach") else t, dtype=np.float64)


def _display(img) -> np.ndarray:
    """``[C, H, W]`` (normalised or uint8) → ``[H, W]`` (1 channel) or ``[H, W, 3]``, min-max scaled."""
    a = _numpy(img)
    a = (a - a.min()) / max(a.max() - a.min(), 1e-12)
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def _gray(img: np.ndarray) -> np.ndarray:
    return img if img.ndim == 2 else img.mean(-1)


def _as_total(maps, size) -> np.ndarray:
    if isinstance(maps, Sequence) and not hasattr(maps, "shape"):
        maps = ponder_map(maps, size)
    return _numpy(maps)


def _map_range(total: np.ndarray, units_per_block, vrange, blocks: int | None) -> tuple[float, float]:
    if vrange is not None:
        lo, hi = (float(v) for v in vrange)
    elif units_per_block is not None:
        lo, hi = float(len(units_per_block)), float(sum(units_per_block))
    else:
        lo = float(blocks) if blocks is not None else float(total.min()) if total.size else 0.0
        hi = float(total.max()) if total.size else lo + 1
    return lo, hi if hi > lo else lo + 1.0


def plot_ponder_maps(
    images: torch.Tensor,
    maps: Sequence[torch.Tensor] | torch.Tensor,
    titles: Sequence[str] | None = None,
    units_per_block: Sequence[int] | None = None,
    vrange: tuple[float, float] | None = None,
    overlay: bool = False,
    cmap: str = "viridis",
    suptitle: str | None = None,
) -> Figure:
    """A few images (top row) and their ponder-cost maps (bottom row), with a shared colorbar in units.

    :param images: ``[N, C, H, W]`` (normalised floats or uint8; 1 or 3 channels), each min-max scaled for
        display.
    :param maps: per block the units maps ``[N, H_b, W_b]`` (summed by :func:`ponder_map` at the images'
        resolution), or the total map ``[N, H, W]`` itself.
    :param titles: one per image (e.g. label, prediction and FLOPs).
    :param units_per_block: ``L_b``: the colour scale spans the possible range ``[blocks, Σ_b L_b]`` (the
        same in every figure of one model); else ``vrange``, else the data's range.
    :param overlay: draw the map semi-transparent over the grey image instead of on its own.
    """
    plt = _plt()
    n = images.shape[0]
    if n == 0:
        raise ValueError("plot_ponder_maps needs at least one image, got 0")
    total = _as_total(maps, tuple(images.shape[-2:]))
    if total.shape[0] != n:
        raise ValueError(f"maps cover {total.shape[0]} images but images has {n}")
    blocks = len(maps) if isinstance(maps, Sequence) and not hasattr(maps, "shape") else None
    lo, hi = _map_range(total, units_per_block, vrange, blocks)
    fig, axes = plt.subplots(2, n, figsize=(1.45 * n + 1.0, 3.5), squeeze=False, constrained_layout=True)
    im = None
    for j in range(n):
        img = _display(images[j])
        axes[0, j].imshow(img, cmap="gray" if img.ndim == 2 else None)
        if overlay:
            axes[1, j].imshow(_gray(img), cmap="gray")
            im = axes[1, j].imshow(total[j], cmap=cmap, vmin=lo, vmax=hi, alpha=0.6)
        else:
            im = axes[1, j].imshow(total[j], cmap=cmap, vmin=lo, vmax=hi)
        if titles is not None:
            axes[0, j].set_title(titles[j], fontsize=7)
        axes[1, j].set_xlabel(f"mean {total[j].mean():.2f}", fontsize=7)
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("image", fontsize=8)
    axes[1, 0].set_ylabel("ponder map", fontsize=8)
    cb = fig.colorbar(im, ax=axes[1, :].tolist(), shrink=0.9, pad=0.02)
    cb.set_label("units (Σ over blocks)", fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return fig


def plot_class_ponder_maps(
    maps_total: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str] | None = None,
    ncols: int = 5,
    vrange: tuple[float, float] | None = None,
    cmap: str = "viridis",
) -> Figure:
    """The average ponder-cost map of each class, a grid of small heatmaps on one colour scale.

    :param maps_total: ``[N, H, W]`` ponder-cost maps (:func:`ponder_map`).
    :param labels: ``[N]`` integer classes (the true labels).
    :param class_names: names of classes ``0..K-1`` (all of them get a panel, empty ones say so); default the
        classes present in ``labels``.
    :param vrange: the colour range (default: the range of the class means).
    """
    plt = _plt()
    total = _as_total(maps_total, None)
    lab = _numpy(labels).astype(np.int64)
    if total.ndim != 3 or lab.shape != (total.shape[0],):
        raise ValueError(f"maps_total must be [N, H, W] and labels [N], got {total.shape} and {lab.shape}")
    classes = list(range(len(class_names))) if class_names is not None else sorted(np.unique(lab).tolist())
    means = {c: total[lab == c].mean(0) for c in classes if (lab == c).any()}
    stacked = np.stack(list(means.values())) if means else np.zeros((1, 1, 1))
    lo, hi = _map_range(stacked, None, vrange, None)
    ncols = max(1, min(ncols, len(classes)))
    nrows = -(-len(classes) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(1.6 * ncols + 0.9, 1.75 * nrows + 0.4), squeeze=False, constrained_layout=True
    )
    im = None
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= len(classes):
            ax.axis("off")
            continue
        c = classes[i]
        name = _name(c, class_names)
        if c not in means:
            ax.set_title(f"{name} (n=0)", fontsize=8)
            ax.text(0.5, 0.5, "no images", ha="center", va="center", fontsize=7, transform=ax.transAxes)
            continue
        im = ax.imshow(means[c], cmap=cmap, vmin=lo, vmax=hi)
        ax.set_title(f"{name} (n={int((lab == c).sum())})\nmean {means[c].mean():.2f}", fontsize=8)
    if im is not None:
        cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, pad=0.02)
        cb.set_label("mean units (Σ over blocks)", fontsize=8)
    fig.suptitle("average ponder-cost map per class", fontsize=9)
    return fig


def plot_map_statistics(
    map_std: torch.Tensor | Mapping[str, torch.Tensor],
    correlation: torch.Tensor | Mapping[str, torch.Tensor],
    bins: int = 20,
) -> Figure:
    """Histograms: per block, the per-image standard deviation of the units map over positions; last panel,
    the per-image rank correlation between ponder-cost map and saliency.

    :param map_std: ``[N, blocks]`` (:func:`pact_pyro.saliency.units_map_std`), or
        ``{model name: [N, blocks]}`` to overlay several models.
    :param correlation: ``[N]`` (:func:`pact_pyro.saliency.map_saliency_correlation`; NaN entries, uniform
        maps, are left out and counted), or ``{model name: [N]}`` with the same names.
    """
    plt = _plt()
    stds = {k: _numpy(v) for k, v in (map_std.items() if isinstance(map_std, Mapping) else [("", map_std)])}
    cors = {
        k: _numpy(v)
        for k, v in (correlation.items() if isinstance(correlation, Mapping) else [("", correlation)])
    }
    if set(stds) != set(cors):
        raise ValueError(
            f"map_std and correlation must name the same models, got {list(stds)} and {list(cors)}"
        )
    if any(s.ndim != 2 for s in stds.values()):
        raise ValueError(f"map_std must be [N, blocks], got shapes {[s.shape for s in stds.values()]}")
    blocks = max(s.shape[1] for s in stds.values())
    several = len(stds) > 1
    kind = "step" if several else "bar"
    fig, axes = plt.subplots(1, blocks + 1, figsize=(3.0 * (blocks + 1), 2.9), squeeze=False)
    top = max((float(s.max()) for s in stds.values() if s.size), default=0.0)
    edges = np.linspace(0.0, max(top, 1e-3) * 1.0001, bins + 1)
    for i, name in enumerate(stds):
        s, r = stds[name], cors[name]
        for b in range(s.shape[1]):
            uniform = f"{int((s[:, b] == 0).sum())}/{len(s)}"
            label = f"{name}: {uniform} uniform" if several else None
            axes[0, b].hist(s[:, b], bins=edges, histtype=kind, color=f"C{i}", lw=1.5, label=label)
            title = f"block {b + 1}" if several else f"block {b + 1}: {uniform} images uniform"
            axes[0, b].set_title(title, fontsize=9)
        ok = r[np.isfinite(r)]
        mean = f"{ok.mean():.2f}" if ok.size else "n/a"
        label = f"{name}: mean {mean} ({ok.size}/{len(r)})" if several else None
        axes[0, -1].hist(
            ok, bins=np.linspace(-1, 1, bins + 1), histtype=kind, color=f"C{i}", lw=1.5, label=label
        )
        title = (
            "map–saliency correlation" if several else f"mean {mean} over {ok.size}/{len(r)} non-uniform maps"
        )
        axes[0, -1].set_title(title, fontsize=9)
    for b in range(blocks):
        axes[0, b].set_xlabel(f"std of block {b + 1}'s units map over positions", fontsize=8)
    axes[0, 0].set_ylabel("images")
    axes[0, -1].set_xlabel("Spearman(ponder map, gradient saliency)", fontsize=8)
    axes[0, -1].set_xlim(-1, 1)
    if several:
        for ax in axes[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
