"""Property tests (hypothesis): the MAP loss and every gradient stay finite over the whole range of settings.

Ranges: Concrete temperature λ ∈ [1e-3, 10] (log-uniform), halting logits logit h ∈ [-1e3, 1e3] (forced
through the head biases), geometric prior τ ∈ [0, 10], batch B ∈ [1, 64], both guides. Batches of 1 are
scored in eval mode (training needs B ≥ 2: the halting heads use BatchNorm over the batch).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pact_pyro.guides import get_guide
from pact_pyro.models import pact_resnet

from pact_pyro.objective import MAPObjective
from pact_pyro.priors import TruncatedGeometric
from pact_pyro.relaxed import LOW_TEMPERATURE, check_temperature

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _net(guide_name: str):
    torch.manual_seed(0)
    model = pact_resnet(20, 10, 1, widths=(4, 8, 8))  # L = 3 units per block: 2 halting values per block
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        guide = get_guide(guide_name, model)
    return model, guide


NETS = {name: _net(name) for name in ("relaxed", "straight-through")}


@SETTINGS
@given(
    temperature=st.floats(math.log(1e-3), math.log(10.0)).map(math.exp),
    logit=st.floats(-1e3, 1e3),
    tau=st.floats(0.0, 10.0),
    batch=st.integers(1, 64),
    guide_name=st.sampled_from(sorted(NETS)),
    seed=st.integers(0, 2**16),
)
def test_loss_and_gradients_are_finite(temperature, logit, tau, batch, guide_name, seed):
    model, guide = NETS[guide_name]
    guide.temperature = temperature
    model.priors = [TruncatedGeometric(tau)] * 3
    with torch.no_grad():
        for heads in guide.heads:
            for head in heads:
                head.linear.weight.zero_()
                head.linear.bias.fill_(logit)
    model.train(batch > 1)
    guide.train(batch > 1)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    torch.manual_seed(seed)
    params = list(model.parameters()) + list(guide.parameters())
    for p in params:
        p.grad = None
    loss = MAPObjective()(model.model, guide, x, y)
    loss.backward()
    assert math.isfinite(float(loss.detach())), (temperature, logit, tau, batch)
    for name, p in [*model.named_parameters(), *guide.named_parameters()]:
        assert p.grad is not None and bool(p.grad.isfinite().all()), name
    # the relaxed count Ñ lies in [1, L]
    for b in range(3):
        n = guide.trace.nodes[f"units_{b}"]["value"]
        assert bool(((n >= 1 - 1e-5) & (n <= 3 + 1e-5)).all())


@SETTINGS
@given(temperature=st.floats(math.log(1e-3), math.log(10.0)).map(math.exp))
def test_low_temperature_warning(temperature):
    if temperature < LOW_TEMPERATURE:
        with pytest.warns(RuntimeWarning, match="halting gradients are exactly zero"):
            check_temperature(temperature)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert check_temperature(temperature) == temperature


def test_low_temperature_gradients_vanish():
    """Why the warning exists: at λ = 1e-3 almost every relaxed sample saturates and its gradient is 0."""
    logits = torch.zeros(10_000, requires_grad=True)
    from pact_pyro.relaxed import RelaxedBernoulli

    torch.manual_seed(0)
    for lam, lo, hi in ((1e-3, 0.0, 0.01), (2 / 3, 0.99, 1.0)):
        (grad,) = torch.autograd.grad(
            RelaxedBernoulli(torch.tensor(lam), logits=logits).rsample().sum(), logits
        )
        frac = float((grad != 0).double().mean())
        assert lo <= frac <= hi, (lam, frac)
