"""SingleOptimizer (one torch optimizer for every parameter SVI reports) steps exactly like Pyro's
per-parameter wrappers."""

from __future__ import annotations

import copy

import pyro
import pytest
import torch
from pact_pyro.guides import get_guide
from pact_pyro.models import pact_resnet

from pact_pyro.objective import MAPObjective
from pact_pyro.optim import SingleOptimizer


def _run(make_optim, steps: int = 3):
    pyro.clear_param_store()
    torch.manual_seed(0)
    model = pact_resnet(14)
    guide = get_guide("relaxed", model)
    model.double()
    guide.double()
    svi = pyro.infer.SVI(model.model, guide, make_optim(), loss=MAPObjective())
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3])
    losses = []
    for s in range(steps):
        pyro.set_rng_seed(10 + s)
        losses.append(svi.step(x, y))
    state = {**copy.deepcopy(model.state_dict()), **{f"g.{k}": v for k, v in guide.state_dict().items()}}
    return losses, state


@pytest.mark.parametrize(
    "optim, args", [(torch.optim.Adam, {"lr": 1e-2}), (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9})]
)
def test_single_optimizer_equals_per_parameter_optimizers(optim, args):
    ref_losses, ref = _run(lambda: pyro.optim.PyroOptim(optim, dict(args)))
    losses, got = _run(lambda: SingleOptimizer(optim, dict(args)))
    assert losses == pytest.approx(ref_losses, rel=1e-12)
    assert ref.keys() == got.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-12, atol=1e-12, msg=k)


def test_only_this_steps_parameters_are_updated():
    a = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(3))
    opt = SingleOptimizer(torch.optim.SGD, {"lr": 0.5, "momentum": 0.9})
    (a.sum() + b.sum()).backward()
    opt([a, b])
    assert a.grad is None and b.grad is None  # released: SVI's zero_grads has nothing to allocate
    a.sum().backward()
    b.grad = torch.ones(3)  # a stale gradient of a parameter not used in this step
    before = b.detach().clone()
    opt([a])
    torch.testing.assert_close(b.detach(), before)
    torch.testing.assert_close(a.detach(), torch.full((3,), 1 - 0.5 - 0.5 * 1.9))


def test_bad_optimizer():
    with pytest.raises(TypeError, match="optimizer"):
        SingleOptimizer(lambda params: None, {})
