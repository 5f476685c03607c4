import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
from pact_pyro.guides import RelaxedBernoulliGuide, StraightThroughGuide
from pyro import poutine

from pact_pyro import MAPObjective
from pact_pyro.halting import units_to_z
from pact_pyro.sites import halting_site
from pact_pyro.threshold import evaluate_masked
from tests.common import randomize_heads, tiny_model


def _setup(guide_cls, units=(2, 3, 1), seed=0):
    torch.manual_seed(seed)
    model = tiny_model(units=units).double()
    guide = guide_cls(model, temperature=0.7).double()
    randomize_heads(guide, std=1.0)
    (
        model.eval(),
        guide.eval(),
    )  # BatchNorm on running statistics: examples independent, loss deterministic in z
    x = torch.randn(4, 1, 12, 12, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1])
    return model, guide, x, y


def _joint_log_prob(model, x, y, units):
    """log p(y | x, z) + Σ_b log p(N_b) for fixed unit counts ``units [B, blocks]`` (independent path)."""
    logits, _ = evaluate_masked(model, _NoHeads(), x, units=units)
    lp = dist.Categorical(logits=logits).log_prob(y)
    for b, L in enumerate(model.units_per_block):
        lp = lp + model.priors[b].log_probs(L).to(lp)[units[:, b] - 1]
    return lp


class _NoHeads(torch.nn.Module):
    def halting_logits(self, b, l, u):
        return u.new_zeros(u.shape[0])


def test_objective_at_fixed_hard_z_is_minus_joint_log_prob():
    model, guide, x, y = _setup(StraightThroughGuide)
    units = torch.tensor([[1, 3, 1], [2, 1, 1], [2, 2, 1], [1, 1, 1]])
    data = {
        halting_site(b): units_to_z(units[:, b], L, torch.float64)
        for b, L in enumerate(model.units_per_block)
        if L > 1
    }
    loss = MAPObjective()(poutine.condition(model.model, data), poutine.condition(guide, data), x, y)
    expected = -_joint_log_prob(model, x, y, units).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


def test_estimator_mean_equals_enumerated_expectation_no_entropy():
    """E_q[log p(y|x,z) + log p(z)] by enumerating every N of every block; no -log q term."""
    model, guide, x, y = _setup(StraightThroughGuide)
    Ls = model.units_per_block

    def q_of(units):
        """q(N = units | x) along the path the units define (later heads see earlier blocks' outputs)."""
        q = torch.ones(x.shape[0], dtype=torch.float64)
        with torch.no_grad():
            u = model.backbone.stem(x)
            for b, block in enumerate(model.backbone.blocks):
                states, h = [], []
                for l, unit in enumerate(block):
                    u = unit(u)
                    states.append(u)
                    if l < len(block) - 1:
                        h.append(torch.sigmoid(guide.halting_logits(b, l, u)))
                n = units[:, b]
                h = torch.stack(h + [torch.ones_like(q)], -1)  # h_L = 1
                stay = torch.cumprod(torch.cat([torch.ones_like(q)[:, None], 1 - h[:, :-1]], -1), -1)
                q = q * (h * stay).gather(1, (n - 1)[:, None]).squeeze(1)
                u = torch.stack(states, 1)[torch.arange(x.shape[0]), n - 1]
        return q

    expected = torch.zeros(x.shape[0], dtype=torch.float64)
    for ns in itertools.product(*[range(1, L + 1) for L in Ls]):
        units = torch.tensor(ns).expand(x.shape[0], len(Ls))
        expected += q_of(units) * _joint_log_prob(model, x, y, units)
    expected = -expected.mean()
    pyro.set_rng_seed(1)
    K = 500  # independent draws per example, in one batch (BatchNorm in eval mode: examples independent)
    xs, ys = x.repeat(K, 1, 1, 1), y.repeat(K)
    with torch.no_grad():
        draws = torch.stack([MAPObjective()(model.model, guide, xs, ys) for _ in range(8)])
    se = draws.std() / draws.numel() ** 0.5
    assert abs(draws.mean() - expected) < 4 * se, (draws.mean(), expected, se)


def test_objective_never_scores_the_guide():
    # StraightThrough's log_prob raises: the objective must not call it (no entropy term)
    model, guide, x, y = _setup(StraightThroughGuide)
    assert torch.isfinite(MAPObjective()(model.model, guide, x, y))
    with pytest.raises(NotImplementedError):
        pyro.infer.Trace_ELBO().differentiable_loss(model.model, guide, x, y)


def test_gradients_match_finite_differences():
    model, guide, x, y = _setup(RelaxedBernoulliGuide)
    head = guide.heads[1][0].linear
    conv = model.backbone.blocks[0][1].conv1

    def loss_at(param, idx, delta):
        if delta == 0.0:
            pyro.set_rng_seed(3)  # the same Concrete noise every time
            return MAPObjective()(model.model, guide, x, y)
        with torch.no_grad():
            old = param.view(-1)[idx].item()
            param.view(-1)[idx] = old + delta
            pyro.set_rng_seed(3)
            value = MAPObjective()(model.model, guide, x, y)
            param.view(-1)[idx] = old
        return value

    for param, idx in [(head.bias, 0), (head.weight, 3), (conv.weight, 5)]:
        param.grad = None
        loss_at(param, idx, 0.0).backward()
        g = param.grad.view(-1)[idx].item()
        eps = 1e-6
        fd = (loss_at(param, idx, eps).item() - loss_at(param, idx, -eps).item()) / (2 * eps)
        assert g != 0.0
        assert g == pytest.approx(fd, rel=1e-5, abs=1e-9), (param.shape, g, fd)


def test_gradients_reach_weights_and_heads_in_training_mode():
    model = tiny_model()
    guide = RelaxedBernoulliGuide(model)
    x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 3, (8,))
    MAPObjective()(model.model, guide, x, y).backward()
    for name, p in list(model.backbone.named_parameters()) + list(guide.heads.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(h.linear.bias.grad.abs().item() > 0 for block in guide.heads for h in block)
    assert model.backbone.stem.weight.grad.abs().sum() > 0


def test_one_backbone_pass_per_svi_step():
    model = tiny_model(units=(3, 3, 3))
    guide = RelaxedBernoulliGuide(model)
    calls = []
    for b, block in enumerate(model.backbone.blocks):
        for l, unit in enumerate(block):
            unit.conv1.register_forward_hook(lambda *a, key=(b, l): calls.append(key))
    svi = pyro.infer.SVI(model.model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=MAPObjective())
    x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 3, (8,))
    for step in range(1, 3):
        calls.clear()
        svi.step(x, y)
        assert sorted(calls) == [(b, l) for b in range(3) for l in range(3)]  # every unit exactly once
        assert int(model.backbone.stem.weight.new_tensor(0).numel()) == 1
        bn = model.backbone.blocks[0][0].bn1
        assert int(bn.num_batches_tracked) == step  # BatchNorm statistics updated once per step
        assert all(int(h.bn.num_batches_tracked) == step for block in guide.heads for h in block)


def test_svi_trains_both_model_and_guide():
    model = tiny_model()
    guide = RelaxedBernoulliGuide(model)
    before = [p.detach().clone() for p in guide.heads.parameters()] + [
        model.backbone.stem.weight.detach().clone()
    ]
    svi = pyro.infer.SVI(model.model, guide, pyro.optim.Adam({"lr": 1e-2}), loss=MAPObjective())
    svi.step(torch.randn(8, 1, 12, 12), torch.randint(0, 3, (8,)))
    after = list(guide.heads.parameters()) + [model.backbone.stem.weight]
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
