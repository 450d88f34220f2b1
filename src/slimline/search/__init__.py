"""Multi-objective search over recipe parameters (Optuna): a recipe's ``search:`` section, run
by ``slimline run`` as a study whose trials are recipe runs, and its Pareto front."""

from slimline.search.cost import Estimate, estimate, model_shape
from slimline.search.run import (
    SearchResult,
    TrialResult,
    front_layers,
    join_study,
    pareto_front,
    plot_front,
    report_study,
    run_search,
)
from slimline.search.space import suggest, validate_search, validate_space

__all__ = [
    "Estimate",
    "SearchResult",
    "TrialResult",
    "estimate",
    "front_layers",
    "join_study",
    "model_shape",
    "pareto_front",
    "plot_front",
    "report_study",
    "run_search",
    "suggest",
    "validate_search",
    "validate_space",
]
