"""The model ↔ guide contract: plate and site names shared by every PACT model and guide.

Blocks ``b`` and units ``l`` are 0-based in names and 1-based in the maths (``z_0`` holds
``z^1..z^{L-1}`` of the first block).

=====================  ===========================  =======================================
site                   shape (inside plate "data")  meaning
=====================  ===========================  =======================================
``u_{b}_{l}``          ``[B, C, H, W]``             ``u^{l+1}``, the activation after unit ``l+1``
                                                    (deterministic; read by the guide's heads)
``z_{b}``              ``[B, L_b - 1]``             halting values ``z^1..z^{L-1}`` of block ``b``
``units_{b}``          ``[B]``                      ``Ñ_b = Σ_l e_l`` (deterministic)
``y``                  ``[B]``                      the label (observed when given)
=====================  ===========================  =======================================

Spatial models (one halting value per position; ``H_b × W_b`` the block's resolution):

=====================  ===========================  =======================================
``z_{b}_{l}``          ``[B, H_b, W_b]``            ``z^{l+1}(i, j)`` of block ``b``, one site per unit
                                                    ``l < L_b - 1`` (event dims ``H_b, W_b``)
``units_map_{b}``      ``[B, H_b, W_b]``            ``Ñ_b(i, j) = Σ_l e_l(i, j)`` (deterministic)
``units_{b}``          ``[B]``                      its mean over positions (deterministic)
``ponder_{b}``         ``[B]``                      SACT's ``-τ mean_ij ρ(i, j)`` (a factor)
=====================  ===========================  =======================================

Recurrent models (pondering LSTM; input step ``t``, 0-based, ``M`` ponder steps at most):

=====================  ===========================  =======================================
``ponder_s_{t}``       ``[B, M - 1, 2H]``           ``[h, c]`` of ``s_t^1..s_t^{M-1}`` (deterministic)
``ponder_z_{t}``       ``[B, M - 1]``               halting values ``z_t^1..z_t^{M-1}``
``ponder_units_{t}``   ``[B]``                      ``Ñ_t`` (PACT) or ``N_t + R_t`` (ACT), deterministic
``act_cost``           ``[B]``                      ACT's ``-τ Σ_t (N_t + R_t)`` (a factor)
=====================  ===========================  =======================================
"""

from __future__ import annotations

__all__ = ["DATA_PLATE", "halting_site", "activation_site", "units_site", "parse_halting_site", "OBS_SITE"]
__all__ += ["unit_halting_site", "units_map_site", "parse_unit_halting_site"]
__all__ += [
    "ponder_state_site",
    "ponder_halting_site",
    "ponder_units_site",
    "parse_ponder_site",
    "ACT_COST_SITE",
]

#: the ``pyro.factor`` site of an ACT-LSTM's ponder cost ``-τ Σ_t ρ_t``
ACT_COST_SITE = "act_cost"

#: the name of the ``pyro.plate`` over examples
DATA_PLATE = "data"
#: the observed label site ``y ~ Categorical(logits)``
OBS_SITE = "y"


def halting_site(block: int) -> str:
    """``z_{block}``: the halting latents of a block, event shape ``[L-1]``."""
    return f"z_{block}"


def activation_site(block: int, unit: int) -> str:
    """Name of ``u^{unit+1}`` of ``block`` (``unit`` 0-based)."""
    return f"u_{block}_{unit}"


def units_site(block: int) -> str:
    """``units_{block}``: a deterministic site recording ``N`` (or the relaxed ``Ñ``) per example."""
    return f"units_{block}"


def parse_halting_site(name: str) -> int | None:
    """The block index of a halting site name, or ``None`` for any other site."""
    if name.startswith("z_") and name[2:].isdigit():
        return int(name[2:])
    return None


def unit_halting_site(block: int, unit: int) -> str:
    """``z_{block}_{unit}``: one halting value per position, ``z^{unit+1}`` of ``block`` (spatial models)."""
    return f"z_{block}_{unit}"


def units_map_site(block: int) -> str:
    """``units_map_{block}``: the (relaxed) number of units per position ``[B, H, W]`` (spatial models)."""
    return f"units_map_{block}"


def parse_unit_halting_site(name: str) -> tuple[int, int] | None:
    """``(block, unit)`` of a per-unit halting site name (``z_{b}_{l}``), or ``None``."""
    parts = name.split("_")
    if len(parts) == 3 and parts[0] == "z" and parts[1].isdigit() and parts[2].isdigit():
        return int(parts[1]), int(parts[2])
    return None


def ponder_state_site(step: int) -> str:
    """Pondered states ``[h, c]`` of input step ``step`` (0-based) read by a recurrent guide's head."""
    return f"ponder_s_{step}"


def ponder_halting_site(step: int) -> str:
    """``ponder_z_{step}``: a PACT-LSTM's halting latents at input step ``t``, event shape ``[M-1]``."""
    return f"ponder_z_{step}"


def ponder_units_site(step: int) -> str:
    """``ponder_units_{step}``: the (relaxed) number of ponder steps at input step ``t``."""
    return f"ponder_units_{step}"


def parse_ponder_site(name: str) -> int | None:
    """The input step of a recurrent halting site name (``ponder_z_{t}``), or ``None``."""
    if name.startswith("ponder_z_") and name[9:].isdigit():
        return int(name[9:])
    return None
