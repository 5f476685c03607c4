"""Amortized guides ``q(z | x)`` for PACT models: halting heads on the model's own activations."""

from .empty import EmptyGuide
from .halting_guide import HaltingGuide
from .lstm_guide import LSTMHaltingGuide, LSTMRelaxedBernoulliGuide, LSTMStraightThroughGuide, get_lstm_guide
from .relaxed_bernoulli import RelaxedBernoulliGuide, StraightThroughGuide

#: the guides ``pact-pyro train --guide`` knows, by name
GUIDES = {"relaxed": RelaxedBernoulliGuide, "straight-through": StraightThroughGuide}


def get_guide(name: str, model, **kwargs) -> HaltingGuide:
    """Build a guide by name: ``relaxed`` (Concrete) or ``straight-through``."""
    if name not in GUIDES:
        raise ValueError(f"guide must be one of {sorted(GUIDES)}, got {name!r}")
    return GUIDES[name](model, **kwargs)


__all__ = [
    "HaltingGuide",
    "RelaxedBernoulliGuide",
    "StraightThroughGuide",
    "GUIDES",
    "get_guide",
    "EmptyGuide",
]
__all__ += ["LSTMHaltingGuide", "LSTMRelaxedBernoulliGuide", "LSTMStraightThroughGuide", "get_lstm_guide"]
