"""ACT-LSTM (Graves, arXiv 1603.08983): the baseline of PACT-LSTM, a Pyro program with no latent variables.

At input step ``t`` all ``M`` cell applications run in training; the halting head gives
``h_t^n = σ(w · [h, c](s_t^n) + b)`` for ``n < M`` and :func:`~pact_pyro.halting.act_halting` gives
``N_t``, the remainder ``R_t``, the weights ``w_t`` (``h_t^n`` before ``N_t``, ``R_t`` at ``N_t``) and the
ponder cost ``ρ_t = N_t + R_t``. The state handed on is the mean field ``s_t = Σ_n w_t^n s_t^n``. The ponder
cost enters as ``pyro.factor("act_cost", -τ Σ_t ρ_t)`` inside the data plate, so ``MAPObjective`` is ACT's
loss ``CE + τ Σ_t mean_i ρ_{t,i}``; it trains with :class:`~pact_pyro.guides.EmptyGuide`.
Test time: :func:`act_lstm_evaluate` (deterministic, per-example early exit, weighted accumulator).
"""

from __future__ import annotations

import itertools

import pyro
import torch
from pyro.nn import PyroModule

from pact_pyro.halting import ACT_EPS, act_halting
from pact_pyro.nn.lstm import LSTMHaltingHead, PonderLSTM, state_features
from pact_pyro.sites import ACT_COST_SITE, DATA_PLATE, ponder_units_site

from .pact_lstm import check_targets, sequence_likelihood

__all__ = ["ACTLSTM", "act_lstm", "act_lstm_evaluate"]

_uid = itertools.count()


class ACTLSTM(PyroModule):
    """ACT over a :class:`~pact_pyro.nn.lstm.PonderLSTM`.

    :param net: the pondering LSTM. :param tau: time penalty ``τ`` per ponder step (``≥ 0``).
    :param eps: ACT's ``ε``. :param classes: as in :class:`~pact_pyro.models.pact_lstm.PACTLSTM`.
    :param bias_init: initial halting-logit bias.

    ``prior_weight`` scales ``τ`` (the trainer ramps it from 0).
    """

    def __init__(
        self,
        net: PonderLSTM,
        tau: float = 0.01,
        eps: float = ACT_EPS,
        classes: int | None = None,
        bias_init: float = -3.0,
    ) -> None:
        super().__init__()
        if not float(tau) >= 0:
            raise ValueError(f"tau must be >= 0, got {tau!r}")
        if classes is not None and (classes < 2 or net.output_size % classes):
            raise ValueError(
                f"classes must be >= 2 and divide output_size={net.output_size}, got {classes!r}"
            )
        self.net = net
        self.head = LSTMHaltingHead(net.hidden_size, bias_init)
        self.tau, self.eps, self.classes = float(tau), float(eps), classes
        self.prior_weight = 1.0
        self.pyro_id = f"actlstm{next(_uid)}"

    @property
    def max_ponder(self) -> int:
        return self.net.max_ponder

    @property
    def hidden_size(self) -> int:
        return self.net.hidden_size

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``[B, T, I]``; ``y`` as in PACT-LSTM. Returns ``y``."""
        self.net.check_input(x)
        B, T, _ = x.shape
        check_targets(y, B, T, self.net.output_size, self.classes)
        pyro.module(self.pyro_id, self)
        net, M = self.net, self.net.max_ponder
        with pyro.plate(DATA_PLATE, B):
            state = net.initial_state(x)
            outs, cost = [], x.new_zeros(B)
            for t in range(T):
                hs, cs = net.ponder(x[:, t], state, M)  # [B, M, H]
                h = torch.sigmoid(self.head(state_features(hs[:, :-1], cs[:, :-1])))  # [B, M-1]
                r = act_halting(h, self.eps)
                pyro.deterministic(ponder_units_site(t), r.ponder_cost)  # N_t + R_t
                w = r.weights.unsqueeze(-1)  # [B, M, 1]
                state = ((w * hs).sum(1), (w * cs).sum(1))
                cost = cost + r.ponder_cost
                outs.append(net.readout(state[0]))
            pyro.factor(ACT_COST_SITE, -self.tau * self.prior_weight * cost)
            return sequence_likelihood(torch.stack(outs, 1), y, self.classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x, y)


@torch.no_grad()
def act_lstm_evaluate(model: ACTLSTM, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic ACT inference with early exit: at step ``t`` each example applies the cell until
    ``S_n = h^1 + … + h^n ≥ 1 - ε`` (or ``n = M``), accumulating ``w^n s^n`` (``w^n = h^n``, ``R`` at ``N``)
    in a full-size accumulator, which is the next state. Returns ``logits [B, T, O]``, ``units [B, T]``.
    """
    net, M = model.net, model.net.max_ponder
    net.check_input(x)
    B, T, _ = x.shape
    thresh = torch.tensor(1.0 - model.eps, dtype=torch.float32)
    units = torch.zeros(B, T, dtype=torch.int64, device=x.device)
    h_state, c_state = net.initial_state(x)
    outs = []
    for t in range(T):
        x_t = x[:, t]
        active = torch.arange(B, device=x.device)
        hc = (h_state, c_state)
        acc_h, acc_c = torch.zeros_like(h_state), torch.zeros_like(c_state)
        s = torch.zeros(B, dtype=torch.float32, device=x.device)
        for n in range(M):
            hc = net.step(x_t[active], hc, n == 0)
            units[active, t] += 1
            if n < M - 1:
                p = torch.sigmoid(model.head(state_features(*hc)))
                s_new = s[active] + p.to(torch.float32)
                stop = s_new >= thresh
            else:
                p = torch.ones(active.numel(), dtype=x.dtype, device=x.device)
                s_new, stop = s[active] + 1, torch.ones(active.numel(), dtype=torch.bool, device=x.device)
            w = torch.where(stop, (1.0 - s[active]).to(x.dtype), p).unsqueeze(-1)
            acc_h = acc_h.index_add(0, active, w * hc[0])
            acc_c = acc_c.index_add(0, active, w * hc[1])
            s[active] = s_new
            keep = ~stop
            active = active[keep]
            if active.numel() == 0:
                break
            hc = (hc[0][keep], hc[1][keep])
        h_state, c_state = acc_h, acc_c
        outs.append(net.readout(h_state))
    return torch.stack(outs, 1), units


def act_lstm(
    input_size: int,
    hidden_size: int,
    output_size: int,
    max_ponder: int = 12,
    tau: float = 0.01,
    eps: float = ACT_EPS,
    classes: int | None = None,
) -> ACTLSTM:
    """ACT-LSTM with at most ``max_ponder`` cell applications per input step."""
    return ACTLSTM(PonderLSTM(input_size, hidden_size, output_size, max_ponder), tau, eps, classes)
