"""Seeded synthetic tasks: parity and sequence addition (exact checks against plain-Python references)."""

from __future__ import annotations

import pytest
import torch

from pact_pyro.tasks import addition, parity, task_sizes


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_parity_definition_and_difficulty():
    b = parity(2000, bits=8, generator=_gen())
    assert b.x.shape == (2000, 1, 8) and b.y.shape == (2000,) and b.difficulty.shape == (2000,)
    x = b.x[:, 0]
    assert set(x.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.equal((x != 0).sum(-1), b.difficulty)  # k = number of non-zero entries
    assert torch.equal(b.y, (x == 1).sum(-1) % 2)
    assert set(b.difficulty.tolist()) == set(range(1, 9))  # k uniform on 1..bits
    assert abs(float(b.y.double().mean()) - 0.5) < 0.05
    # the ±1 entries sit at random positions, not a prefix
    assert float((x[:, -1] != 0).double().mean()) > 0.3


def test_parity_is_seeded():
    a, b = parity(50, 16, _gen(3)), parity(50, 16, _gen(3))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, parity(50, 16, _gen(4)).x)


def _decode_number(v: torch.Tensor, digits: int) -> int:
    d = v.reshape(digits, 10)
    return sum(int(d[i].argmax()) * 10**i for i in range(digits) if float(d[i].sum()) == 1.0)


def _carries(a: int, b: int) -> int:
    n, carry = 0, 0
    while a or b or carry:
        s = a % 10 + b % 10 + carry
        carry = s // 10
        n += carry
        a, b = a // 10, b // 10
    return n


def test_addition_targets_are_running_sums():
    T, D = 4, 3
    b = addition(300, steps=T, digits=D, generator=_gen(1))
    sizes = task_sizes("addition", digits=D)
    assert b.x.shape == (300, T, sizes["input_size"])
    assert b.y.shape == (300, T, sizes["output_size"] // sizes["classes"])
    assert bool((b.y[:, 0] == -1).all())  # no target at the first step
    for i in range(300):
        nums = [_decode_number(b.x[i, t], D) for t in range(T)]
        total, carries = nums[0], 0
        for t in range(1, T):
            carries += _carries(total, nums[t])
            total += nums[t]
            digits = [int(v) for v in b.y[i, t]]
            text = "".join(str(v) for v in reversed(digits) if v != 10)
            assert int(text) == total, (i, t, nums, digits)
            n = len(str(total))
            assert digits[n:] == [10] * (D + 1 - n)  # "no digit" past the sum's length
        assert int(b.difficulty[i]) == carries
    # each number has 1..D digits, one-hot per present digit
    per_digit = b.x.reshape(300, T, D, 10).sum(-1)
    assert set(per_digit.unique().tolist()) == {0.0, 1.0}
    assert bool((per_digit[..., 0] == 1).all())


@pytest.mark.parametrize("bad", [{"n": 0}, {"bits": 0}])
def test_parity_rejects_bad_sizes(bad):
    kw = {"n": 4, "bits": 4, **bad}
    with pytest.raises(ValueError, match=next(iter(bad))):
        parity(**kw)


def test_task_sizes_rejects_unknown_task():
    with pytest.raises(ValueError, match="task must be one of"):
        task_sizes("copy")
