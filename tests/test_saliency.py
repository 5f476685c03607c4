"""Ponder-cost maps and saliency: closed-form input gradients, exact rank correlations, the map helpers and
their figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pact_pyro.saliency import gradient_saliency, map_saliency_correlation, units_map_std

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from pact_pyro import plots as P  # noqa: E402


def _linear(C: int = 2, H: int = 3, W: int = 4, K: int = 5, seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(C * H * W, K))


def test_gradient_saliency_of_a_linear_model_is_the_weight_row_norm():
    """f(x) = W vec(x) + b: ∂f_k/∂x = W_k, so the saliency is ‖W_k[:, i, j]‖ over channels, k the argmax."""
    net = _linear()
    x = torch.randn(6, 2, 3, 4)
    sal = gradient_saliency(net, x)
    weight = net[1].weight.detach().view(5, 2, 3, 4)
    k = net(x).argmax(-1)
    torch.testing.assert_close(sal, weight[k].norm(dim=1), rtol=0, atol=1e-6)
    assert sal.shape == (6, 3, 4) and sal.dtype == x.dtype
    target = torch.tensor([0, 1, 2, 3, 4, 0])  # an explicit class instead of the prediction
    torch.testing.assert_close(
        gradient_saliency(net, x, target), weight[target].norm(dim=1), rtol=0, atol=1e-6
    )
    assert all(p.grad is None for p in net.parameters())  # parameter gradients untouched


def test_gradient_saliency_runs_in_eval_mode_and_restores_flags():
    """A BatchNorm in training mode: the gradient uses its running statistics (eval mode), γ / sqrt(σ² + ε)
    per channel, does not update them, and the module is back in training mode afterwards."""
    net = torch.nn.Sequential(torch.nn.BatchNorm2d(2), *_linear())
    bn = net[0]
    with torch.no_grad():
        bn.running_var.copy_(torch.tensor([4.0, 0.25]))
        bn.running_mean.copy_(torch.tensor([1.0, -1.0]))
        bn.weight.copy_(torch.tensor([2.0, -3.0]))
    net.train()
    x = torch.randn(5, 2, 3, 4)
    with torch.no_grad():  # works inside no_grad too
        sal = gradient_saliency(net, x, batch_size=2)
    assert net.training and bn.training
    assert torch.equal(bn.running_var, torch.tensor([4.0, 0.25]))
    net.eval()
    k = net(x).argmax(-1)
    scale = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().view(1, 2, 1, 1)
    expected = (net[2].weight.detach().view(5, 2, 3, 4)[k] * scale).norm(dim=1)
    torch.testing.assert_close(sal, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gradient_saliency(net, x), sal, rtol=1e-6, atol=1e-7)  # chunks agree


def test_gradient_saliency_bad_arguments():
    net = _linear()
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        gradient_saliency(net, torch.randn(2, 24))
    with pytest.raises(ValueError, match="target"):
        gradient_saliency(net, torch.randn(2, 2, 3, 4), torch.tensor([0]))
    with pytest.raises(ValueError, match="batch_size"):
        gradient_saliency(net, torch.randn(2, 2, 3, 4), batch_size=0)


def _maps(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).view(len(rows), 2, 2)


def test_correlation_with_itself_its_negation_and_constant_maps():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(3, 10, (8, 6, 6), generator=g)  # integer maps: many ties
    one = map_saliency_correlation(a, a)
    torch.testing.assert_close(one, torch.ones(8, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(map_saliency_correlation(a, -a), -one, rtol=0, atol=1e-12)
    s = torch.rand(8, 6, 6, generator=g)
    torch.testing.assert_close(  # ranks only: invariant to strictly increasing transforms
        map_saliency_correlation(a, s), map_saliency_correlation(a.double() ** 3, s.exp()), rtol=0, atol=1e-12
    )
    const = torch.full((2, 6, 6), 3)
    assert map_saliency_correlation(const, s[:2]).isnan().all()
    r = map_saliency_correlation(torch.cat([const, a[:1]]), s[:3])
    assert r[:2].isnan().all() and r[2].isfinite()


def test_correlation_hand_cases():
    # no ties: Spearman = 1 - 6 Σ d² / (n (n² - 1)) = 1 - 6·2 / 60 = 0.8
    r = map_saliency_correlation(_maps([1, 2, 3, 4]), _maps([1, 3, 2, 4]))
    assert r.item() == pytest.approx(0.8, abs=1e-12)
    # ties: ranks (1.5, 1.5, 3.5, 3.5) against (1, 2, 3, 4): 4 / sqrt(4 · 5) = 2 / sqrt(5)
    r = map_saliency_correlation(_maps([1, 1, 2, 2], [2, 2, 1, 1]), _maps([10, 20, 30, 40], [10, 20, 30, 40]))
    torch.testing.assert_close(
        r, torch.tensor([2, -2], dtype=torch.float64) / math.sqrt(5), rtol=0, atol=1e-12
    )


def test_correlation_matches_scipy_spearman():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 4, (5, 4, 5), generator=g)
    b = torch.randint(0, 6, (5, 4, 5), generator=g).float()
    r = map_saliency_correlation(a, b)
    want = [stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic for i in range(5)]
    np.testing.assert_allclose(r.numpy(), want, rtol=0, atol=1e-12)


def test_correlation_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        map_saliency_correlation(torch.zeros(2, 4, 4), torch.zeros(2, 2, 2))


def _block_maps() -> list[torch.Tensor]:
    """Two images, blocks at 4x4 (L = 2) and 2x2 (L = 3)."""
    b1 = torch.ones(2, 4, 4, dtype=torch.int64)
    b1[1, :2, :2] = 2
    b2 = torch.tensor([[[1, 2], [3, 1]], [[3, 3], [3, 3]]])
    return [b1, b2]


def test_ponder_map_is_the_sum_of_nearest_upsampled_blocks():
    maps = _block_maps()
    total = P.ponder_map(maps, 4)
    up = maps[1].repeat_interleave(2, 1).repeat_interleave(2, 2)
    torch.testing.assert_close(total, (maps[0] + up).float(), rtol=0, atol=0)
    assert total.shape == (2, 4, 4) and total.dtype == torch.float32
    assert 2 <= total.min() and total.max() <= 2 + 3
    torch.testing.assert_close(P.ponder_map(maps, (8, 4))[:, ::2], total, rtol=0, atol=0)
    with pytest.raises(ValueError, match="at least one"):
        P.ponder_map([], 4)


def test_units_map_std():
    std = units_map_std(_block_maps())
    # image 0: block 1 uniform, block 2 (1, 2, 3, 1): mean 7/4, var (9 + 1 + 25 + 9) / 64 = 11/16
    # image 1: block 1 four 2s among 16 (var 3/16), block 2 uniform
    want = torch.tensor([[0.0, math.sqrt(11 / 16)], [math.sqrt(3 / 16), 0.0]], dtype=torch.float64)
    torch.testing.assert_close(std, want, rtol=0, atol=1e-12)
    assert int((units_map_std([m[:1].expand(3, -1, -1) for m in _block_maps()[::-1]]) == 0).all(1).sum()) == 0
    assert int((units_map_std([torch.full((3, 2, 2), 2)]) == 0).all(1).sum()) == 3


def test_ponder_figures_render(tmp_path):
    maps = _block_maps()
    total = P.ponder_map(maps, 4)
    rgb = torch.randn(2, 3, 4, 4)
    gray = torch.randint(0, 255, (2, 1, 4, 4), dtype=torch.uint8)
    figs = [
        P.plot_ponder_maps(rgb, maps, titles=["a", "b"], units_per_block=[2, 3], suptitle="t"),
        P.plot_ponder_maps(gray, total, overlay=True),
        P.plot_ponder_maps(gray[:1], torch.full((1, 4, 4), 2.0)),  # a constant map: still a colour range
        P.plot_class_ponder_maps(total, torch.tensor([0, 2]), ["zero", "one", "two"]),
        P.plot_class_ponder_maps(total, torch.tensor([1, 1])),
        P.plot_map_statistics(units_map_std(maps), map_saliency_correlation(total, torch.rand(2, 4, 4))),
        P.plot_map_statistics(
            {"A": units_map_std(maps), "B": units_map_std(maps[::-1])},
            {"A": torch.tensor([0.5, float("nan")]), "B": torch.tensor([-0.2, 0.1])},
        ),
    ]
    fig = figs[3]
    titles = [ax.get_title() for ax in fig.axes]
    assert "one (n=0)" in titles and any(t.startswith("two (n=1)") for t in titles)
    for i, fig in enumerate(figs):
        fig.savefig(tmp_path / f"{i}.png")
        assert (tmp_path / f"{i}.png").stat().st_size > 3000
    matplotlib.pyplot.close("all")
    with pytest.raises(ValueError, match="cover"):
        P.plot_ponder_maps(rgb[:1], maps)
    with pytest.raises(ValueError, match="same models"):
        P.plot_map_statistics({"A": units_map_std(maps)}, {"B": torch.zeros(2)})
