"""Halting diagnostics: InferenceData layout, exact q(N) algebra, arviz round trips, plots."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

az = pytest.importorskip("arviz")
matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from pact_pyro.guides import RelaxedBernoulliGuide  # noqa: E402
from pact_pyro.models import PACTResNet  # noqa: E402

from pact_pyro import diagnostics as D  # noqa: E402
from pact_pyro import plots as P  # noqa: E402
from pact_pyro.flops import FlopTable  # noqa: E402
from pact_pyro.nn import ResNetBackbone  # noqa: E402
from pact_pyro.priors import TruncatedGeometric  # noqa: E402
from pact_pyro.threshold import evaluate_masked, threshold  # noqa: E402

UNITS = (3, 2, 3)  # unequal blocks exercise the NaN/zero padding of the head and unit dims


def _pair(bias: float | None = None, std: float = 3.0):
    model = PACTResNet(ResNetBackbone(list(UNITS), (4, 8, 8), 1, 3), TruncatedGeometric(0.1))
    guide = RelaxedBernoulliGuide(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in guide.heads:
            for head in block:
                head.linear.weight.copy_(torch.randn(head.linear.weight.shape, generator=g) * std)
                head.linear.bias.fill_(0.0 if bias is None else bias)
    return model, guide


def _data(n: int = 24):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.fixture(scope="module")
def idata():
    torch.manual_seed(0)
    model, guide = _pair()
    x, y = _data()
    return D.to_inference_data(model, guide, (x, y), num_samples=6, num_chains=2, batch_size=10, seed=3)


def test_groups_dims_and_shapes(idata):
    assert set(idata.groups()) == {
        "posterior",
        "posterior_predictive",
        "log_likelihood",
        "observed_data",
        "constant_data",
    }
    assert idata.posterior["units"].dims == ("chain", "draw", "example", "block")
    assert idata.posterior["units"].shape == (2, 6, 24, 3)
    assert idata.posterior["flops"].dims == ("chain", "draw", "example")
    assert idata.posterior_predictive["y_probs"].shape == (2, 6, 24, 3)
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "example")
    assert idata.constant_data["halting_prob"].shape == (24, 3, 2)  # L_max - 1 = 2 heads
    assert idata.constant_data["unit_flops"].shape == (3, 3)
    units = idata.posterior["units"].values
    assert units.min() >= 1 and (units <= np.array(UNITS)).all()
    np.testing.assert_array_equal(idata.posterior["total_units"].values, units.sum(-1))
    # block 2 has one head: the padded head entry is NaN, the padded unit costs 0 FLOPs
    assert np.isnan(idata.constant_data["halting_prob"].values[:, 1, 1]).all()
    assert idata.constant_data["unit_flops"].values[1, 2] == 0
    a = idata.attrs
    assert json.loads(a["prior"]) == {"name": "geometric", "tau": 0.1}
    assert a["tau"] == 0.1 and a["guide"] == "relaxed" and a["depth"] == 2 + 2 * sum(UNITS)
    assert a["temperature"] == pytest.approx(2 / 3)


def test_constants_match_threshold_and_flop_table():
    model, guide = _pair()
    x, y = _data()
    idata = D.to_inference_data(model, guide, (x, y), num_samples=2, batch_size=7)
    ref = threshold(model, guide, x)
    cd = idata.constant_data
    np.testing.assert_array_equal(cd["thresholded_units"].values, ref.units.numpy())
    np.testing.assert_array_equal(cd["thresholded_flops"].values, ref.flops.numpy())
    np.testing.assert_array_equal(cd["thresholded_pred"].values, ref.logits.argmax(-1).numpy())
    assert len(np.unique(ref.units.sum(1).numpy())) > 1  # the fixture really halts at different units
    table = FlopTable.for_model(model, (1, 8, 8), guide)
    flops = table.flops(torch.as_tensor(idata.posterior["units"].values.reshape(-1, 3)))
    np.testing.assert_array_equal(idata.posterior["flops"].values.reshape(-1), flops.numpy())
    # log-likelihood is log p(y_obs | x, z) of the same draw
    probs = idata.posterior_predictive["y_probs"].values
    ll = np.log(np.take_along_axis(probs, y.numpy()[None, None, :, None], -1))[..., 0]
    np.testing.assert_allclose(idata.log_likelihood["y"].values, ll, rtol=1e-5, atol=1e-6)


def test_halting_probabilities_reproduce_threshold_rule():
    """h on the thresholded path, thresholded again per block, gives N̂ (the masked reference's decisions)."""
    from pact_pyro.halting import threshold_units

    model, guide = _pair()
    x, _ = _data()
    _, units = evaluate_masked(model, guide, x)
    h = D.halting_probabilities(model, guide, x, units)
    for b, L in enumerate(UNITS):
        np.testing.assert_array_equal(threshold_units(h[:, b, : L - 1]).numpy(), units[:, b].numpy())


def test_q_prob_exact_on_hand_case():
    h = torch.tensor([[[0.2, 0.5]], [[0.9, 0.1]]])  # B = 2, one block, L = 3
    for n, expected in [(1, [0.2, 0.9]), (2, [0.8 * 0.5, 0.1 * 0.1]), (3, [0.8 * 0.5, 0.1 * 0.9])]:
        got = D._q_prob_of(h, torch.full((2, 1), n), [3])
        torch.testing.assert_close(got[:, 0], torch.tensor(expected), rtol=0, atol=1e-7)


def test_expected_units_hand_case_and_enumeration(idata):
    # hand case: one block, L = 3, h = (0.2, 0.5): E[N] = 1 + 0.8 + 0.8 * 0.5 = 2.2; a block of 2 units
    # (second head NaN) with h = 0.9: E[N] = 1 + 0.1
    hand = az.from_dict(
        constant_data={"halting_prob": np.array([[[0.2, 0.5], [0.9, np.nan]]])},
        dims={"halting_prob": ["example", "block", "head"]},
    )
    np.testing.assert_allclose(D.expected_units(hand), [[2.2, 1.1]], rtol=0, atol=1e-12)
    # against the pmf: Σ_n n q(N_b = n | x), q enumerated with _q_prob_of on the fixture's h
    h = torch.from_numpy(idata.constant_data["halting_prob"].values).double()
    B = h.shape[0]
    pmf_mean = torch.stack(
        [
            sum(n * D._q_prob_of(h[:, b : b + 1], torch.full((B, 1), n), [L])[:, 0] for n in range(1, L + 1))
            for b, L in enumerate(UNITS)
        ],
        -1,
    )
    assert pmf_mean.std() > 0.1  # the fixture's heads are far from saturated: a real check
    np.testing.assert_allclose(D.expected_units(idata), pmf_mean.numpy(), rtol=0, atol=1e-6)


def test_error_auroc_matches_pairwise_count():
    g = np.random.default_rng(0)
    score = g.integers(0, 4, 40).astype(float)  # many ties
    wrong = g.random(40) < 0.3
    p, n = score[wrong][:, None], score[~wrong][None, :]
    pairwise = ((p > n).mean() + 0.5 * (p == n).mean()).item()
    assert D.error_auroc(score, wrong) == pytest.approx(pairwise, abs=1e-12)
    assert D.error_auroc(np.ones(40), wrong) == 0.5  # a constant score ranks nothing
    assert D.error_auroc(wrong.astype(float), wrong) == 1.0
    assert np.isnan(D.error_auroc(score, np.zeros(40, dtype=bool)))
    with pytest.raises(ValueError, match="score and wrong"):
        D.error_auroc(score, wrong[:-1])


def test_units_vs_uncertainty_reports_expected_units(idata):
    a = D.units_vs_uncertainty(idata)
    cd = idata.constant_data
    wrong = cd["thresholded_pred"].values != cd["label"].values
    expected = D.expected_units(idata).sum(1)
    assert a["expected_units_wrong"] == pytest.approx(expected[wrong].mean())
    assert a["error_auroc_expected_units"] == D.error_auroc(expected, wrong)
    assert a["error_auroc_entropy"] == D.error_auroc(D.predictive_entropy(idata), wrong)
    assert np.isfinite(a["spearman_expected_units_entropy"])


def test_sampled_mismatch_matches_exact_probability():
    """Block 1 sees the same input in every draw, so P(N_1 ≠ N̂_1) = 1 - E_x q(N_1 = N̂_1 | x) exactly."""
    model, guide = _pair(std=1.0)
    x, y = _data(16)
    idata = D.to_inference_data(model, guide, (x, y), num_samples=100, batch_size=16, seed=0)
    det = D.halting_determinism(idata)
    p = det["exact_differs_per_block"][0]
    se = (p * (1 - p) / (100 * 16)) ** 0.5
    assert 0.05 < p < 0.95
    assert abs(det["sampled_differs_per_block"][0] - p) < 5 * se + 0.02  # draws of one example correlate


def test_saturated_heads_are_deterministic():
    model, guide = _pair(bias=-30.0, std=0.0)  # h ≈ 0: every unit runs, every draw agrees
    x, y = _data(8)
    idata = D.to_inference_data(model, guide, (x, y), num_samples=4)
    det = D.halting_determinism(idata)
    assert det["sampled_differs"] == 0 and det["examples_ever_differ"] == 0
    assert det["saturated"] == 1.0 and det["undecided"] == 0.0
    np.testing.assert_array_equal(idata.constant_data["thresholded_units"].values, np.tile(UNITS, (8, 1)))
    assert (
        D.units_vs_uncertainty(idata)["spearman_units_entropy"]
        != D.units_vs_uncertainty(idata)["spearman_units_entropy"]
    )  # NaN: constant depth has no rank correlation


def test_summary_forest_and_netcdf_round_trip(idata, tmp_path):
    s = az.summary(idata, var_names=["total_units"], kind="stats")
    assert len(s) == 24 and {"mean", "sd"} <= set(s.columns)
    cs = D.summarize_class_units(idata)
    assert list(cs.index[:3]) == ["block_1[0]", "block_1[1]", "block_1[2]"]
    assert np.isfinite(cs["mean"]).all()
    # per-class means agree with a direct computation
    u = idata.posterior["units"].values
    lab = idata.constant_data["label"].values
    assert cs.loc["total[1]", "mean"] == pytest.approx(u[:, :, lab == 1].sum(-1).mean(), abs=1e-3)
    axes = az.plot_forest(D.class_units(idata), var_names=["total"], combined=True)
    assert len(axes[0].get_yticklabels()) == 3
    matplotlib.pyplot.close("all")
    path = tmp_path / "idata.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    for group in idata.groups():
        for name, var in getattr(idata, group).data_vars.items():
            np.testing.assert_array_equal(getattr(back, group)[name].values, var.values)
    for key in ("prior", "tau", "guide", "temperature", "depth", "units_per_block", "threshold"):
        assert back.attrs[key] == idata.attrs[key]


def test_tables_and_predictive_checks(idata):
    t = D.units_table(idata)
    assert list(t.index) == [0, 1, 2, "all"]
    assert t.loc["all", "count"] == 24
    thr = idata.constant_data["thresholded_units"].values
    assert t.loc["all", "total"] == pytest.approx(thr.sum(1).mean())
    pc = D.predictive_checks(idata)
    y = idata.observed_data["y"].values
    assert pc["accuracy_thresholded"] == pytest.approx(
        (idata.constant_data["thresholded_pred"].values == y).mean()
    )
    ll = idata.log_likelihood["y"].values.reshape(12, 24)
    assert pc["lpd"] == pytest.approx(np.log(np.exp(ll).mean(0)).mean(), rel=1e-6)
    assert 0 <= pc["ece"] <= 1 and 0 < pc["flops_ratio_thresholded"] <= 1
    r = D.reliability(idata, bins=5)
    assert r["count"].sum() == 24


def test_rank_matches_scipy_spearman():
    scipy_stats = pytest.importorskip("scipy.stats")
    a = np.array([3, 1, 2, 2, 5, 5, 5, 0], dtype=float)
    b = np.array([0.1, 0.4, 0.3, 0.2, 0.9, 0.7, 0.8, 0.0])
    rho = np.corrcoef(D._rank(a), D._rank(b))[0, 1]
    assert rho == pytest.approx(scipy_stats.spearmanr(a, b).statistic, abs=1e-12)


def test_bad_arguments_are_named():
    model, guide = _pair()
    x, y = _data(4)
    with pytest.raises(ValueError, match="num_samples"):
        D.to_inference_data(model, guide, (x, y), num_samples=0)
    with pytest.raises(ValueError, match="same length"):
        D.to_inference_data(model, guide, (x, y[:3]))
    with pytest.raises(TypeError, match="data must be"):
        D.to_inference_data(model, guide, x)


def test_extreme_examples_break_ties_by_the_guides_expected_units(idata):
    """Fewest/most-unit images: by thresholded units, ties by E_q[N | x]; when every image runs the same units
    (PACT at τ ≥ 0.1 on CIFAR-10) the order is the expected units' alone, not the test set's."""
    total = idata.constant_data["thresholded_units"].values.sum(1)
    expected = D.expected_units(idata).sum(1)
    order = P.extreme_order(idata)
    assert sorted(order.tolist()) == list(range(len(total)))
    keys = list(zip(total[order], expected[order], strict=True))
    assert keys == sorted(keys)
    same = idata.copy()
    same.constant_data["thresholded_units"][:] = 1  # every image the same units
    np.testing.assert_array_equal(P.extreme_order(same), np.argsort(expected, kind="stable"))
    np.testing.assert_array_equal(idata.constant_data["thresholded_units"].values.sum(1), total)  # a copy
    assert len(np.unique(expected)) > len(expected) // 2  # the tie-break has something to rank by


def test_plots_render(idata, tmp_path):
    images = torch.randint(0, 255, (24, 1, 8, 8), dtype=torch.uint8)
    figs = [
        P.plot_units_histogram(idata),
        P.plot_halting_probabilities(idata),
        P.plot_class_units(idata),
        P.plot_reliability(idata),
        P.plot_units_vs_entropy(idata),
        P.plot_extreme_examples(idata, images, k=4),
    ]
    csv = tmp_path / "sweep.csv"
    csv.write_text(
        "method,tau,accuracy,flops_ratio\npact,0.01,0.99,0.8\npact,0.1,0.97,0.5\nact,0.01,0.98,0.7\n"
    )
    figs.append(P.plot_tradeoff(P.read_sweep([csv])))
    seeds = tmp_path / "seeds.csv"  # two seeds of one PACT model (error bars), other thresholds, a variant
    seeds.write_text(
        "method,variant,depth,tau,seed,threshold,accuracy,flops_mean\n"
        "pact,,20,0.1,0,0.5,0.60,5e7\npact,,20,0.1,1,0.5,0.62,5.2e7\npact,,20,0.1,0,0.3,0.58,4e7\n"
        "pact,relaxed,20,0.1,0,0.5,0.55,6e7\npact,relaxed,20,0.1,1,0.5,0.57,6.2e7\n"
        "plain,,8,,0,,0.5,2.4e7\nplain,,14,,0,,0.55,5.3e7\n"
    )
    fig = P.plot_tradeoff(P.read_sweep(seeds))
    many = tmp_path / "many.csv"  # five methods' lines and seven variants: eleven colours, none repeated
    many.write_text(
        "method,variant,depth,tau,accuracy,flops_mean\n"
        + "".join(f"{m},,20,0.1,0.6,5e7\n" for m in ("act", "pact", "sact", "spatial-pact"))
        + "plain,,20,,0.6,8e7\n"
        + "".join(f"pact,v{k},20,0.1,0.55,6e7\n" for k in range(7))
    )
    many_ax = P.plot_tradeoff(P.read_sweep(many)).axes[0]
    colours = [matplotlib.colors.to_hex(c.lines[0].get_color()) for c in many_ax.containers]
    assert len(colours) == 12 and len(set(colours)) == 12
    many_ax.figure.canvas.draw()  # twelve legend entries: the legend sits right of the axes, off the data
    legend_box = many_ax.get_legend().get_window_extent()
    assert legend_box.x0 > many_ax.get_window_extent().x1
    assert fig_legend_inside(P.plot_tradeoff(P.read_sweep(csv)).axes[0])  # a short one stays inside
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert sorted(labels) == ["pact", "pact τ=0.1, relaxed", "pact, thresholds ≠ 0.5", "plain"]
    notes = sorted(t.get_text() for t in ax.texts)
    assert notes == ["d14", "d8", "τ=0.1"]  # the two seeds are one point, the variant is not annotated
    variant_bar = ax.containers[-1]  # the variant's two seeds: one point at their mean, with error bars
    np.testing.assert_allclose(variant_bar.lines[0].get_xydata(), [[61.0, 56.0]])
    figs.append(fig)
    for i, fig in enumerate(figs):
        fig.savefig(tmp_path / f"{i}.png")
        assert (tmp_path / f"{i}.png").stat().st_size > 5000
    matplotlib.pyplot.close("all")
    with pytest.raises(ValueError, match="accuracy"):
        (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
        P.read_sweep(tmp_path / "bad.csv")


def fig_legend_inside(ax) -> bool:
    ax.figure.canvas.draw()
    box, frame = ax.get_legend().get_window_extent(), ax.get_window_extent()
    return frame.x0 <= box.x0 and box.x1 <= frame.x1


def test_tradeoff_variant_curve_and_floor(tmp_path):
    import matplotlib

    csv = tmp_path / "sweep.csv"  # a variant at two τ (one dashed line), one at a single τ, a collapsed point
    csv.write_text(
        "method,variant,depth,tau,seed,accuracy,flops_mean\n"
        "plain,,8,,0,0.83,2.4e7\nplain,,20,,0,0.88,8e7\n"
        "act,,20,0.4,0,0.85,4.5e7\nact,,20,0.8,0,0.71,2.5e7\n"
        "act,long,20,0.4,0,0.87,4.7e7\nact,long,20,0.2,0,0.875,5.6e7\nact,long,20,0.2,1,0.865,5.4e7\n"
        "pact,long,20,0.1,0,0.872,5.1e7\n"
    )
    ax = P.plot_tradeoff(P.read_sweep(csv), y_floor=80.0).axes[0]
    by_label = dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    curve = by_label["act, long"].lines[0]  # τ 0.4, then τ 0.2 at its two seeds' mean, in FLOP order
    np.testing.assert_allclose(curve.get_xydata(), [[47.0, 87.0], [55.0, 87.0]])
    assert curve.get_linestyle() == "--"
    np.testing.assert_allclose(by_label["pact τ=0.1, long"].lines[0].get_xydata(), [[51.0, 87.2]])
    assert ax.get_ylim()[0] == 80.0
    notes = [t.get_text() for t in ax.texts]
    assert "act τ=0.8: 71.0 % (below the axis)" in notes
    assert sum("below the axis" in n for n in notes) == 1
    assert {"τ=0.4", "τ=0.2"} <= set(notes)  # the dashed line's points carry their τ
    free = P.plot_tradeoff(P.read_sweep(csv)).axes[0]  # no floor: every point inside the axes
    assert free.get_ylim()[0] < 71.0
    matplotlib.pyplot.close("all")


def test_report_cli_on_a_tiny_mnist_run(data_root, tmp_path):
    from pact_pyro.cli import main
    from pact_pyro.train import TrainConfig, train

    cfg = TrainConfig(
        depth=14, train_subset=128, epochs=1, batch_size=64, data_root=str(data_root), device="cpu"
    )
    run = train(cfg, tmp_path / "run", progress=False)
    (tmp_path / "sweep.csv").write_text(
        "method,tau,accuracy,flops_ratio\npact,0.01,0.9,0.8\npact,0.1,0.8,0.5\n"
    )
    code = main(
        [
            "report",
            str(run),
            "--test-subset",
            "40",
            "--num-samples",
            "2",
            "--sweep",
            str(tmp_path / "sweep.csv"),
        ]
    )
    assert code == 0
    out = run / "report"
    for name in (
        "units_histogram",
        "halting_probabilities",
        "class_units",
        "reliability",
        "units_vs_entropy",
        "extreme_examples",
        "tradeoff",
    ):
        assert (out / f"{name}.png").stat().st_size > 5000, name
    md = (out / "summary.md").read_text()
    assert (
        "accuracy (thresholded h ≥ 0.5)" in md
        and "![Units per class (az.plot_forest)](class_units.png)" in md
    )
    assert '<img src="units_histogram.png"' in (out / "index.html").read_text()
    back = az.from_netcdf(str(out / "inference_data.nc"))
    assert back.posterior["units"].shape == (1, 2, 40, 3)
    assert back.attrs["run_dir"] == str(run.resolve())
    diag = json.loads((out / "diagnostics.json").read_text())
    assert 0 <= diag["predictive"]["accuracy_thresholded"] <= 1
