"""PACT-LSTM: the PACT generative model over a pondering LSTM (one halting site per input step).

For each example and input step ``t`` (``M`` = ``max_ponder``):

1. apply the cell ``M`` times, ``s_t^n = S(s_t^{n-1}, x_t^n)`` (training executes all of them), and expose
   ``[h, c]`` of ``s_t^1..s_t^{M-1}`` as the deterministic site ``ponder_s_{t}`` ``[B, M-1, 2H]`` (the guide's
   halting head reads it: one pass per step);
2. ``z_t ~ HaltingPrior(p(N))`` (site ``ponder_z_{t}``, event ``[M-1]``), the *same* prior classes as the
   ResNet — a guide replaces it by a relaxed sample;
3. the state handed on is the stick-breaking mixture ``s_t = Σ_n w_n s_t^n`` (``w = stick_breaking(z_t)``;
   ``= s_t^{N_t}`` at binary ``z``), output logits ``readout(h_t)``.

Likelihood inside ``pyro.plate("data", B)``: with ``classes=None`` one label per sequence read at the last
step, ``y ~ Categorical(logits_T)`` (``y`` ``[B]``); with ``classes=C`` each step emits ``K = O / C`` labels,
``y`` ``[B, T, K]`` with ``-1`` where a step has no target (masked out).
"""

from __future__ import annotations

import itertools

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule

from pact_pyro.halting import stick_breaking, still_running
from pact_pyro.nn.lstm import PonderLSTM, state_features
from pact_pyro.priors import TruncatedGeometric, UnitsPrior
from pact_pyro.sites import DATA_PLATE, OBS_SITE, ponder_halting_site, ponder_state_site, ponder_units_site

__all__ = ["PACTLSTM", "pact_lstm", "sequence_likelihood"]

_uid = itertools.count()


def sequence_likelihood(logits: torch.Tensor, y: torch.Tensor | None, classes: int | None) -> torch.Tensor:
    """The observation site ``y`` for step logits ``[B, T, O]`` (see the module docstring)."""
    if classes is None:
        return pyro.sample(OBS_SITE, dist.Categorical(logits=logits[:, -1]), obs=y)
    B, T, O = logits.shape
    lg = logits.reshape(B, T, O // classes, classes)
    if y is None:
        return pyro.sample(OBS_SITE, dist.Categorical(logits=lg).to_event(2))
    mask = y >= 0
    return pyro.sample(OBS_SITE, dist.Categorical(logits=lg).mask(mask).to_event(2), obs=y.clamp(min=0))


def check_targets(y: torch.Tensor | None, B: int, T: int, output_size: int, classes: int | None) -> None:
    if y is None:
        return
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"y must be an integer tensor, got {getattr(y, 'dtype', type(y).__name__)}")
    if classes is None:
        if y.shape != (B,):
            raise ValueError(f"y must have shape [{B}] (one label per sequence), got {tuple(y.shape)}")
        if bool(((y < 0) | (y >= output_size)).any()):
            raise ValueError(f"y must lie in 0..{output_size - 1}, got {int(y.min())}..{int(y.max())}")
        return
    K = output_size // classes
    if y.shape != (B, T, K):
        raise ValueError(f"y must have shape [{B}, {T}, {K}] (-1 = no target), got {tuple(y.shape)}")
    if bool(((y < -1) | (y >= classes)).any()):
        raise ValueError(f"y must lie in -1..{classes - 1}, got {int(y.min())}..{int(y.max())}")


class PACTLSTM(PyroModule):
    """PACT generative model over a :class:`~pact_pyro.nn.lstm.PonderLSTM`.

    :param net: the pondering LSTM (plain torch). :param prior: ``p(N_t)`` for every step (default
        ``TruncatedGeometric(0.01)``). :param classes: ``None`` (one label per sequence) or classes per label.

    ``prior_weight`` (default 1) scales ``log p(z)`` (the trainer ramps it, i.e. ``τ``, from 0).
    ``max_ponder = 1`` is a plain LSTM: no halting sites.
    """

    def __init__(self, net: PonderLSTM, prior: UnitsPrior | None = None, classes: int | None = None) -> None:
        super().__init__()
        self.net = net
        prior = TruncatedGeometric(0.01) if prior is None else prior
        if not isinstance(prior, UnitsPrior):
            raise ValueError(f"prior must be a UnitsPrior, got {prior!r}")
        prior.log_probs(net.max_ponder)  # fail now on a CategoricalUnits of the wrong length
        if classes is not None and (classes < 2 or net.output_size % classes):
            raise ValueError(
                f"classes must be >= 2 and divide output_size={net.output_size}, got {classes!r}"
            )
        self.prior = prior
        self.classes = classes
        self.prior_weight = 1.0
        self.pyro_id = f"pactlstm{next(_uid)}"

    @property
    def max_ponder(self) -> int:
        return self.net.max_ponder

    @property
    def hidden_size(self) -> int:
        return self.net.hidden_size

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The generative program. ``x``: ``[B, T, I]``; ``y``: see the module docstring. Returns ``y``."""
        self.net.check_input(x)
        B, T, _ = x.shape
        check_targets(y, B, T, self.net.output_size, self.classes)
        net = pyro.module(self.pyro_id, self.net)
        M = net.max_ponder
        with pyro.plate(DATA_PLATE, B):
            state = net.initial_state(x)
            outs = []
            for t in range(T):
                hs, cs = net.ponder(x[:, t], state, M)  # [B, M, H] each
                if M == 1:
                    state = (hs[:, 0], cs[:, 0])
                else:
                    pyro.deterministic(
                        ponder_state_site(t), state_features(hs[:, :-1], cs[:, :-1]), event_dim=2
                    )
                    w = self.prior_weight  # poutine.scale needs > 0; weight 0 masks log p(z) out
                    with poutine.scale(scale=w) if w > 0 else poutine.mask(mask=False):
                        z = pyro.sample(ponder_halting_site(t), self.prior.site(M))  # [B, M-1]
                    pyro.deterministic(ponder_units_site(t), still_running(z).sum(-1))  # Ñ_t
                    w = stick_breaking(z).unsqueeze(-1)  # [B, M, 1]
                    state = ((w * hs).sum(1), (w * cs).sum(1))
                outs.append(net.readout(state[0]))
            return sequence_likelihood(torch.stack(outs, 1), y, self.classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x, y)


def pact_lstm(
    input_size: int,
    hidden_size: int,
    output_size: int,
    max_ponder: int = 12,
    prior: UnitsPrior | None = None,
    classes: int | None = None,
) -> PACTLSTM:
    """PACT-LSTM with at most ``max_ponder`` cell applications per input step (``M = 1``: plain LSTM)."""
    return PACTLSTM(PonderLSTM(input_size, hidden_size, output_size, max_ponder), prior, classes)
