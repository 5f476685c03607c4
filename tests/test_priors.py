import itertools
import math

import pytest
import torch

from pact_pyro.halting import stick_breaking, units_to_z
from pact_pyro.priors import (
    CategoricalUnits,
    HaltingPrior,
    TruncatedGeometric,
    TruncatedPoisson,
    UniformUnits,
    get_prior,
)

PRIORS = [TruncatedGeometric(0.3), TruncatedGeometric(0.0), UniformUnits(), TruncatedPoisson(1.5)]


@pytest.mark.parametrize("prior", PRIORS, ids=repr)
@pytest.mark.parametrize("L", [1, 2, 5])
def test_normalised(prior, L):
    assert prior.log_probs(L).exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def test_geometric_exact_values():
    tau, L = 0.7, 4
    Z = sum(math.exp(-tau * n) for n in range(1, L + 1))
    expected = [-tau * n - math.log(Z) for n in range(1, L + 1)]
    torch.testing.assert_close(
        TruncatedGeometric(tau).log_probs(L), torch.tensor(expected, dtype=torch.float64)
    )
    # log p(N) = -τN + const
    d = TruncatedGeometric(tau).log_probs(L).diff()
    torch.testing.assert_close(d, torch.full((L - 1,), -tau, dtype=torch.float64))


def test_poisson_exact_values():
    r, L = 2.5, 4
    un = [n * math.log(r) - math.lgamma(n + 1) for n in range(1, L + 1)]
    lz = math.log(sum(math.exp(v) for v in un))
    torch.testing.assert_close(
        TruncatedPoisson(r).log_probs(L), torch.tensor([v - lz for v in un], dtype=torch.float64)
    )


def test_categorical_and_length_check():
    p = CategoricalUnits([1, 2, 1])
    torch.testing.assert_close(p.log_probs(3).exp(), torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64))
    with pytest.raises(ValueError, match="L=4"):
        p.log_probs(4)


@pytest.mark.parametrize("prior", PRIORS + [CategoricalUnits([0.1, 0.2, 0.3, 0.4])], ids=repr)
def test_hazards_reproduce_prior(prior):
    L = 4
    hz = prior.hazards(L)
    assert hz[-1].item() == pytest.approx(1.0)
    # p(N = n) = hz_n ∏_{l<n} (1 - hz_l)
    chain = stick_breaking(hz[:-1])
    torch.testing.assert_close(chain, prior.log_probs(L).exp(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("prior", PRIORS + [CategoricalUnits([0.1, 0.2, 0.3, 0.4])], ids=repr)
def test_relaxed_log_prior_exact_at_binary_z(prior):
    L = 4
    site = prior.site(L)
    for bits in itertools.product([0.0, 1.0], repeat=L - 1):
        z = torch.tensor(bits, dtype=torch.float64)
        n = next((i + 1 for i, b in enumerate(bits) if b), L)
        assert site.log_prob(z).item() == pytest.approx(prior.log_probs(L)[n - 1].item(), abs=1e-12)
        assert prior.relaxed_log_prob(stick_breaking(z)).item() == pytest.approx(
            site.log_prob(z).item(), abs=1e-12
        )


def test_geometric_relaxed_is_minus_tau_ntilde():
    tau, L = 0.2, 5
    z = torch.rand(10, L - 1, dtype=torch.float64)
    w = stick_breaking(z)
    n_tilde = (w * torch.arange(1, L + 1, dtype=torch.float64)).sum(-1)
    log_z = math.log(sum(math.exp(-tau * n) for n in range(1, L + 1)))
    torch.testing.assert_close(TruncatedGeometric(tau).site(L).log_prob(z), -tau * n_tilde - log_z)


def test_site_sample_distribution():
    torch.manual_seed(0)
    prior = TruncatedGeometric(0.5)
    z = prior.site(4).expand([200_000]).sample()
    n = (stick_breaking(z) * torch.arange(1, 5)).sum(-1).long()
    freq = torch.bincount(n, minlength=5)[1:].double() / n.numel()
    torch.testing.assert_close(freq, prior.log_probs(4).exp(), atol=5e-3, rtol=0)


def test_site_support_validation():
    site = HaltingPrior(TruncatedGeometric(0.1).log_probs(3), validate_args=True)
    with pytest.raises(ValueError):
        site.log_prob(torch.tensor([1.5, 0.0]))
    assert torch.isfinite(site.log_prob(units_to_z(torch.tensor(2), 3)))


def test_bad_prior_arguments():
    with pytest.raises(ValueError, match="tau must be a finite number >= 0, got -1"):
        TruncatedGeometric(-1)
    with pytest.raises(ValueError, match="rate"):
        TruncatedPoisson(0)
    with pytest.raises(ValueError, match="prior must be one of"):
        get_prior("nope")
    with pytest.raises(ValueError, match="probs"):
        CategoricalUnits([-1, 2])
