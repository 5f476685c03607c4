"""Computation priors ``p(N)`` on the number of executed units ``N ∈ {1..L}`` of a block.

Every prior defines ``log p(N = n)`` for ``n = 1..L`` (:meth:`UnitsPrior.log_probs`); everything else
follows from it:

* hazards ``p(N = l | N ≥ l)`` (``= 1`` at ``l = L``): the prior as a Bernoulli chain on ``z``;
* the **relaxed log-prior** on stick-breaking weights ``w`` (``[..., L]``)::

      log p̃(z) = Σ_l w_l log p(N = l),      w = stick_breaking(z)

  which is linear in ``w`` and therefore equals ``log p(N)`` exactly at binary ``z`` (``w`` one-hot at ``N``).
  For the truncated geometric prior it is ``-τ Ñ - log Z(τ, L)`` (pact-notes.md §2, RECON), the same shape as
  ACT's ponder cost ``τ ρ``. measured-facts.md shows that the constant-hazard chain
  ``z_l ~ Bernoulli(1 - e^{-τ})`` is *not* this prior; the linear form is exact by construction.

:class:`HaltingPrior` turns any ``p(N)`` into the distribution of the Pyro site ``z_b`` (event ``[L-1]``,
support ``[0, 1]^{L-1}``), so relaxed guide samples are scored without switching validation off.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from .halting import stick_breaking, units_to_z

__all__ = [
    "UnitsPrior",
    "TruncatedGeometric",
    "UniformUnits",
    "TruncatedPoisson",
    "CategoricalUnits",
    "HaltingPrior",
    "HazardBernoulli",
    "get_prior",
    "PRIORS",
]


def _check_L(L: int) -> int:
    if not isinstance(L, int) or L < 1:
        raise ValueError(f"L (units per block) must be an integer >= 1, got {L!r}")
    return L


class UnitsPrior(ABC):
    """Interface of a computation prior ``p(N)`` over ``N ∈ {1..L}``.

    Subclasses implement :meth:`unnormalized_log_probs`; normalisation, hazards and the relaxed log-prior
    are shared.
    """

    name: str = "prior"

    @abstractmethod
    def unnormalized_log_probs(self, L: int) -> torch.Tensor:
        """``log p(N = n) + const`` for ``n = 1..L``, shape ``[L]`` (float64)."""

    def log_probs(self, L: int) -> torch.Tensor:
        """Normalised ``log p(N = n)``, ``n = 1..L``: shape ``[L]``, float64."""
        lp = self.unnormalized_log_probs(_check_L(L)).to(torch.float64)
        return lp - torch.logsumexp(lp, 0)

    def log_prob(self, n: torch.Tensor, L: int) -> torch.Tensor:
        """``log p(N = n)`` for a LongTensor of 1-based counts ``n`` (any shape)."""
        if bool(((n < 1) | (n > L)).any()):
            raise ValueError(f"n must lie in 1..{L}, got values in {int(n.min())}..{int(n.max())}")
        return self.log_probs(L).to(n.device)[n - 1]

    def hazards(self, L: int) -> torch.Tensor:
        """``p(N = l | N ≥ l)`` for ``l = 1..L`` (``[L]``; the last is 1)."""
        lp = self.log_probs(L)
        tail = torch.logcumsumexp(lp.flip(0), 0).flip(0)  # log p(N ≥ l)
        return (lp - tail).exp()

    def relaxed_log_prob(self, w: torch.Tensor) -> torch.Tensor:
        """``Σ_l w_l log p(N = l)`` for stick-breaking weights ``w`` ``[..., L]`` → ``[...]``."""
        return (w * self.log_probs(w.shape[-1]).to(dtype=w.dtype, device=w.device)).sum(-1)

    def site(self, L: int, batch_shape: torch.Size | tuple = ()) -> HaltingPrior:
        """The distribution of the halting site of a block with ``L`` units."""
        return HaltingPrior(self.log_probs(L), batch_shape=batch_shape)

    def hazard_site(self, l: int, L: int, running: torch.Tensor) -> HazardBernoulli:
        """The prior of one halting value ``z^l`` (1-based ``l < L``) given the earlier ones, through the
        still-running indicator ``e_l`` (``running``, any batch shape): :class:`HazardBernoulli`. Used when a
        model samples ``z^1..z^{L-1}`` one by one (spatial PACT: each head reads the state the earlier halting
        values produced); ``Σ_l log p(z^l | z^{<l}) = Σ_l w_l log p(N = l)``, as :meth:`site` gives."""
        if not 1 <= l < _check_L(L):
            raise ValueError(f"l must be in 1..{L - 1} (a unit with a halting value), got {l!r}")
        return HazardBernoulli(self.hazards(L)[l - 1], running)

    def mean_units(self, L: int) -> float:
        """Prior mean ``E[N]``."""
        return float((self.log_probs(L).exp() * torch.arange(1, L + 1, dtype=torch.float64)).sum())

    def config(self) -> dict:
        """JSON-serialisable description (used in run directories)."""
        return {"name": self.name}


class TruncatedGeometric(UnitsPrior):
    """Truncated geometric prior ``p(N = n) ∝ exp(-τ n)``, ``n = 1..L`` (the default; ``τ ≥ 0``).

    ``log p(N) = -τ N - log Z``, ``Z = Σ_{n=1}^{L} e^{-τ n}``. ``τ`` is the log-scale time penalty: one more
    unit costs ``τ`` nats.
    """

    name = "geometric"

    def __init__(self, tau: float = 0.01) -> None:
        tau = float(tau)
        if not math.isfinite(tau) or tau < 0:
            raise ValueError(f"tau must be a finite number >= 0, got {tau!r}")
        self.tau = tau

    def unnormalized_log_probs(self, L: int) -> torch.Tensor:
        return -self.tau * torch.arange(1, L + 1, dtype=torch.float64)

    def config(self) -> dict:
        return {"name": self.name, "tau": self.tau}

    def __repr__(self) -> str:
        return f"TruncatedGeometric(tau={self.tau})"


class UniformUnits(UnitsPrior):
    """Uniform prior ``p(N = n) = 1 / L``: no preference for less computation (``τ = 0``)."""

    name = "uniform"

    def unnormalized_log_probs(self, L: int) -> torch.Tensor:
        return torch.zeros(L, dtype=torch.float64)

    def __repr__(self) -> str:
        return "UniformUnits()"


class TruncatedPoisson(UnitsPrior):
    """Zero- and ``L``-truncated Poisson ``p(N = n) ∝ rate^n / n!``, ``n = 1..L`` (``rate > 0``).

    Prefers ``N`` near ``rate`` rather than as few units as possible.
    """

    name = "poisson"

    def __init__(self, rate: float = 2.0) -> None:
        rate = float(rate)
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"rate must be a finite number > 0, got {rate!r}")
        self.rate = rate

    def unnormalized_log_probs(self, L: int) -> torch.Tensor:
        n = torch.arange(1, L + 1, dtype=torch.float64)
        return n * math.log(self.rate) - torch.lgamma(n + 1)

    def config(self) -> dict:
        return {"name": self.name, "rate": self.rate}

    def __repr__(self) -> str:
        return f"TruncatedPoisson(rate={self.rate})"


class CategoricalUnits(UnitsPrior):
    """A user-supplied ``p(N = n) = probs[n-1]`` (normalised here; needs ``len(probs) == L``)."""

    name = "categorical"

    def __init__(self, probs: Sequence[float] | torch.Tensor) -> None:
        p = torch.as_tensor(probs, dtype=torch.float64)
        if p.dim() != 1 or p.numel() < 1:
            raise ValueError(f"probs must be a non-empty 1-D sequence, got shape {tuple(p.shape)}")
        if not bool(torch.isfinite(p).all()) or bool((p < 0).any()) or float(p.sum()) <= 0:
            raise ValueError(f"probs must be finite, >= 0 and not all 0, got {p.tolist()}")
        self.probs = p / p.sum()

    def unnormalized_log_probs(self, L: int) -> torch.Tensor:
        if L != self.probs.numel():
            raise ValueError(
                f"CategoricalUnits has {self.probs.numel()} probabilities but the block has L={L} units"
            )
        return self.probs.log()

    def config(self) -> dict:
        return {"name": self.name, "probs": self.probs.tolist()}

    def __repr__(self) -> str:
        return f"CategoricalUnits(probs={[round(p, 4) for p in self.probs.tolist()]})"


#: the priors ``pact-pyro train --prior`` knows, by name
PRIORS = {"geometric": TruncatedGeometric, "uniform": UniformUnits, "poisson": TruncatedPoisson}


def get_prior(name: str, **kwargs: float) -> UnitsPrior:
    """Build a prior by name: ``geometric`` (``tau``), ``uniform``, ``poisson`` (``rate``)."""
    if name not in PRIORS:
        raise ValueError(f"prior must be one of {sorted(PRIORS)}, got {name!r}")
    cls = PRIORS[name]
    if cls is TruncatedGeometric:
        return cls(tau=kwargs.get("tau", 0.01))
    if cls is TruncatedPoisson:
        return cls(rate=kwargs.get("rate", 2.0))
    return cls()


class HaltingPrior(dist.TorchDistribution):
    """Distribution of a block's halting site ``z`` (event ``[L-1]``) induced by a prior ``p(N)``.

    ``log_prob(z) = Σ_l w_l(z) log p(N = l)`` with ``w = stick_breaking(z)``: exact ``log p(N)`` on binary
    ``z`` and its linear extension on relaxed ``z ∈ [0, 1]^{L-1}``. Halting values after ``N`` carry no
    information (their weights are zero). :meth:`sample` draws ``N ~ p(N)`` and returns ``z_l = 1[l = N]``.

    :param log_p: ``log p(N = n)``, ``n = 1..L``, shape ``[L]``.
    """

    arg_constraints = {}
    support = constraints.independent(constraints.unit_interval, 1)
    has_rsample = False

    def __init__(self, log_p: torch.Tensor, batch_shape: torch.Size | tuple = (), validate_args=None) -> None:
        self.log_p = log_p
        self.L = log_p.shape[-1]
        super().__init__(torch.Size(batch_shape), torch.Size((self.L - 1,)), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(HaltingPrior, _instance)
        new.log_p = self.log_p
        new.L = self.L
        super(HaltingPrior, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        w = stick_breaking(value)
        lp = self.log_p.to(dtype=value.dtype, device=value.device)
        return (w * lp).sum(-1)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        n = torch.distributions.Categorical(logits=self.log_p.float()).sample(shape) + 1
        return units_to_z(n, self.L)

    @property
    def mean(self) -> torch.Tensor:
        raise NotImplementedError("HaltingPrior has no useful mean over z; use UnitsPrior.mean_units")


class HazardBernoulli(dist.TorchDistribution):
    """``p(z^l | z^{<l})`` of a computation prior written as a chain of hazards ``λ_l = p(N = l | N ≥ l)``.

    ``log_prob(z) = e_l · [z log λ_l + (1 - z) log(1 - λ_l)]`` with ``e_l = ∏_{i<l}(1 - z^i)`` (``running``):
    a Bernoulli(``λ_l``) while the computation runs, flat on ``[0, 1]`` once it has halted, and linear in
    ``z`` (so it scores relaxed ``z ∈ [0, 1]`` too). Summed over ``l = 1..L-1`` it equals
    ``Σ_l w_l log p(N = l)`` for any ``z`` in ``[0, 1]^{L-1}`` (``w = stick_breaking(z)``): since
    ``Σ_{l>i} w_l = e_{i+1} = e_i (1 - z^i)``, ``Σ_l w_l [Σ_{i<l} log(1 - λ_i) + log λ_l]`` regroups into the
    chain — the same relaxed prior as :class:`HaltingPrior`, one unit at a time.

    :param hazard: ``λ_l`` (a scalar tensor).
    :param running: ``e_l``, batch shape of the site (e.g. ``[B, H, W]``), in ``[0, 1]``.
    """

    arg_constraints = {}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, hazard: torch.Tensor, running: torch.Tensor, validate_args=None) -> None:
        self.hazard, self.running = torch.as_tensor(hazard), running
        super().__init__(running.shape, torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(HazardBernoulli, _instance)
        new.hazard = self.hazard
        new.running = self.running.expand(batch_shape)
        super(HazardBernoulli, new).__init__(torch.Size(batch_shape), torch.Size(), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        a = self.hazard.to(dtype=value.dtype, device=value.device)
        # xlogy: 0 · log 0 = 0, so a prior with p(N = l) = 0 or 1 scores the values it allows
        lp = torch.xlogy(value, a) + torch.xlogy(1 - value, 1 - a)
        return self.running * lp

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        p = self.hazard.to(dtype=self.running.dtype, device=self.running.device).expand(shape)
        return torch.bernoulli(p)
