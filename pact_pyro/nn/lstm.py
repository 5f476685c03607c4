"""Pondering LSTM (Graves, arXiv 1603.08983, §2) in plain torch: no Pyro sites.

At input step ``t`` the LSTM cell ``S`` is applied ``n = 1..N_t`` times to the state
``s = (h, c)`` (hidden, cell; each ``[B, H]``)::

    s_t^n = S(s_t^{n-1}, x_t^n),   x_t^1 = [x_t, 1],  x_t^n = [x_t, 0] (n > 1),   s_t^0 = s_{t-1}

(the extra input is Graves' "first ponder step" flag). A halting head reads ``s_t^n``:
``h_t^n = σ(w · [h_t^n, c_t^n] + b)`` (one head shared over ``n`` and ``t``; bias ``-3`` so that
``h ≈ 0.047`` at first). The state handed to step ``t + 1`` is ``s_t = s_t^{N_t}`` (thresholding), the
stick-breaking mixture ``Σ_n w_n s_t^n`` (PACT training) or ACT's mean field. The output is
``readout(h_t)`` (``[B, O]``).

Costs by SACT's rules (linear layers only, 2 FLOPs per multiply-add), see :meth:`PonderLSTM.flops`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["PonderLSTM", "LSTMHaltingHead", "ponder_threshold", "ponder_masked", "state_features"]

State = tuple[torch.Tensor, torch.Tensor]


def state_features(h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Input of the halting head: ``[h, c]`` (``[..., 2H]``)."""
    return torch.cat([h, c], dim=-1)


class LSTMHaltingHead(nn.Module):
    """Halting logit ``w · [h, c] + b`` of one pondered state: ``[..., 2H] → [...]``."""

    def __init__(self, hidden_size: int, bias_init: float = -3.0) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * hidden_size, 1)
        nn.init.constant_(self.linear.bias, float(bias_init))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.linear(s).squeeze(-1)

    def flops(self) -> int:
        return 2 * self.linear.in_features


class PonderLSTM(nn.Module):
    """LSTM cell with Graves' first-step flag plus a linear readout.

    :param input_size: ``I`` (features per input step). :param hidden_size: ``H``.
    :param output_size: ``O`` (logits per step). :param max_ponder: ``M ≥ 1`` applications per step at most.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int, max_ponder: int) -> None:
        super().__init__()
        for name, v in (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("output_size", output_size),
            ("max_ponder", max_ponder),
        ):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, output_size
        self.max_ponder = max_ponder
        self.cell = nn.LSTMCell(input_size + 1, hidden_size)
        self.readout = nn.Linear(hidden_size, output_size)

    def check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(
                f"x must be a [B, T, {self.input_size}] tensor, got {tuple(getattr(x, 'shape', ())) or x!r}"
            )
        if not x.is_floating_point():
            raise TypeError(f"x must be floating point, got dtype {x.dtype}")

    def initial_state(self, x: torch.Tensor) -> State:
        """Zero ``(h, c)``, each ``[B, H]``, for ``x`` ``[B, T, I]``."""
        z = x.new_zeros(x.shape[0], self.hidden_size)
        return z, z

    def step(self, x_t: torch.Tensor, state: State, first: bool) -> State:
        """One cell application ``s^n = S(s^{n-1}, [x_t, δ_{n,1}])``; ``x_t`` ``[B, I]``."""
        flag = x_t.new_full((x_t.shape[0], 1), 1.0 if first else 0.0)
        return self.cell(torch.cat([x_t, flag], dim=-1), state)

    def ponder(self, x_t: torch.Tensor, state: State, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """All states ``s^1..s^n`` of one input step: ``(h, c)``, each ``[B, n, H]``."""
        hs, cs = [], []
        for k in range(n):
            state = self.step(x_t, state, k == 0)
            hs.append(state[0])
            cs.append(state[1])
        return torch.stack(hs, 1), torch.stack(cs, 1)

    def flops(self, head: nn.Module | None = None) -> dict[str, int]:
        """Per-example costs: one cell application, one halting head, one readout."""
        I1, H = self.input_size + 1, self.hidden_size
        return {
            "cell": 2 * 4 * H * (I1 + H),
            "head": head.flops() if head is not None else 0,
            "readout": 2 * H * self.output_size,
        }


def _decide(
    logits: torch.Tensor, threshold: float, mode: str, generator: torch.Generator | None
) -> torch.Tensor:
    h = torch.sigmoid(logits)
    if mode == "threshold":
        return h >= threshold
    if mode == "sample":
        return torch.rand(h.shape, generator=generator, device=h.device, dtype=h.dtype) < h
    raise ValueError(f"mode must be 'threshold' or 'sample', got {mode!r}")


@torch.no_grad()
def ponder_threshold(
    net: PonderLSTM,
    x: torch.Tensor,
    halting_logits: Callable[[torch.Tensor], torch.Tensor] | None,
    threshold: float = 0.5,
    mode: str = "threshold",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Test-time PACT pondering with real early exit.

    At each step ``t`` every example runs ``s^1``; after application ``n < M`` it stops if
    ``h^n = σ(halting_logits(s^n)) ≥ threshold`` (or, ``mode="sample"``, with probability ``h^n``). Stopped
    examples leave the batch (``index_select``/``index_copy``), so compute follows the decisions; the state
    passed on is ``s^{N_t}``.

    :param x: ``[B, T, I]``. :param halting_logits: ``[k, 2H] → [k]`` (``None``: always ``M`` steps).
    :returns: ``logits [B, T, O]`` and ``units [B, T]`` (``N_t ∈ 1..M``, int64).
    """
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    net.check_input(x)
    B, T, _ = x.shape
    h, c = net.initial_state(x)
    units = torch.ones(B, T, dtype=torch.int64, device=x.device)
    outs = []
    for t in range(T):
        x_t = x[:, t]
        h, c = net.step(x_t, (h, c), True)
        active = torch.arange(B, device=x.device)
        for _ in range(1, net.max_ponder):
            if halting_logits is not None:
                stop = _decide(
                    halting_logits(state_features(h[active], c[active])), threshold, mode, generator
                )
                active = active[~stop]
            if active.numel() == 0:
                break
            ha, ca = net.step(x_t[active], (h[active], c[active]), False)
            h, c = h.index_copy(0, active, ha), c.index_copy(0, active, ca)
            units[active, t] += 1
        outs.append(net.readout(h))
    return torch.stack(outs, 1), units


@torch.no_grad()
def ponder_masked(
    net: PonderLSTM,
    x: torch.Tensor,
    halting_logits: Callable[[torch.Tensor], torch.Tensor],
    threshold: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for :func:`ponder_threshold` without early exit: run all ``M`` applications of every example,
    decide ``N_t = min{n : h^n ≥ threshold}`` (else ``M``) and select ``s^{N_t}`` with a one-hot mask."""
    from pact_pyro.halting import stick_breaking, threshold_units, units_to_z

    B, T, _ = x.shape
    M = net.max_ponder
    state = net.initial_state(x)
    outs, units = [], []
    for t in range(T):
        hs, cs = net.ponder(x[:, t], state, M)  # [B, M, H]
        if M > 1:
            hprob = torch.sigmoid(halting_logits(state_features(hs[:, :-1], cs[:, :-1])))  # [B, M-1]
            n = threshold_units(hprob, threshold)
        else:
            n = torch.ones(B, dtype=torch.int64, device=x.device)
        w = stick_breaking(units_to_z(n, M, dtype=x.dtype)).unsqueeze(-1)  # one-hot at N_t, [B, M, 1]
        state = ((w * hs).sum(1), (w * cs).sum(1))
        outs.append(net.readout(state[0]))
        units.append(n)
    return torch.stack(outs, 1), torch.stack(units, 1)
