"""Diagnostics of the amortized halting posterior ``q(z | x)`` with ArviZ.

:func:`to_inference_data` draws hard halting decisions ``z_b^l ~ Bernoulli(h_b^l)`` from the guide with
real early exit (:func:`pact_pyro.threshold.threshold`, ``mode="sample"``), ``S = chains × draws`` times
per example, and packs them into an :class:`arviz.InferenceData` built with ``az.from_dict`` (arviz 0.x;
``az.from_pyro`` accepts only MCMC):

=============================  ===============================  ==========================================
group.variable                 dims                             meaning
=============================  ===============================  ==========================================
posterior.units                chain, draw, example, block      ``N_b`` executed under ``z ~ q(z | x)``
posterior.total_units          chain, draw, example             ``Σ_b N_b``
posterior.flops                chain, draw, example             ponder FLOPs of that draw (SACT rules)
posterior_predictive.y         chain, draw, example             ``y ~ p(y | x, z)``
posterior_predictive.y_probs   chain, draw, example, class      ``p(y = k | x, z)`` of that draw
log_likelihood.y               chain, draw, example             ``log p(y_obs | x, z)``
observed_data.y                example                          the labels
constant_data.label            example                          the inputs' class
constant_data.thresholded_*    example[, block]                 ``N̂_b``, FLOPs, prediction at ``h ≥ 0.5``
constant_data.halting_prob     example, block, head             ``h`` on the thresholded path
constant_data.q_mode_prob      example, block                   ``q(N_b = N̂_b | x)``
constant_data.unit_flops       block, unit                      FLOPs of each unit (``head_flops``: heads)
=============================  ===============================  ==========================================

``attrs`` hold the prior, ``τ``, the guide, the temperature ``λ``, the depth and the threshold.

**Why not R-hat, ESS, LOO or WAIC.** PACT is trained by amortized MAP: network weights are point estimates
and ``q(z | x)`` is a per-example distribution over *local* latents, sampled exactly (independent draws, no
Markov chain). R-hat and ESS diagnose the mixing of a chain: here they are 1 and ``S`` by construction and
say nothing. LOO/WAIC estimate out-of-sample fit of a *posterior over global parameters*; our weights have
no posterior, and the test examples are already held out, so their log predictive density is the
out-of-sample fit itself (:func:`predictive_checks` reports it directly). What matters instead:

* how deterministic ``q`` is (:func:`halting_determinism`): training has no entropy term, so ``h`` should
  pile up near 0 and 1 and sampled ``N`` should equal the thresholded ``N̂``; if not, thresholded and
  sampled evaluation disagree;
* whether computation is *adaptive* (:func:`units_table`, :func:`class_units`,
  :func:`units_vs_uncertainty`): the same ``N`` for every input is depth pruning, not adaptive computation;
* whether the predictive distribution is accurate and calibrated (:func:`predictive_checks`).

ArviZ and matplotlib are imported lazily (inside functions), only by this module and :mod:`pact_pyro.plots`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .data import TensorData, batches
from .flops import FlopTable
from .threshold import threshold

if TYPE_CHECKING:  # pragma: no cover
    import arviz
    import pandas

__all__ = [
    "import_arviz",
    "to_inference_data",
    "halting_probabilities",
    "halting_determinism",
    "units_table",
    "class_units",
    "summarize_class_units",
    "units_vs_uncertainty",
    "expected_units",
    "error_auroc",
    "predictive_checks",
    "predictive_entropy",
    "reliability",
]


def import_arviz():
    """``import arviz`` without its import-time ``FutureWarning`` about the 1.0 refactor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


@torch.no_grad()
def halting_probabilities(model, guide, x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Every halting probability ``h_b^l = σ(head_b^l(u^l))`` along a given execution path.

    Every unit of every block runs (no early exit); block ``b`` passes on its state ``u^{N_b}`` with ``N_b``
    taken from ``units`` ``[B, blocks]`` (1-based), so with the thresholded ``N̂`` these are exactly the ``h``
    the deterministic rule looked at (plus the heads after ``N̂_b``, which it never evaluates).

    :returns: ``h`` ``[B, blocks, L_max - 1]`` (NaN where a block has fewer heads).
    """
    net = model.backbone
    was = net.training, guide.training
    net.eval()
    guide.eval()
    try:
        B = x.shape[0]
        Lmax = max(len(block) for block in net.blocks)
        h = torch.full((B, len(net.blocks), max(Lmax - 1, 0)), float("nan"), dtype=x.dtype, device=x.device)
        u = net.stem(x)
        rows = torch.arange(B, device=x.device)
        for b, block in enumerate(net.blocks):
            states = []
            for l, unit in enumerate(block):
                u = unit(u)
                states.append(u)
                if l < len(block) - 1:
                    h[:, b, l] = torch.sigmoid(guide.halting_logits(b, l, u))
            u = torch.stack(states, 1)[rows, units[:, b] - 1]  # u^{N_b}
    finally:
        net.train(was[0])
        guide.train(was[1])
    return h


def _q_prob_of(h: torch.Tensor, n: torch.Tensor, L: Sequence[int]) -> torch.Tensor:
    """``q(N_b = n_b | x) = h^{n} ∏_{i<n} (1 - h^i)`` (``h^L := 1``).

    ``h`` ``[B, blocks, L-1]``, ``n`` ``[B, blocks]`` → ``[B, blocks]``.
    """
    out = torch.empty(n.shape, dtype=h.dtype, device=h.device)
    for b, Lb in enumerate(L):
        hb = torch.cat([h[:, b, : Lb - 1], h.new_ones(h.shape[0], 1)], -1)  # [B, L]
        still = torch.cumprod(torch.cat([h.new_ones(h.shape[0], 1), 1 - hb[:, :-1]], -1), -1)
        out[:, b] = (hb * still).gather(1, (n[:, b] - 1).unsqueeze(1)).squeeze(1)
    return out


def _model_attrs(model, guide, threshold_value: float, table: FlopTable, extra: dict | None) -> dict:
    priors = getattr(model, "priors", [])
    configs = [p.config() for p in priors]
    attrs: dict[str, Any] = {
        "prior": json.dumps(configs[0] if configs and all(c == configs[0] for c in configs) else configs),
        "tau": float(getattr(priors[0], "tau", float("nan"))) if priors else float("nan"),
        "guide": str(getattr(guide, "name", type(guide).__name__)),
        "temperature": float(getattr(guide, "temperature", float("nan"))),
        "depth": 2 + 2 * sum(model.units_per_block),
        "units_per_block": json.dumps(list(model.units_per_block)),
        "threshold": float(threshold_value),
        "flops_full": int(table.full),
        "inference_library": "pact_pyro",
    }
    for k, v in (extra or {}).items():
        attrs[k] = v if isinstance(v, int | float | str) else json.dumps(v)
    return attrs


def _as_batches(data, batch_size: int, device):
    if isinstance(data, TensorData):
        return len(data), data.classes, batches(data, batch_size, device=device)
    if isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"data: x and y must have the same length, got {x.shape[0]} and {y.shape[0]}")
        it = (
            (x[s : s + batch_size].to(device), y[s : s + batch_size].to(device))
            for s in range(0, len(y), batch_size)
        )
        return len(y), None, it
    raise TypeError(f"data must be a TensorData or a pair (x, y) of tensors, got {type(data).__name__}")


@torch.no_grad()
def to_inference_data(
    model,
    guide,
    data: TensorData | tuple[torch.Tensor, torch.Tensor],
    num_samples: int = 10,
    num_chains: int = 1,
    batch_size: int = 256,
    threshold_value: float = 0.5,
    seed: int = 0,
    flop_table: FlopTable | None = None,
    example_ids: Sequence[int] | None = None,
    attrs: dict | None = None,
) -> arviz.InferenceData:
    """Draw halting decisions from the guide and return an :class:`arviz.InferenceData` (module docstring).

    :param data: a :class:`~pact_pyro.data.TensorData` (uint8 images, normalised here) or ``(x [n, C, H, W]``
        float, already normalised, ``y [n])``.
    :param num_samples: draws per chain; every draw is one early-exit pass with ``z ~ Bernoulli(h)``.
    :param num_chains: chains (independent replicates of the same exact sampler; ``S = chains × draws``).
    :param threshold_value: the deterministic rule's threshold for the ``thresholded_*`` constants.
    :param example_ids: coordinate values of the ``example`` dim (default ``0..n-1``).
    :param attrs: extra attributes (e.g. ``{"run_dir": ...}``).
    """
    az = import_arviz()
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if not isinstance(num_chains, int) or num_chains < 1:
        raise ValueError(f"num_chains must be an integer >= 1, got {num_chains!r}")
    device = next(model.backbone.parameters()).device
    n, classes, it = _as_batches(data, batch_size, device)
    S = num_samples * num_chains
    L = list(model.units_per_block)
    gen = torch.Generator(device=device).manual_seed(seed)
    table = flop_table
    keys = (
        "units",
        "flops",
        "y",
        "y_probs",
        "loglik",
        "thr_units",
        "thr_flops",
        "thr_pred",
        "h",
        "q_mode",
        "label",
    )
    acc: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for x, y in it:
        if table is None:
            table = FlopTable.for_model(model, tuple(x.shape[1:]), guide)
        t = threshold(model, guide, x, threshold_value, "threshold", flop_table=table)
        h = halting_probabilities(model, guide, x, t.units)
        acc["thr_units"].append(t.units.cpu())
        acc["thr_flops"].append(t.flops.cpu())
        acc["thr_pred"].append(t.logits.argmax(-1).cpu())
        acc["h"].append(h.float().cpu())
        acc["q_mode"].append(_q_prob_of(h, t.units, L).float().cpu())
        acc["label"].append(y.cpu())
        draws = [threshold(model, guide, x, threshold_value, "sample", gen, table) for _ in range(S)]
        logp = torch.stack([d.logits.log_softmax(-1) for d in draws])  # [S, b, C]
        acc["units"].append(torch.stack([d.units for d in draws]).cpu())
        acc["flops"].append(torch.stack([d.flops for d in draws]).cpu())
        acc["y_probs"].append(logp.exp().float().cpu())
        acc["loglik"].append(logp.gather(-1, y.expand(S, -1).unsqueeze(-1)).squeeze(-1).cpu())
        probs = logp.exp().reshape(-1, logp.shape[-1])
        acc["y"].append(torch.multinomial(probs, 1, generator=gen).reshape(S, -1).cpu())
    if table is None:
        raise ValueError("data must hold at least one example, got 0")
    cat = {
        k: torch.cat(v, dim=1 if k in ("units", "flops", "y_probs", "loglik", "y") else 0).numpy()
        for k, v in acc.items()
    }
    classes = classes or cat["y_probs"].shape[-1]

    def chains(a: np.ndarray) -> np.ndarray:
        return a.reshape((num_chains, num_samples) + a.shape[1:])

    Lmax = max(L)
    unit_flops = np.zeros((len(L), Lmax), dtype=np.int64)
    head_flops = np.zeros((len(L), max(Lmax - 1, 0)), dtype=np.int64)
    for b in range(len(L)):
        unit_flops[b, : L[b]] = table.units[b]
        head_flops[b, : L[b] - 1] = table.heads[b]
    ids = np.arange(n) if example_ids is None else np.asarray(example_ids)
    if ids.shape != (n,):
        raise ValueError(f"example_ids must have {n} entries, got shape {ids.shape}")
    coords = {
        "example": ids,
        "block": np.arange(1, len(L) + 1),
        "unit": np.arange(1, Lmax + 1),
        "head": np.arange(1, Lmax),
        "class": np.arange(classes),
    }
    dims = {
        "units": ["example", "block"],
        "total_units": ["example"],
        "flops": ["example"],
        "y": ["example"],
        "y_probs": ["example", "class"],
        "label": ["example"],
        "thresholded_units": ["example", "block"],
        "thresholded_flops": ["example"],
        "thresholded_pred": ["example"],
        "halting_prob": ["example", "block", "head"],
        "q_mode_prob": ["example", "block"],
        "unit_flops": ["block", "unit"],
        "head_flops": ["block", "head"],
    }
    return az.from_dict(
        posterior={
            "units": chains(cat["units"]),
            "total_units": chains(cat["units"].sum(-1)),
            "flops": chains(cat["flops"]),
        },
        posterior_predictive={"y": chains(cat["y"]), "y_probs": chains(cat["y_probs"])},
        log_likelihood={"y": chains(cat["loglik"])},
        observed_data={"y": cat["label"]},
        constant_data={
            "label": cat["label"],
            "thresholded_units": cat["thr_units"],
            "thresholded_flops": cat["thr_flops"],
            "thresholded_pred": cat["thr_pred"],
            "halting_prob": cat["h"],
            "q_mode_prob": cat["q_mode"],
            "unit_flops": unit_flops,
            "head_flops": head_flops,
        },
        coords=coords,
        dims=dims,
        attrs=_model_attrs(model, guide, threshold_value, table, attrs),
    )


def _reached_heads(idata) -> np.ndarray:
    """Mask ``[example, block, head]``: head ``l`` was evaluated by the thresholded rule (``l ≤ N̂_b``)."""
    cd = idata.constant_data
    h = cd["halting_prob"].values
    n = cd["thresholded_units"].values
    heads = np.arange(1, h.shape[-1] + 1)
    return (heads[None, None, :] <= n[:, :, None]) & np.isfinite(h)


def halting_determinism(idata, eps: float = 0.05) -> dict:
    """How deterministic the amortized posterior ``q(z | x)`` is.

    Without an entropy term the MAP objective pushes every ``h`` to 0 or 1, and then sampled evaluation
    (``z ~ q``) and thresholded evaluation (``h ≥ 0.5``) agree. Returns

    * ``sampled_differs``: fraction of (draw, example) pairs whose sampled ``N`` differs from ``N̂`` in any
      block;
    * ``sampled_differs_per_block``: the same per block;
    * ``examples_ever_differ``: fraction of examples for which at least one draw differs;
    * ``exact_differs_per_block``: ``1 - E_x q(N_b = N̂_b | x)`` with upstream blocks thresholded (exact,
      no sampling noise);
    * ``saturated``: fraction of evaluated halting probabilities with ``h < eps`` or ``h > 1 - eps``;
    * ``undecided``: fraction with ``0.2 < h < 0.8``.
    """
    post = idata.posterior["units"].values  # [chain, draw, example, block]
    thr = idata.constant_data["thresholded_units"].values  # [example, block]
    diff = post != thr[None, None]
    h = idata.constant_data["halting_prob"].values[_reached_heads(idata)]
    return {
        "sampled_differs": float(diff.any(-1).mean()),
        "sampled_differs_per_block": diff.mean((0, 1, 2)).tolist(),
        "examples_ever_differ": float(diff.any(-1).any((0, 1)).mean()),
        "exact_differs_per_block": (1 - idata.constant_data["q_mode_prob"].values.mean(0)).tolist(),
        "saturated": float(((h < eps) | (h > 1 - eps)).mean()) if h.size else float("nan"),
        "undecided": float(((h > 0.2) & (h < 0.8)).mean()) if h.size else float("nan"),
    }


def units_table(idata) -> pandas.DataFrame:
    """Per class (rows, plus ``all``): thresholded mean ``N̂_b`` per block, total units, FLOP ratio,
    thresholded accuracy and the number of examples."""
    import pandas as pd

    cd = idata.constant_data
    label = cd["label"].values
    n = cd["thresholded_units"].values
    correct = cd["thresholded_pred"].values == label
    ratio = cd["thresholded_flops"].values / float(idata.attrs["flops_full"])
    rows = {}
    for c in [*np.unique(label).tolist(), "all"]:
        m = np.ones_like(label, dtype=bool) if c == "all" else label == c
        row = {f"N block {b + 1}": n[m, b].mean() for b in range(n.shape[1])}
        row.update(
            total=n[m].sum(1).mean(),
            flops_ratio=ratio[m].mean(),
            accuracy=correct[m].mean(),
            count=int(m.sum()),
        )
        rows[c] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def class_units(idata) -> arviz.InferenceData:
    """Per-class mean units under ``z ~ q``: a posterior with variables ``block_{b}`` and ``total`` over dims
    ``(chain, draw, class)``: ``mean_{x in class} N_b(z_draw)``. Its spread across draws is the sampling
    uncertainty of a class's average computation (all of it comes from ``q``; weights are point estimates)."""
    az = import_arviz()
    units = idata.posterior["units"].values.astype(np.float64)  # [chain, draw, example, block]
    label = idata.constant_data["label"].values
    classes = np.unique(label)
    per = np.stack([units[:, :, label == c].mean(2) for c in classes], 2)  # [chain, draw, class, block]
    post = {f"block_{b + 1}": per[..., b] for b in range(per.shape[-1])}
    post["total"] = per.sum(-1)
    return az.from_dict(posterior=post, coords={"class": classes}, dims={k: ["class"] for k in post})


def summarize_class_units(idata, hdi_prob: float = 0.9) -> pandas.DataFrame:
    """``az.summary`` (``kind="stats"``: mean, sd, HDI) of :func:`class_units`. R-hat/ESS are left out on
    purpose: draws are exact and independent (module docstring)."""
    az = import_arviz()
    return az.summary(class_units(idata), kind="stats", hdi_prob=hdi_prob)


def _rank(a: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank)."""
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = np.arange(len(a))
    _, inv, counts = np.unique(a, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return (sums / counts)[inv]


def predictive_entropy(idata) -> np.ndarray:
    """Entropy (nats) of the posterior predictive ``p(y | x) ≈ (1/S) Σ_s p(y | x, z_s)``, per example."""
    p = idata.posterior_predictive["y_probs"].values.mean((0, 1))  # [example, class]
    return -(p * np.log(np.clip(p, 1e-30, None))).sum(-1)


def expected_units(idata) -> np.ndarray:
    """``E_q[N_b | x]`` per example and block, from the halting probabilities on the thresholded path
    (``constant_data.halting_prob``; upstream blocks run their thresholded ``N̂``):

    ``E[N_b] = Σ_{n=1}^{L_b} P(N_b ≥ n) = 1 + Σ_{l=1}^{L_b - 1} ∏_{i ≤ l} (1 - h_b^i)``.

    Unlike the thresholded ``N̂_b`` it is continuous, so it still ranks inputs when every input halts at the
    same unit. Returns ``[example, block]`` (float64).
    """
    h = idata.constant_data["halting_prob"].values.astype(np.float64)  # [example, block, head], NaN-padded
    go_on = np.where(np.isnan(h), 0.0, 1.0 - h)  # a missing head ends the block
    return 1.0 + np.cumprod(go_on, axis=-1).sum(-1)


def _masked_mean(a: np.ndarray, mask: np.ndarray) -> float:
    return float(a[mask].mean()) if mask.any() else float("nan")


def error_auroc(score: np.ndarray, wrong: np.ndarray) -> float:
    """``P(score of a wrong prediction > score of a correct one)``, ties counted half (Mann-Whitney AUROC):
    how well ``score`` predicts an error. 0.5: not at all (also any constant score); ``nan`` without both
    kinds of example. ``score`` and ``wrong`` (bool) are ``[example]``."""
    score, wrong = np.asarray(score, dtype=np.float64), np.asarray(wrong, dtype=bool)
    if score.shape != wrong.shape or score.ndim != 1:
        raise ValueError(f"score and wrong must be 1-d of one length, got {score.shape} and {wrong.shape}")
    n_wrong, n_right = int(wrong.sum()), int((~wrong).sum())
    if not n_wrong or not n_right:
        return float("nan")
    u = _rank(score)[wrong].sum() - n_wrong * (n_wrong - 1) / 2  # ranks are 0-based, ties averaged
    return float(u / (n_wrong * n_right))


def units_vs_uncertainty(idata) -> dict:
    """Is computation spent where the network is unsure? Thresholded total units ``Σ_b N̂_b`` and the
    guide's expected total ``Σ_b E_q[N_b | x]`` (:func:`expected_units`) against correctness of the
    thresholded prediction and against the predictive entropy.

    Returns mean units of correct and wrong examples; the Spearman rank correlation of units with entropy
    (``nan`` when either is constant: input-independent depth) and of expected units with entropy; the
    error AUROC (:func:`error_auroc`) of the units, of the expected units and, for reference, of the
    predictive entropy (how well the network's own uncertainty predicts its errors); the mean entropy per
    distinct total.
    """
    cd = idata.constant_data
    total = cd["thresholded_units"].values.sum(1)
    expected = expected_units(idata).sum(1)
    wrong = cd["thresholded_pred"].values != cd["label"].values
    ent = predictive_entropy(idata)

    def spearman(a: np.ndarray) -> float:
        if a.std() > 0 and ent.std() > 0:
            return float(np.corrcoef(_rank(a.astype(float)), _rank(ent))[0, 1])
        return float("nan")

    return {
        "units_correct": _masked_mean(total, ~wrong),
        "units_wrong": _masked_mean(total, wrong),
        "expected_units_correct": _masked_mean(expected, ~wrong),
        "expected_units_wrong": _masked_mean(expected, wrong),
        "spearman_units_entropy": spearman(total),
        "spearman_expected_units_entropy": spearman(expected),
        "error_auroc_units": error_auroc(total, wrong),
        "error_auroc_expected_units": error_auroc(expected, wrong),
        "error_auroc_entropy": error_auroc(ent, wrong),
        "entropy_by_units": {int(t): float(ent[total == t].mean()) for t in np.unique(total)},
        "count_by_units": {int(t): int((total == t).sum()) for t in np.unique(total)},
    }


def reliability(idata, bins: int = 10) -> dict:
    """Reliability diagram data of the posterior predictive: confidence ``max_k p(y = k | x)`` in ``bins``
    equal-width bins, with each bin's mean confidence, accuracy and count, and the expected calibration
    error ``ECE = Σ_bins (count / n) |accuracy - confidence|``."""
    p = idata.posterior_predictive["y_probs"].values.mean((0, 1))
    conf, pred = p.max(-1), p.argmax(-1)
    correct = pred == idata.observed_data["y"].values
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=bins) / count
        accuracy = np.bincount(idx, weights=correct.astype(float), minlength=bins) / count
    ece = float(np.nansum(count / len(conf) * np.abs(accuracy - mean_conf)))
    return {"edges": edges, "confidence": mean_conf, "accuracy": accuracy, "count": count, "ece": ece}


def predictive_checks(idata, bins: int = 10) -> dict:
    """Accuracy and calibration of the posterior predictive.

    * ``accuracy_thresholded``: the deterministic network (``h ≥ threshold``), what one deploys;
    * ``accuracy_predictive``: argmax of ``(1/S) Σ_s p(y | x, z_s)``;
    * ``accuracy_per_draw_mean`` / ``_sd``: argmax of each single draw, across draws;
    * ``lpd``: mean log predictive density ``log (1/S) Σ_s p(y_obs | x, z_s)`` (nats per example) — the
      held-out fit that LOO would estimate, computed directly on test data;
    * ``ece``: expected calibration error of the posterior predictive (:func:`reliability`).
    """
    y = idata.observed_data["y"].values
    probs = idata.posterior_predictive["y_probs"].values  # [chain, draw, example, class]
    ll = idata.log_likelihood["y"].values.reshape(-1, len(y))  # [S, example]
    per_draw = (probs.argmax(-1) == y).mean(-1).reshape(-1)
    lpd = np.logaddexp.reduce(ll, axis=0) - math.log(ll.shape[0])
    return {
        "accuracy_thresholded": float((idata.constant_data["thresholded_pred"].values == y).mean()),
        "accuracy_predictive": float((probs.mean((0, 1)).argmax(-1) == y).mean()),
        "accuracy_per_draw_mean": float(per_draw.mean()),
        "accuracy_per_draw_sd": float(per_draw.std()),
        "lpd": float(lpd.mean()),
        "ece": reliability(idata, bins)["ece"],
        "flops_ratio_thresholded": float(idata.constant_data["thresholded_flops"].values.mean())
        / float(idata.attrs["flops_full"]),
        "flops_ratio_sampled": float(idata.posterior["flops"].values.mean())
        / float(idata.attrs["flops_full"]),
    }
