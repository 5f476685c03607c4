import itertools

import pytest
import torch

from pact_pyro.halting import (
    expected_units,
    mix_residuals,
    stick_breaking,
    still_running,
    threshold_units,
    units_to_z,
)


def test_stick_breaking_hand_case():
    z = torch.tensor([0.5, 0.5])
    torch.testing.assert_close(stick_breaking(z), torch.tensor([0.5, 0.25, 0.25]), rtol=0, atol=0)
    torch.testing.assert_close(still_running(z), torch.tensor([1.0, 0.5, 0.25]), rtol=0, atol=0)
    assert expected_units(stick_breaking(z)).item() == pytest.approx(1.75)


def test_weights_sum_to_one_and_count_identity():
    z = torch.rand(7, 4, 5, dtype=torch.float64)
    w = stick_breaking(z)
    assert w.shape == (7, 4, 6)
    torch.testing.assert_close(w.sum(-1), torch.ones(7, 4, dtype=torch.float64), rtol=0, atol=1e-15)
    # Ñ = Σ l w_l = Σ e_l (measured-facts.md identity)
    torch.testing.assert_close(expected_units(w), still_running(z).sum(-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("L", [1, 2, 4])
def test_binary_z_is_one_hot_at_first_halt(L):
    for bits in itertools.product([0.0, 1.0], repeat=L - 1):
        z = torch.tensor(bits).reshape(L - 1)
        n = next((i + 1 for i, b in enumerate(bits) if b == 1.0), L)
        w = stick_breaking(z)
        assert w.tolist() == [1.0 if l == n else 0.0 for l in range(1, L + 1)]
        assert expected_units(w).item() == n
        assert stick_breaking(units_to_z(torch.tensor(n), L)).argmax().item() + 1 == n


def test_threshold_units_rule():
    h = torch.tensor([[0.1, 0.5, 0.9], [0.6, 0.0, 0.0], [0.49, 0.49, 0.49], [0.2, 0.7, 0.2]])
    assert threshold_units(h).tolist() == [2, 1, 4, 2]  # >= threshold, first one, else L
    assert threshold_units(h, threshold=0.95).tolist() == [4, 4, 4, 4]
    assert threshold_units(torch.zeros(3, 0)).tolist() == [1, 1, 1]  # L = 1
    assert threshold_units(h).dtype == torch.int64
    with pytest.raises(ValueError, match="threshold"):
        threshold_units(h, threshold=0.0)


def test_mix_residuals_equals_weighted_states():
    torch.manual_seed(0)
    u1 = torch.randn(5, 2, 3, 3, dtype=torch.float64)
    fs = [torch.randn(5, 2, 3, 3, dtype=torch.float64) for _ in range(3)]
    states = [u1]
    for f in fs:
        states.append(states[-1] + f)
    z = torch.rand(5, 3, dtype=torch.float64)
    w = stick_breaking(z)
    expected = sum(w[:, l].view(-1, 1, 1, 1) * s for l, s in enumerate(states))
    torch.testing.assert_close(mix_residuals(u1, fs, still_running(z)), expected, rtol=1e-12, atol=1e-12)


def test_mix_residuals_gradients_match_finite_differences():
    # the in-place multiply-adds must give autograd the gradients of u^1 + sum_l e_l F_l (e and F included)
    torch.manual_seed(1)
    u1 = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    fs = [torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    z = torch.rand(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z, u, *f: mix_residuals(u, f, still_running(z)), (z, u1, *fs))
    assert mix_residuals(u1, [], torch.ones(3, 1, dtype=torch.float64)) is u1
    # inputs that need no gradient get none (a fixed z, e.g. a deterministic run)
    e = still_running(z).detach()
    mix_residuals(u1, fs, e).sum().backward()
    torch.testing.assert_close(fs[1].grad, e[:, 2].reshape(-1, 1, 1, 1).expand_as(fs[1]))
    assert e.grad is None


def test_bad_inputs():
    with pytest.raises(TypeError, match="z must be floating"):
        stick_breaking(torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="trailing unit dimension"):
        stick_breaking(torch.tensor(0.5))
