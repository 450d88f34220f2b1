"""The pruning methods by their command-line names, and the stages each set of flags makes.

``slimline prune`` turns its flags into stages here and runs them as a recipe
(``slimline.recipe.compress``): loading, calibrating and saving live in the recipe runner only."""

from __future__ import annotations

from typing import Any

from slimline.core import TechniqueConfig
from slimline.errors import ConfigError

METHODS = {"magnitude": "Magnitude", "wanda": "Wanda", "sparsegpt": "SparseGpt"}


def parse_structured(spec: str | None) -> list[TechniqueConfig]:
    """``"heads=0.25,mlp=0.3,blocks=4"`` -> [PruneHeads, PruneMlp, PruneBlocks] (that order:
    blocks last, so their ranking sees the already-narrowed model)."""
    from slimline.prune.structured import PruneBlocks, PruneHeads, PruneMlp

    if not spec:
        return []
    found: dict[str, str] = {}
    for part in spec.split(","):
        key, sep, val = part.strip().partition("=")
        if not sep or key not in ("heads", "mlp", "blocks") or key in found:
            raise ConfigError(
                f"structured spec {spec!r}: cannot read {part!r}",
                "use e.g. heads=0.25,mlp=0.3,blocks=4 (each at most once)",
            )
        found[key] = val
    out: list[TechniqueConfig] = []
    try:
        if "heads" in found:
            out.append(PruneHeads(amount=float(found["heads"])))
        if "mlp" in found:
            out.append(PruneMlp(amount=float(found["mlp"])))
        if "blocks" in found:
            out.append(PruneBlocks(remove=int(found["blocks"])))
    except ValueError as e:
        raise ConfigError(
            f"structured spec {spec!r}: {e}", "heads/mlp take fractions, blocks a count"
        ) from e
    return out


def prune_stages(
    method: str | None = None,
    sparsity: float | None = None,
    pattern: str | None = None,
    structured: str | None = None,
    ignore: list[str] | None = None,
    sparse_bits: int | None = None,
) -> list[TechniqueConfig]:
    """The stages ``slimline prune`` runs: structured removals first, then unstructured / N:M
    pruning kept as SparseLinear (bitmask + non-zeros, ``sparse_bits`` 4 or 8 to pack them)."""
    import slimline.prune as P

    steps = parse_structured(structured)
    if sparsity is not None or pattern is not None or method is not None:
        name = METHODS.get(method or "wanda")
        if name is None:
            raise ConfigError(f"unknown method {method!r}", f"use one of {', '.join(METHODS)}")
        params: dict[str, Any] = {
            "ignore": ignore if ignore is not None else ["lm_head"],
            "storage": "sparse",
            "storage_bits": sparse_bits,
        }
        if pattern is not None:
            params["pattern"] = pattern
        else:
            params["sparsity"] = 0.5 if sparsity is None else sparsity
        steps.append(getattr(P, name)(**params))
    if not steps:
        raise ConfigError(
            "nothing to prune",
            "give --sparsity, --pattern and/or --structured heads=..,mlp=..,blocks=..",
        )
    return steps
