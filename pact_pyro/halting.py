"""Halting algebra of a block of ``L`` residual units (pure torch, no Pyro).

Notation (PACT; pact-notes.md §1). A block runs units ``l = 1..L``. Halting variables
``z_l ∈ {0, 1}`` for ``l = 1..L-1`` (``z_L := 1``: the last unit always halts) define

* still-running indicators  ``e_l = ∏_{i<l} (1 - z_i)``           (``e_1 = 1``),
* stick-breaking weights    ``w_l = z_l e_l``                     (``Σ_l w_l = 1``),
* executed-unit count       ``N = min{l : z_l = 1} = Σ_l e_l = Σ_l l·w_l``.

The block output is ``u^N = Σ_l w_l u^l``. For relaxed ``z ∈ [0, 1]`` (Concrete samples) the same
formulas give the relaxed mixture and the relaxed count ``Ñ``. Because ``u^l = u^{l-1} + F_l(u^{l-1})``,
``Σ_l w_l u^l = u^1 + Σ_{l≥2} e_l F_l(u^{l-1})``: one accumulator, no stack of unit outputs
(:func:`mix_residuals`).

**ACT's halting rule** (Graves; the SACT code; pact-notes.md §3), PACT's baseline, is the other halting
algebra here (:func:`act_halting`). After unit ``l < L`` a halting head gives ``h^l ∈ (0, 1)``, ``h^L := 1``;
with the running float32 sum ``S_n = h^1 + … + h^n``:

* ``N = min{n : S_n ≥ float32(1 − ε)}`` (``≥``, not ``>``; ``N ≤ L``), a stop-gradient integer;
* remainder ``R = 1 − S_{N−1}`` (``N = 1`` gives ``R = 1``);
* weights ``w^l = h^l`` for ``l < N``, ``w^N = R``, ``0`` after (``Σ_l w^l = 1``);
* block output ``Σ_l w^l u^l`` and ponder cost ``ρ = N + R``, so ``∂ρ/∂h^l = −1`` for ``l < N``.

Training loss: ``CE + τ Σ_b mean_i ρ_{b,i}``. The output and ``ρ`` jump when ``S`` crosses ``1 − ε``: the
objective is discontinuous in ``h``, unlike PACT's relaxed one. ACT's test-time evaluator is
:func:`pact_pyro.act_evaluate.act_evaluate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

__all__ = [
    "still_running",
    "stick_breaking",
    "expected_units",
    "threshold_units",
    "units_to_z",
    "mix_residuals",
    "ACTHalting",
    "act_halting",
    "ACT_EPS",
]


def _check_halting(z: torch.Tensor, name: str) -> None:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() < 1:
        raise ValueError(f"{name} must have a trailing unit dimension [..., L-1], got shape {tuple(z.shape)}")
    if not z.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {z.dtype}")


def still_running(z: torch.Tensor) -> torch.Tensor:
    """Still-running indicators ``e_l = ∏_{i<l}(1 - z_i)``.

    :param z: halting values ``[..., L-1]`` in ``[0, 1]``.
    :returns: ``e`` of shape ``[..., L]``, with ``e_1 = 1``.
    """
    _check_halting(z, "z")
    ones = torch.ones(z.shape[:-1] + (1,), dtype=z.dtype, device=z.device)
    return torch.cumprod(torch.cat([ones, 1 - z], dim=-1), dim=-1)


def stick_breaking(z: torch.Tensor) -> torch.Tensor:
    """Stick-breaking weights ``w_l = z_l ∏_{i<l}(1 - z_i)`` with ``z_L := 1``.

    :param z: halting values ``[..., L-1]`` in ``[0, 1]``.
    :returns: ``w`` of shape ``[..., L]``; ``Σ_l w_l = 1`` exactly (the last weight takes the rest).
        At binary ``z`` it is one-hot at ``N``.
    """
    e = still_running(z)
    ones = torch.ones(z.shape[:-1] + (1,), dtype=z.dtype, device=z.device)
    return torch.cat([z, ones], dim=-1) * e


def expected_units(w: torch.Tensor) -> torch.Tensor:
    """Executed-unit count ``Ñ = Σ_l l·w_l`` (exactly ``N`` at binary ``z``).

    :param w: stick-breaking weights ``[..., L]``.
    :returns: ``[...]``.
    """
    _check_halting(w, "w")
    n = torch.arange(1, w.shape[-1] + 1, dtype=w.dtype, device=w.device)
    return (w * n).sum(-1)


def threshold_units(h: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Deterministic test-time rule: ``N = min{l : h_l ≥ threshold}``, else ``L``.

    :param h: halting probabilities ``[..., L-1]`` of units ``1..L-1``.
    :param threshold: in ``(0, 1]``; 0.5 is the mode of each Bernoulli ``q(z_l | x)``.
    :returns: LongTensor ``[...]`` of 1-based unit counts.
    """
    _check_halting(h, "h")
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    last = torch.ones(h.shape[:-1] + (1,), dtype=torch.bool, device=h.device)
    halt = torch.cat([h >= threshold, last], dim=-1)  # [..., L], unit L always halts
    return halt.to(torch.int64).argmax(dim=-1) + 1  # argmax returns the first maximum


def units_to_z(n: torch.Tensor, L: int, dtype: torch.dtype = torch.get_default_dtype()) -> torch.Tensor:
    """Binary halting values ``z_l = 1[l = N]`` (``[..., L-1]``) for unit counts ``n ∈ {1..L}``.

    Entries after ``N`` do not enter any quantity above; they are set to 0.
    """
    if L < 1:
        raise ValueError(f"L must be >= 1, got {L}")
    ls = torch.arange(1, L, device=n.device)
    return (n.unsqueeze(-1) == ls).to(dtype)


class _MixResiduals(torch.autograd.Function):
    """``u^1 + Σ_{k≥1} e_k F_k`` with a hand-written backward: ``∂/∂u^1 = g``, ``∂/∂F_k = e_k g``,
    ``∂/∂e_k = <g, F_k>`` per example. (Autograd's ``addcmul`` backward also multiplies every ``F_k`` by the
    scalar ``value`` — one more full pass per residual; the plain ``u + e * F`` form writes a product and a
    sum tensor per residual in the forward.)"""

    @staticmethod
    def forward(ctx, e: torch.Tensor, first: torch.Tensor, *residuals: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (first.dim() - 1)
        out = torch.addcmul(first, e[:, 1].reshape(shape), residuals[0])
        for k, f in enumerate(residuals[1:], start=2):
            out.addcmul_(e[:, k].reshape(shape), f)
        ctx.save_for_backward(e, *residuals)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        e, *residuals = ctx.saved_tensors
        shape = (-1,) + (1,) * (g.dim() - 1)
        grad_e = None
        if ctx.needs_input_grad[0]:
            grad_e = torch.zeros_like(e)  # e_1 = 1 is not used
            dims = tuple(range(1, g.dim()))
            for k, f in enumerate(residuals, start=1):
                grad_e[:, k] = (g * f).sum(dims)
        grad_f = [
            g * e[:, k].reshape(shape) if ctx.needs_input_grad[k + 1] else None
            for k in range(1, len(residuals) + 1)
        ]
        return (grad_e, g if ctx.needs_input_grad[1] else None, *grad_f)


def mix_residuals(first: torch.Tensor, residuals: Sequence[torch.Tensor], e: torch.Tensor) -> torch.Tensor:
    """Relaxed block output ``Σ_l w_l u^l = u^1 + Σ_{l≥2} e_l F_l(u^{l-1})``.

    :param first: ``u^1`` ``[B, ...]``.
    :param residuals: ``F_2 .. F_L``, each ``[B, ...]`` (the residual branches of units 2..L).
    :param e: still-running indicators ``[B, L]``.
    :returns: ``[B, ...]``. One multiply-add pass per residual forward, two products backward
        (first-order gradients only).
    """
    if not residuals:
        return first
    return _MixResiduals.apply(e, first, *residuals)


# --- ACT (the baseline) ------------------------------------------------------------------------------------

#: SACT's ε (ACT halts at the first ``n`` with ``S_n ≥ 1 − ε``)
ACT_EPS = 0.01


class ACTHalting(NamedTuple):
    """Result of :func:`act_halting` for halting probabilities ``h`` of shape ``[..., L-1]``.

    ``units`` int64 ``[...]`` (1-based ``N``), ``remainder`` ``[...]`` (``R``), ``weights`` ``[..., L]``
    (``w``), ``ponder_cost`` ``[...]`` (``ρ = N + R``). Floating results have the dtype of ``h``.
    """

    units: torch.Tensor
    remainder: torch.Tensor
    weights: torch.Tensor
    ponder_cost: torch.Tensor


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps!r}")
    return eps


def act_halting(h: torch.Tensor, eps: float = ACT_EPS) -> ACTHalting:
    """ACT halting of one block from ``h`` ``[..., L-1]`` (units ``1..L-1``; ``h^L := 1`` is implicit).

    Any leading shape works: ``[B]`` per example, ``[B, H, W]`` per spatial position (SACT). ``L = 1``
    (``h`` of shape ``[..., 0]``) gives ``N = 1``, ``R = 1``, ``w = [1]``, ``ρ = 2``.

    The halting decision uses a float32 running sum compared with ``float32(1 - eps)``, whatever the dtype of
    ``h``; ``R`` and ``w`` are differentiable in ``h`` (with ``N`` held fixed).
    """
    if not isinstance(h, torch.Tensor):
        raise TypeError(f"h must be a torch.Tensor, got {type(h).__name__}")
    if h.dim() < 1:
        raise ValueError(f"h must have a trailing unit dimension [..., L-1], got shape {tuple(h.shape)}")
    if not h.is_floating_point():
        raise TypeError(f"h must be floating point, got dtype {h.dtype}")
    eps = _check_eps(eps)
    ones = torch.ones(h.shape[:-1] + (1,), dtype=h.dtype, device=h.device)
    hh = torch.cat([h, ones], dim=-1)  # [..., L] with h^L = 1
    L = hh.shape[-1]
    with torch.no_grad():
        s32 = torch.cumsum(hh.detach().to(torch.float32), dim=-1)  # S_1..S_L in float32
        halt = s32 >= torch.tensor(1.0 - eps, dtype=torch.float32)
        halt[..., -1] = True  # h^L = 1 forces a halt at L even for negative/NaN-free corner cases
        n0 = halt.to(torch.int64).argmax(dim=-1)  # 0-based N - 1: the first True
    ls = torch.arange(L, device=h.device)
    before = ls < n0.unsqueeze(-1)  # l < N (1-based)
    at = ls == n0.unsqueeze(-1)
    zero = torch.zeros(h.shape[:-1] + (1,), dtype=h.dtype, device=h.device)
    s_excl = torch.cat([zero, torch.cumsum(hh, dim=-1)[..., :-1]], dim=-1)  # S_0 = 0, S_1..S_{L-1}
    s_prev = s_excl.gather(-1, n0.unsqueeze(-1)).squeeze(-1)  # S_{N-1}, the same running sum
    remainder = 1.0 - s_prev
    weights = torch.where(before, hh, torch.zeros((), dtype=hh.dtype, device=hh.device))
    weights = weights + at.to(hh.dtype) * remainder.unsqueeze(-1)
    units = n0 + 1
    return ACTHalting(units, remainder, weights, units.to(h.dtype) + remainder)
