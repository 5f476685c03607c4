"""pact-pyro: Probabilistic Adaptive Computation Time (Figurnov, Sobolev, Vetrov; arXiv 1712.00386).

``pact_pyro.threshold`` is the evaluation function (its module stays importable as
``from pact_pyro.threshold import evaluate_masked``); ``pact_pyro.load_run`` rebuilds a trained run.
"""

from .halting import expected_units, stick_breaking, still_running, threshold_units
from .objective import MAPObjective
from .priors import CategoricalUnits, TruncatedGeometric, TruncatedPoisson, UniformUnits, UnitsPrior
from .stream import threshold_stream
from .threshold import ThresholdResult, threshold  # noqa: F811 (the function shadows its module on purpose)
from .train import load_run

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
    "threshold",
    "ThresholdResult",
    "threshold_stream",
    "load_run",
]
