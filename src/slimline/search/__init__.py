"""Multi-objective search over recipe parameters and the Pareto front."""

from slimline.search.run import SearchResult, TrialResult, pareto_front, plot_front, search
from slimline.search.space import suggest, validate_space

__all__ = [
    "SearchResult",
    "TrialResult",
    "pareto_front",
    "plot_front",
    "search",
    "suggest",
    "validate_space",
]
