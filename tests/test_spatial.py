"""Spatial PACT and SACT: the per-position prior, training semantics = test-time semantics, thresholding,
SACT = act_halting per position, FLOPs by SACT's spatial rules."""

from __future__ import annotations

import pyro
import pytest
import torch
from pact_pyro.guides import get_guide
from pact_pyro.models import SACTResNet, SpatialPACTResNet, sact_resnet, spatial_pact_resnet
from pyro import poutine
from torch.utils.flop_counter import FlopCounterMode

from pact_pyro.flops import FlopTable
from pact_pyro.halting import act_halting, stick_breaking, threshold_units
from pact_pyro.nn import ResNetBackbone, SpatialHaltingHead
from pact_pyro.objective import MAPObjective
from pact_pyro.priors import CategoricalUnits, HaltingPrior, TruncatedGeometric, TruncatedPoisson
from pact_pyro.sites import unit_halting_site
from pact_pyro.spatial_evaluate import sact_evaluate, spatial_flops, spatial_threshold
from pact_pyro.spatial_sparse import frozen_forward
from pact_pyro.threshold import threshold


def _randomize(*modules: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so eval mode is not the identity."""
    g = torch.Generator().manual_seed(seed)
    for root in modules:
        for m in root.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.data.copy_(1 + 0.2 * torch.randn(c, generator=g))
                m.bias.data.copy_(0.2 * torch.randn(c, generator=g))


def _spread_heads(heads, seed: int = 1) -> None:
    """Spatial heads whose decisions vary over positions (bias near 0, a strong local term)."""
    g = torch.Generator().manual_seed(seed)
    for hb in heads:
        for h in hb:
            h.local_conv.weight.data.copy_(torch.randn(h.local_conv.weight.shape, generator=g))
            h.local_conv.bias.data.fill_(0.0)


@pytest.mark.parametrize(
    "prior", [TruncatedGeometric(0.3), TruncatedPoisson(1.5), CategoricalUnits([0.5, 0.05, 0.15, 0.3])]
)
def test_hazard_chain_equals_relaxed_prior(prior):
    """Σ_l log p(z^l | z^{<l}) = Σ_l w_l log p(N = l) = HaltingPrior.log_prob, relaxed and binary z."""
    L = 4
    g = torch.Generator().manual_seed(0)
    z = torch.rand(500, L - 1, generator=g, dtype=torch.float64)
    z[:100] = (z[:100] > 0.5).double()
    e = torch.ones(500, dtype=torch.float64)
    chain = torch.zeros(500, dtype=torch.float64)
    for l in range(1, L):
        chain = chain + prior.hazard_site(l, L, e).log_prob(z[:, l - 1])
        e = e * (1 - z[:, l - 1])
    ref = HaltingPrior(prior.log_probs(L)).log_prob(z)
    torch.testing.assert_close(chain, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(ref, (stick_breaking(z) * prior.log_probs(L)).sum(-1))


def test_hazard_chain_with_impossible_counts():
    """p(N = 2) = 0: the chain scores binary z with N = 2 as -inf and the others exactly (0·log 0 = 0)."""
    prior = CategoricalUnits([0.5, 0.0, 0.2, 0.3])
    z = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=torch.float64)  # N = 1, 2, 3, 4
    e = torch.ones(4, dtype=torch.float64)
    chain = torch.zeros(4, dtype=torch.float64)
    for l in range(1, 4):
        chain = chain + prior.hazard_site(l, 4, e).log_prob(z[:, l - 1])
        e = e * (1 - z[:, l - 1])
    want = prior.log_probs(4)
    assert chain[1] == -float("inf")
    torch.testing.assert_close(chain[[0, 2, 3]], want[[0, 2, 3]], atol=1e-12, rtol=0)


def test_hazard_site_rejects_bad_unit():
    with pytest.raises(ValueError, match="l must be in 1..3"):
        TruncatedGeometric(0.1).hazard_site(4, 4, torch.ones(2))


def _binary_z(maps, L):
    """Per-unit halting values ``z^l(i, j) = 1[N(i, j) = l]`` for unit-count maps."""
    return {unit_halting_site(b, l - 1): (n == l).double() for b, n in enumerate(maps) for l in range(1, L)}


def test_prior_at_binary_z_is_mean_log_p_of_n():
    """The z sites' scaled log-probability = Σ_b mean_ij log p(N_b(i, j)) (SACT's averaging)."""
    torch.manual_seed(0)
    prior = TruncatedPoisson(1.3)
    model = spatial_pact_resnet(20, prior=prior).double()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    shapes = [(3, 8, 8), (3, 4, 4), (3, 2, 2)]
    maps = [torch.randint(1, 4, s) for s in shapes]
    tr = poutine.trace(poutine.condition(model.model, data=_binary_z(maps, 3))).get_trace(x)
    tr.compute_log_prob()
    got = sum(tr.nodes[n]["log_prob"] for n in tr.nodes if n.startswith("z_"))  # [B], scaled by 1/(HW)
    want = sum(prior.log_prob(n, 3).reshape(3, -1).mean(1) for n in maps)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    units = torch.stack([tr.nodes[f"units_map_{b}"]["value"] for b in range(3)][:1])
    assert torch.equal(units[0], maps[0].double())  # Ñ(i, j) = N(i, j) at binary z


def test_model_at_binary_z_equals_frozen_evaluation():
    """The training program at hard z computes exactly what the frozen test-time network computes."""
    torch.manual_seed(0)
    model = spatial_pact_resnet(20).double().eval()
    _randomize(model.backbone)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    maps = [torch.randint(1, 4, s) for s in [(4, 8, 8), (4, 4, 4), (4, 2, 2)]]
    tr = poutine.trace(poutine.condition(model.model, data=_binary_z(maps, 3))).get_trace(x)
    logits = tr.nodes["y"]["fn"].logits
    ref = frozen_forward(model.backbone, x, maps, sparse=False)
    torch.testing.assert_close(logits, torch.log_softmax(ref, -1), atol=1e-12, rtol=0)


def _thresholded_reference(model, guide, x, t):
    """Dense loop: every head everywhere; a running position halts at the first h ≥ t."""
    net = model.backbone
    maps = []
    with torch.no_grad():
        u = net.stem(x)
        for b, block in enumerate(net.blocks):
            u = block[0](u)
            L = len(block)
            running = torch.ones(u.shape[0], *u.shape[2:], dtype=torch.bool)
            n = torch.full(running.shape, L)
            for l in range(1, L):
                h = torch.sigmoid(guide.heads[b][l - 1](u))
                stop = running & (h >= t)
                n[stop] = l
                running &= ~stop
                u = u + running.unsqueeze(1).to(u.dtype) * block[l].residual(u)
            maps.append(n)
    return net.classifier(u), maps


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("t", [0.3, 0.5, 0.8])
def test_spatial_threshold_equals_masked_forward(sparse, t):
    torch.manual_seed(0)
    model = spatial_pact_resnet(20)
    guide = get_guide("relaxed", model)
    _randomize(model.backbone, guide)
    _spread_heads(guide.heads)
    model.eval()
    guide.eval()
    x = torch.randn(6, 3, 16, 16)
    r = spatial_threshold(model, guide, x, threshold=t, sparse=sparse)
    ref_logits, ref_maps = _thresholded_reference(model, guide, x, t)
    for got, want in zip(r.maps, ref_maps, strict=True):
        assert torch.equal(got, want)
    torch.testing.assert_close(r.logits, ref_logits, atol=1e-5, rtol=0)
    frozen = frozen_forward(model.backbone, x, r.maps, sparse=False)  # SACT's masked full forward
    torch.testing.assert_close(r.logits, frozen, atol=1e-5, rtol=0)
    counts = torch.cat([m.flatten() for m in r.maps]).unique()
    assert len(counts) >= 2, "the test needs position-dependent decisions"
    assert torch.equal(r.units, torch.stack([m.flatten(1).double().mean(1) for m in r.maps], -1))
    # the dispatcher, chunked evaluation and a single image give the same answers
    r2 = threshold(model, guide, x, t, chunk_size=4)
    torch.testing.assert_close(r2.logits, r.logits, atol=1e-5, rtol=0)
    r1 = spatial_threshold(model, guide, x[2:3], threshold=t, sparse=sparse)
    torch.testing.assert_close(r1.logits, r.logits[2:3], atol=1e-5, rtol=0)
    assert torch.equal(r1.flops, r.flops[2:3])


def _sact_reference(model, x):
    """SACT by hand: dense frozen forward, act_halting on the stacked per-position h, Σ_l p^l ũ^l."""
    net = model.backbone
    with torch.no_grad():
        u = net.stem(x)
        maps = []
        for b, block in enumerate(net.blocks):
            u = block[0](u)
            states, hs = [u], []
            s = torch.zeros(u.shape[0], *u.shape[2:])
            for l in range(1, len(block)):
                h = torch.sigmoid(model.heads[b][l - 1](u))
                hs.append(h)
                s = s + h
                u = u + (s < 1 - model.eps).unsqueeze(1).to(u.dtype) * block[l].residual(u)
                states.append(u)
            r = act_halting(torch.stack(hs, -1), model.eps)
            u = torch.einsum("bhwl,blchw->bchw", r.weights, torch.stack(states, 1))
            maps.append(r.units)
    return net.classifier(u), maps


def test_sact_evaluation_is_act_per_position():
    torch.manual_seed(0)
    model = sact_resnet(20, tau=0.01)
    _randomize(model.backbone, model.heads)
    _spread_heads(model.heads)
    model.eval()
    x = torch.randn(5, 3, 16, 16)
    ref_logits, ref_maps = _sact_reference(model, x)
    for sparse in (False, True):
        r = sact_evaluate(model.backbone, model.heads, x, model.eps, sparse=sparse)
        for got, want in zip(r.maps, ref_maps, strict=True):
            assert torch.equal(got, want)
        torch.testing.assert_close(r.logits, ref_logits, atol=1e-5, rtol=0)
    assert len(torch.cat([m.flatten() for m in r.maps]).unique()) >= 2
    # the training program (eval-mode BatchNorm) computes the same network
    tr = poutine.trace(model.model).get_trace(x)
    want = torch.log_softmax(ref_logits, -1)
    torch.testing.assert_close(tr.nodes["y"]["fn"].logits, want, atol=1e-5, rtol=0)
    assert torch.equal(tr.nodes["units_map_0"]["value"], ref_maps[0].float())
    assert isinstance(model, SACTResNet) and isinstance(model.heads[0][0], SpatialHaltingHead)


def test_spatial_flops_by_hand():
    """One block of L = 3 units, 4 channels, 6×6 input: every conv counted by SACT's rules."""
    net = ResNetBackbone([3], widths=(4,), in_channels=1, num_classes=2).eval()
    heads = [[SpatialHaltingHead(4), SpatialHaltingHead(4)]]
    table = FlopTable.measure(net, (1, 6, 6), heads)
    n = torch.ones(1, 6, 6, dtype=torch.int64)
    n[0, 0, 0] = 3  # A_2 = A_3 = {(0, 0)}: dilated to the 2×2 corner
    n[0, 4, 4] = 2  # A_2 also holds (4, 4): dilated to a 3×3 square
    conv = 2 * 9 * 4 * 4  # per output position of a 4 → 4 3×3 conv
    head = 2 * 9 * 4  # local 3×3 conv to one channel, per position
    want = (
        2 * 9 * 1 * 4 * 36  # stem
        + 2 * conv * 36  # unit 1, in full
        + head * 36
        + 2 * 4  # head 1 everywhere (+ the global linear term)
        + conv * (4 + 9)
        + conv * 2  # unit 2: conv1 on the dilated A_2 (4 + 9 positions), conv2 on A_2
        + head * 2
        + 2 * 4  # head 2 at A_2
        + conv * 4
        + conv * 1  # unit 3: conv1 on the dilated A_3 (the corner 2×2), conv2 on A_3
        + 2 * 4 * 2  # classifier
    )
    assert int(spatial_flops(net, heads, [n], table)) == want
    full = torch.full((1, 6, 6), 3)
    assert int(spatial_flops(net, heads, [full], table)) == table.full
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        u = net.stem(torch.zeros(1, 1, 6, 6))
        for unit, h in zip(net.blocks[0], heads[0] + [None], strict=True):
            u = unit(u)
            if h is not None:
                h.eval()(u)
        net.classifier(u)
    assert counter.get_total_flops() == table.full


@pytest.mark.parametrize("guide_name", ["relaxed", "straight-through"])
def test_spatial_pact_trains_heads_and_network(guide_name):
    """SVI with the MAP objective: gradients reach the spatial heads; a few steps fit a small batch."""
    torch.manual_seed(0)
    pyro.clear_param_store()
    model = spatial_pact_resnet(14, prior=TruncatedGeometric(0.05))
    guide = get_guide(guide_name, model)
    assert isinstance(model, SpatialPACTResNet) and guide.spatial
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    svi = pyro.infer.SVI(model.model, guide, pyro.optim.Adam({"lr": 1e-2}), loss=MAPObjective())
    losses = [svi.step(x, y) for _ in range(15)]
    assert losses[-1] < losses[0] - 1.0
    before = guide.heads[0][0].local_conv.weight.detach().clone()
    svi.step(x, y)
    assert not torch.equal(before, guide.heads[0][0].local_conv.weight)


def test_sact_trains():
    torch.manual_seed(0)
    pyro.clear_param_store()
    model = sact_resnet(14, tau=0.05)
    from pact_pyro.guides import EmptyGuide

    svi = pyro.infer.SVI(model.model, EmptyGuide(model), pyro.optim.Adam({"lr": 1e-2}), loss=MAPObjective())
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    before = model.heads[1][0].local_conv.weight.detach().clone()
    losses = [svi.step(x, y) for _ in range(15)]
    assert losses[-1] < losses[0] - 1.0
    assert not torch.equal(before, model.heads[1][0].local_conv.weight)


def test_threshold_units_matches_first_halt_per_position():
    """At each position the decided N is the non-spatial rule threshold_units of the h it saw."""
    torch.manual_seed(0)
    model = spatial_pact_resnet(20)
    guide = get_guide("relaxed", model)
    _spread_heads(guide.heads)
    model.eval()
    guide.eval()
    x = torch.randn(2, 3, 8, 8)
    r = spatial_threshold(model, guide, x, sparse=False)
    # recompute h along the frozen states of the decided maps
    net = model.backbone
    with torch.no_grad():
        u = net.stem(x)
        for b, block in enumerate(net.blocks):
            u = block[0](u)
            hs = []
            for l in range(1, len(block)):
                hs.append(torch.sigmoid(guide.heads[b][l - 1](u)))
                u = u + (r.maps[b] > l).unsqueeze(1).to(u.dtype) * block[l].residual(u)
            n = threshold_units(torch.stack(hs, -1))
            assert torch.equal(n, r.maps[b])
