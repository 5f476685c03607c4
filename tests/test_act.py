"""ACT halting (hand-computed cases), ACT evaluation with early exit, and the ACT / plain Pyro models."""

from __future__ import annotations

import json

import numpy as np
import pyro
import pytest
import torch
import torch.nn.functional as F
from pact_pyro.guides import EmptyGuide
from pact_pyro.models import ACTResNet, PlainResNet

from pact_pyro import MAPObjective
from pact_pyro.act_evaluate import act_evaluate
from pact_pyro.flops import FlopTable
from pact_pyro.halting import act_halting
from pact_pyro.nn import ResNetBackbone
from pact_pyro.threshold import threshold

F32 = torch.float32


def t32(*v):
    return torch.tensor(v, dtype=F32)


def check(r, n, remainder, weights, ponder):
    assert r.units.tolist() == n
    torch.testing.assert_close(r.remainder, torch.tensor(remainder, dtype=F32), rtol=0, atol=1e-7)
    torch.testing.assert_close(r.weights, torch.tensor(weights, dtype=F32), rtol=0, atol=1e-7)
    torch.testing.assert_close(r.ponder_cost, torch.tensor(ponder, dtype=F32), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- act_halting: hand-computed cases


def test_exact_tie_at_one_minus_eps_halts():
    # float32(0.99) >= float32(1 - 0.01): a tie halts (>=, not >)
    check(act_halting(t32(0.99)), 1, 1.0, [1.0, 0.0], 2.0)
    # float32: 0.25 + 0.74 == float32(0.99) exactly
    assert np.float32(0.25) + np.float32(0.74) == np.float32(0.99)
    check(act_halting(t32(0.25, 0.74)), 2, 0.75, [0.25, 0.75, 0.0], 2.75)


def test_just_below_the_tie_runs_on():
    below = float(np.nextafter(np.float32(0.74), np.float32(0)))
    r = act_halting(t32(0.25, below))
    s2 = np.float32(0.25) + np.float32(below)
    assert s2 < np.float32(0.99)
    rem = float(np.float32(1) - s2)
    check(r, 3, rem, [0.25, below, rem], 3 + rem)


def test_sum_never_reaches_one_minus_eps():
    # S_3 = 0.6 < 0.99: halts at the last unit L = 4 with R = 1 - 0.6
    check(act_halting(t32(0.1, 0.2, 0.3)), 4, 0.4, [0.1, 0.2, 0.3, 0.4], 4.4)


def test_single_unit_block():
    r = act_halting(torch.zeros(3, 0))
    assert r.units.tolist() == [1, 1, 1]
    assert r.weights.shape == (3, 1) and r.weights.eq(1).all()
    assert r.remainder.eq(1).all() and r.ponder_cost.eq(2).all()


def test_two_unit_block():
    check(act_halting(t32(0.5)), 2, 0.5, [0.5, 0.5], 2.5)
    check(act_halting(t32(0.995)), 1, 1.0, [1.0, 0.0], 2.0)
    check(act_halting(t32(0.0)), 2, 1.0, [0.0, 1.0], 3.0)


def test_halting_at_first_unit_gives_remainder_one():
    check(act_halting(t32(0.995, 0.5, 0.5)), 1, 1.0, [1.0, 0.0, 0.0, 0.0], 2.0)


def test_overshoot_remainder_excludes_h_n():
    # S = 0.3, 0.7, 1.2: N = 3, R = 1 - 0.7 (h_3 = 0.5 is not in R), w_4 = 0
    check(act_halting(t32(0.3, 0.4, 0.5)), 3, 0.3, [0.3, 0.4, 0.3, 0.0], 3.3)


def test_running_sum_is_float32_even_for_float64_input():
    h = torch.tensor([0.99 - 1e-9], dtype=torch.float64)  # < 0.99 in float64, == float32(0.99) in float32
    r = act_halting(h)
    assert r.units.item() == 1 and r.weights.dtype == torch.float64
    assert act_halting(torch.tensor([0.99 - 1e-6], dtype=torch.float64)).units.item() == 2


def test_eps_zero_needs_a_full_sum():
    check(act_halting(t32(0.5, 0.5), eps=0.0), 2, 0.5, [0.5, 0.5, 0.0], 2.5)
    check(act_halting(t32(0.5, 0.4999), eps=0.0), 3, 1 - (0.5 + 0.4999), [0.5, 0.4999, 1 - 0.9999], 3.0001)


def _loop_reference(h: torch.Tensor, eps: float = 0.01):
    """Scalar ACT loop on one ``[L-1]`` vector (float32 running sum)."""
    hs = [np.float32(v) for v in h.tolist()] + [np.float32(1)]
    s = np.float32(0)
    w = [0.0] * len(hs)
    for n, hn in enumerate(hs, start=1):
        if s + hn >= np.float32(1 - eps) or n == len(hs):
            w[n - 1] = float(np.float32(1) - s)
            return n, float(np.float32(1) - s), w
        s = np.float32(s + hn)
        w[n - 1] = float(hn)


@pytest.mark.parametrize("shape", [(7,), (2, 3, 4)])
def test_batch_shapes_match_the_scalar_loop(shape):
    g = torch.Generator().manual_seed(1)
    h = torch.rand(shape + (4,), generator=g) ** 3  # L = 5, mixes early and late halting
    h[(0,) * len(shape)] = t32(0.2, 0.79, 0.0, 0.0)  # an exact tie in the batch
    r = act_halting(h)
    assert r.units.shape == shape and r.remainder.shape == shape and r.weights.shape == shape + (5,)
    flat_h, flat_w = h.reshape(-1, 4), r.weights.reshape(-1, 5)
    for i, (n, rem, w) in enumerate(map(_loop_reference, flat_h)):
        assert r.units.reshape(-1)[i].item() == n
        assert r.remainder.reshape(-1)[i].item() == pytest.approx(rem, abs=1e-7)
        torch.testing.assert_close(flat_w[i], torch.tensor(w), rtol=0, atol=1e-7)
    torch.testing.assert_close(r.weights.sum(-1), torch.ones(shape), rtol=0, atol=1e-6)
    assert r.units.reshape(-1)[0].item() == 2 and len(set(r.units.reshape(-1).tolist())) > 1


def test_ponder_cost_gradient_is_minus_one_before_n():
    h = t32(0.3, 0.4, 0.5)
    h = torch.stack([h, t32(0.995, 0.1, 0.1), t32(0.1, 0.2, 0.3), t32(0.5, 0.49, 0.9)]).requires_grad_()
    r = act_halting(h)
    assert r.units.tolist() == [3, 1, 4, 2]  # 0.5 + 0.49 == float32(0.99): a tie
    r.ponder_cost.sum().backward()
    expect = [[-1, -1, 0], [0, 0, 0], [-1, -1, -1], [-1, 0, 0]]
    assert h.grad.tolist() == expect
    # weights: dw_l/dh_l = 1 for l < N, dw_N/dh_l = -1 for l < N: Σ_l w_l has zero gradient
    h.grad = None
    act_halting(h).weights.sum().backward()
    assert h.grad.abs().max().item() == 0


def test_ponder_cost_finite_difference_between_jumps():
    h = torch.tensor([0.2, 0.3, 0.1], dtype=torch.float64, requires_grad=True)
    rho = act_halting(h).ponder_cost
    (g,) = torch.autograd.grad(rho, h)
    d = 1e-6
    for i in range(3):
        hp = h.detach().clone()
        hp[i] += d
        fd = (act_halting(hp).ponder_cost - rho.detach()) / d
        assert fd.item() == pytest.approx(g[i].item(), abs=1e-6)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="eps"):
        act_halting(t32(0.5), eps=1.0)
    with pytest.raises(TypeError, match="h must be floating"):
        act_halting(torch.tensor([1]))
    with pytest.raises(ValueError, match="h must have"):
        act_halting(torch.tensor(0.5))


# ---------------------------------------------------------------- ACT evaluation with early exit


def tiny_act(units=(3, 2, 3), tau=0.05, std=3.0, seed=0) -> ACTResNet:
    model = ACTResNet(ResNetBackbone(list(units), (4, 8, 8), 1, 3), tau=tau)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # spread h so that examples halt at different units
        for block in model.heads:
            for head in block:
                head.linear.weight.copy_(torch.randn(head.linear.weight.shape, generator=g) * std)
                head.linear.bias.fill_(-0.5)
    return model


def act_reference(model: ACTResNet, x: torch.Tensor):
    """Every unit, every h, ACT weights from act_halting (no early exit); eval mode."""
    net = model.backbone
    model.eval()
    with torch.no_grad():
        u = net.stem(x)
        units = []
        for b, block in enumerate(net.blocks):
            states, hs = [], []
            for l, unit in enumerate(block):
                u = unit(u)
                states.append(u)
                if l < len(block) - 1:
                    hs.append(torch.sigmoid(model.heads[b][l](u)))
            r = act_halting(torch.stack(hs, -1) if hs else u.new_zeros(len(u), 0))
            u = (torch.stack(states, 1) * r.weights[:, :, None, None, None]).sum(1)
            units.append(r.units)
        logits = net.classifier(u)
    model.train()
    return logits, torch.stack(units, -1)


def test_act_evaluate_matches_the_masked_reference():
    model = tiny_act()
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    ref_logits, ref_units = act_reference(model, x)
    r = act_evaluate(model.backbone, model.heads, x)
    assert torch.equal(r.units, ref_units)
    torch.testing.assert_close(r.logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert len({tuple(u) for u in r.units.tolist()}) > 2  # the test exercises early exit
    table = FlopTable.measure(model.backbone, (1, 8, 8), model.heads)
    assert torch.equal(r.flops, table.flops(r.units))
    assert model.training  # modes restored
    # per example == batched (compaction does not mix examples)
    one = torch.cat([act_evaluate(model.backbone, model.heads, x[i : i + 1]).logits for i in range(4)])
    torch.testing.assert_close(one, r.logits[:4], rtol=1e-5, atol=1e-5)


def test_threshold_dispatches_to_the_model_rule():
    model = tiny_act()
    x = torch.randn(8, 1, 8, 8)
    r = threshold(model, EmptyGuide(model), x)
    ref = act_evaluate(model.backbone, model.heads, x)
    assert torch.equal(r.units, ref.units) and torch.equal(r.logits, ref.logits)
    with pytest.raises(ValueError, match="mode"):
        threshold(model, EmptyGuide(model), x, mode="sample")
    plain = PlainResNet(ResNetBackbone([2, 1, 2], (4, 8, 8), 1, 3))
    r = threshold(plain, EmptyGuide(plain), x)
    assert r.units.tolist() == [[2, 1, 2]] * 8
    plain.eval()
    torch.testing.assert_close(r.logits, plain.backbone(x))
    torch.testing.assert_close(threshold(plain, EmptyGuide(plain), x, chunk_size=3).logits, r.logits)
    c = threshold(model, EmptyGuide(model), x, chunk_size=3)
    assert torch.equal(c.units, ref.units)
    torch.testing.assert_close(c.logits, ref.logits)


# ---------------------------------------------------------------- the Pyro models and the MAP objective


def test_act_map_loss_is_ce_plus_tau_mean_ponder_cost():
    model = tiny_act(tau=0.07)
    guide = EmptyGuide(model)
    x = torch.randn(16, 1, 8, 8)
    y = torch.randint(0, 3, (16,))
    loss = MAPObjective().differentiable_loss(model.model, guide, x, y)
    # by hand, train mode (batch statistics), same weights
    net = model.backbone
    u = net.stem(x)
    ponder = 0.0
    for b, block in enumerate(net.blocks):
        states, hs = [], []
        for l, unit in enumerate(block):
            u = unit(u)
            states.append(u)
            if l < len(block) - 1:
                hs.append(torch.sigmoid(model.heads[b][l](u)))
        r = act_halting(torch.stack(hs, -1))
        u = (torch.stack(states, 1) * r.weights[:, :, None, None, None]).sum(1)
        ponder = ponder + r.ponder_cost.mean()
    expect = F.cross_entropy(net.classifier(u), y) + 0.07 * ponder
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)
    assert guide.trace.nodes["units_0"]["value"].shape == (16,)


def test_svi_step_trains_act_heads_and_plain_network():
    for model in (tiny_act(tau=0.5), PlainResNet(ResNetBackbone([2, 1, 2], (4, 8, 8), 1, 3))):
        pyro.clear_param_store()
        guide = EmptyGuide(model)
        svi = pyro.infer.SVI(model.model, guide, pyro.optim.Adam({"lr": 0.05}), loss=MAPObjective())
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
        loss = svi.step(x, y)
        assert np.isfinite(loss)
        moved = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
        assert any(k.startswith("backbone.stem") for k in moved)
        if isinstance(model, ACTResNet):
            assert any(k.startswith("heads.") and k.endswith("linear.bias") for k in moved)


def test_prior_weight_scales_the_ponder_factor():
    model = tiny_act(tau=0.3)
    guide = EmptyGuide(model)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    model.prior_weight = 0.0
    guide(x, y)
    tr, _ = guide.get_traces()
    assert tr.nodes["ponder_0"]["fn"].log_factor.abs().max().item() == 0
    model.prior_weight = 1.0
    guide(x, y)
    tr, _ = guide.get_traces()
    assert tr.nodes["ponder_0"]["fn"].log_factor.lt(-0.3).all()  # -τ(N + R), N + R > 1


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="tau"):
        ACTResNet(ResNetBackbone([2, 2, 2], (4, 8, 8), 1, 3), tau=-1.0)
    model = tiny_act()
    with pytest.raises(ValueError, match="y must lie"):
        model.model(torch.randn(2, 1, 8, 8), torch.tensor([0, 7]))
    with pytest.raises(TypeError, match="model must have"):
        EmptyGuide(object())


# ------------------------------------------------- CLI: train / evaluate / flops for every method


def test_cli_train_evaluate_all_methods(tmp_path, data_root, capsys):
    from pact_pyro.cli import main

    fields = None
    for method in ("pact", "act", "plain"):
        out = tmp_path / method
        argv = ["train", "--dataset", "mnist", "--depth", "8", "--method", method, "--epochs", "1",
                "--train-subset", "64", "--test-subset", "64", "--batch-size", "32", "--data-root",
                str(data_root), "--out", str(out), "--no-progress"]  # fmt: skip
        assert main(argv) == 0
        capsys.readouterr()
        assert main(["evaluate", str(out), "--no-progress", "--test-subset", "64"]) == 0
        res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert main(["evaluate", str(out), "--no-progress", "--test-subset", "64", "--chunk-size", "5"]) == 0
        chunked = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert chunked["accuracy"] == res["accuracy"] and chunked["units_mean"] == res["units_mean"]
        fields = fields or set(res)
        assert set(res) == fields and res["examples"] == 64
        assert res["units_max"] == [1, 1, 1] and res["units_mean"] == [1.0, 1.0, 1.0]
        # ResNet-8 has one unit per block, hence no halting head: every method costs the plain network
        expect = FlopTable.measure(ResNetBackbone([1, 1, 1], in_channels=1), (1, 28, 28)).full
        assert res["flops_full"] == expect and res["flops_mean"] == expect and res["flops_std"] == 0
