"""pact-pyro: Probabilistic Adaptive Computation Time (Figurnov, Sobolev, Vetrov; arXiv 1712.00386) in Pyro."""

from .halting import expected_units, still_running, stick_breaking, threshold_units
from .objective import MAPObjective
from .priors import CategoricalUnits, TruncatedGeometric, TruncatedPoisson, UniformUnits, UnitsPrior

__version__ = "0.1.0"

__all__ = [
    "MAPObjective",
    "UnitsPrior",
    "TruncatedGeometric",
    "UniformUnits",
    "TruncatedPoisson",
    "CategoricalUnits",
    "stick_breaking",
    "still_running",
    "expected_units",
    "threshold_units",
]
