"""Recipes: declare targets and stages in YAML, run them stage by stage (checkpointed,
resumable), check every target, and get a registered, signed artifact and a report."""

from slimline.recipe.runner import RunResult, run_recipe
from slimline.recipe.schema import (
    EvalSuite,
    Recipe,
    Targets,
    check_recipe,
    load_recipe,
    parse_recipe,
    shipped_recipes,
)
from slimline.recipe.targets import Verdict, check_targets

__all__ = [
    "EvalSuite",
    "Recipe",
    "RunResult",
    "Targets",
    "Verdict",
    "check_recipe",
    "check_targets",
    "load_recipe",
    "parse_recipe",
    "run_recipe",
    "shipped_recipes",
]
