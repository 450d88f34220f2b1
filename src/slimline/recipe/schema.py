"""Recipe schema: a YAML file that declares the model, data, deployment targets, stages and the
evaluation suite, validated before any work starts.

A stage is one readable line, the technique's registered name mapped to its parameters
(STYLE.md)::

    stages:
      - quant.gptq: {bits: 4, group_size: 64}
      - prune.wanda: {sparsity: 0.5}

Stage kinds are looked up in the technique registry (``slimline.core``), never hard-wired here,
so a technique registered later is usable in a recipe without touching this file.

Quality targets (``max_quality_loss``) are relative to the baseline: a number is a ratio
(``ppl/python-docs: 1.10`` = at most 1.10 x the baseline's perplexity; for a higher-is-better
metric such as ``agree/top1`` it means at least baseline / 1.10), a string with a sign is an
absolute delta (``"+0.5"``: at most baseline + 0.5; ``"-0.02"`` on ``acc/x``: at least
baseline - 0.02).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from slimline.core import TechniqueConfig, get_technique, make_config, techniques
from slimline.errors import ConfigError, ModelLoadError, SlimlineError
from slimline.metrics import higher_is_better
from slimline.yamlio import load_yaml

QUALITY_METRICS = ("ppl", "bpb", "ece", "kl/teacher", "agree/top1")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSplit(_Strict):
    """Where a block set comes from and how much of it: ``{source, n, seq_len}``."""

    source: str = "python-docs"
    n: int = Field(16, ge=1)
    seq_len: int = Field(256, ge=8)


class Data(_Strict):
    calibration: DataSplit = DataSplit()
    train: DataSplit | None = None
    seed: int = 0


class Latency(_Strict):
    """How latency is measured (BENCH.md: 512-token prefill, 64 new tokens after 32, median)."""

    engine: str = "torch"
    threads: int = Field(2, ge=1)
    prefill_tokens: int = Field(512, ge=1)
    decode_tokens: int = Field(64, ge=1)
    prompt_tokens: int = Field(32, ge=1)
    repeats: int = Field(5, ge=1)


class EvalSuite(_Strict):
    """What is measured on the baseline and after every stage."""

    datasets: list[str] = ["python-docs"]
    windows: int = Field(16, ge=1)
    seq_len: int = Field(512, ge=8)
    metrics: list[str] = ["ppl", "kl/teacher", "agree/top1"]
    # one engine, or a list: the first is the primary (``latency/*``, ``memory/*``); each other
    # engine's figures carry its name (``latency/decode_tok_s@torch``), timed the same way
    latency: Latency | list[Latency] | None = Latency()
    every_stage: bool = True  # False: quality only on baseline and final model
    # a named evaluation suite (``slimline.eval.suites``) run once on the final model against
    # the baseline; its failed gates, and any extra ``gates`` lines, are missed targets
    suite: str | None = None
    gates: list[str] = []

    @model_serializer(mode="wrap")
    def _without_unset_suite(self, handler: Any) -> dict[str, Any]:
        # a recipe without a suite keeps the digest it had before these fields existed
        d = handler(self)
        if d.get("suite") is None and not d.get("gates"):
            d.pop("suite", None)
            d.pop("gates", None)
        return d

    @field_validator("suite")
    @classmethod
    def _known_suite(cls, v: str | None) -> str | None:
        if v is not None:
            from slimline.eval.suites import get_suite

            try:
                get_suite(v)
            except ConfigError as e:
                raise ValueError(f"{e.problem}; {e.fix}") from e
        return v

    @field_validator("gates")
    @classmethod
    def _known_gates(cls, v: list[str], info: ValidationInfo) -> list[str]:
        from slimline.eval.suites import Gate, known_metric

        if v and info.data.get("suite") is None:
            raise ValueError("gates are judged on a suite's metrics: set eval.suite (e.g. default)")
        for line in v:
            try:
                g = Gate.parse(line)
            except ConfigError as e:
                raise ValueError(f"{e.problem}; {e.fix}") from e
            if not known_metric(g.metric):
                raise ValueError(
                    f"unknown metric {g.metric!r} in gate {line!r}; name one from DEVELOPING.md "
                    "'Metric names' (e.g. kl/p99/python-docs, flip/cloze-shakespeare, passkey/2048)"
                )
        return v

    @field_validator("latency")
    @classmethod
    def _one_per_engine(cls, v: Latency | list[Latency] | None) -> Latency | list[Latency] | None:
        if isinstance(v, list):
            if not v:
                return None
            engines = [lat.engine for lat in v]
            dup = sorted({e for e in engines if engines.count(e) > 1})
            if dup:
                raise ValueError(f"engine {dup[0]!r} is listed twice; time each engine once")
            return v[0] if len(v) == 1 else v
        return v

    def latencies(self) -> list[Latency]:
        """The engines timed, primary first (empty when latency is off)."""
        lat = self.latency
        return [] if lat is None else list(lat) if isinstance(lat, list) else [lat]

    @field_validator("metrics")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in QUALITY_METRICS]
        if bad:
            raise ValueError(f"unknown metrics {bad}; allowed: {list(QUALITY_METRICS)}")
        return v


class EngineLimit(_Strict):
    """A latency limit and the engine/threads it must hold on."""

    value: float = Field(gt=0)
    engine: str = "torch"
    threads: int = Field(2, ge=1)


class Targets(_Strict):
    """Deployment targets, declared before compressing; every run says which it met."""

    max_size_mb: float | None = Field(None, gt=0)
    max_prefill_ms: EngineLimit | None = None
    min_decode_tok_s: EngineLimit | None = None
    max_memory_mb: float | None = Field(None, gt=0)
    max_quality_loss: dict[str, float | str] = {}

    @field_validator("max_prefill_ms", "min_decode_tok_s", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"value": v} if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @field_validator("max_quality_loss")
    @classmethod
    def _quality(cls, v: dict[str, float | str]) -> dict[str, float | str]:
        for metric, limit in v.items():
            try:
                higher_is_better(metric)
            except ConfigError as e:
                raise ValueError(f"{e.problem}; {e.fix}") from e
            parse_quality_limit(metric, limit)
        return v


def parse_quality_limit(metric: str, limit: float | str) -> tuple[str, float]:
    """``1.10`` -> ("ratio", 1.10); ``"+0.5"`` / ``"-0.02"`` -> ("delta", 0.5 / 0.02)."""
    if isinstance(limit, str):
        s = limit.strip()
        if re.fullmatch(r"[-+]\s*\d+(\.\d*)?([eE][-+]?\d+)?", s):
            return "delta", abs(float(s.replace(" ", "")))
        m = re.fullmatch(r"x?\s*(\d+(\.\d*)?)\s*x?", s)
        if not m:
            raise ValueError(
                f"{metric}: {limit!r} is neither a ratio (1.10) nor a delta ('+0.5' / '-0.02')"
            )
        limit = float(m.group(1))
    if limit <= 0:
        raise ValueError(f"{metric}: a ratio must be positive, got {limit}")
    if limit < 1:
        raise ValueError(
            f"{metric}: ratio {limit} < 1 asks the compressed model to beat the baseline; "
            "a loss ratio is >= 1 (1.0 = no loss allowed)"
        )
    return "ratio", float(limit)


EXPORT_ENGINES = {"gguf": "llamacpp", "onnx": "onnxruntime"}  # format -> engine that runs it
EXPORT_FORMATS = tuple(EXPORT_ENGINES)


class Export(_Strict):
    """An engine file made from the final artifact, verified in its engine and registered as a
    child of the artifact: ``export: [{format: gguf}]``."""

    format: str
    # GGUF only: dense weights (f32 | f16 | q8_0 | ...; None = the default), token embedding /
    # tied head type (auto = as llama.cpp). ONNX keeps dense weights fp32, grids as MatMulNBits
    qtype: str | None = None
    embed_type: str = "auto"
    threads: int = Field(2, ge=1)  # engine threads for verification and evaluation
    # quality inside the engine on the recipe's eval windows, beside the baseline's f32 file
    evaluate: bool = True

    @field_validator("format")
    @classmethod
    def _format(cls, v: str) -> str:
        if v not in EXPORT_FORMATS:
            raise ValueError(f"unknown export format {v!r}; formats: {', '.join(EXPORT_FORMATS)}")
        return v

    @model_validator(mode="after")
    def _gguf_types(self) -> Export:
        if self.format != "gguf" and (self.qtype is not None or self.embed_type != "auto"):
            raise ValueError(f"qtype and embed_type are GGUF settings, not {self.format}'s")
        return self


class SearchBudget(_Strict):
    """How much a search may spend: ``trials`` finished trials in the study, and/or ``minutes``
    of wall time per worker (no new trial starts after that)."""

    trials: int | None = None
    minutes: float | None = None

    @field_validator("trials", "minutes")
    @classmethod
    def _positive(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError(f"a budget of {v} runs nothing; give trials >= 1 or minutes > 0")
        return v

    @model_validator(mode="after")
    def _some(self) -> SearchBudget:
        if self.trials is None and self.minutes is None:
            raise ValueError("a search budget needs trials or minutes, e.g. {trials: 12}")
        return self


class Search(_Strict):
    """A ``search:`` section: ``slimline run`` then runs an Optuna study whose trials are runs
    of this recipe with the ``space`` substituted (see ``slimline.search``)."""

    space: dict[str, Any]
    objectives: dict[str, str]
    budget: SearchBudget
    storage: str | None = None  # an Optuna database URL or a file; default RUN_DIR/study.db
    study: str | None = None  # default: recipe name + work digest
    seed: int = 0
    near_front: int = Field(1, ge=0)  # non-dominated layers after the front that get latency
    heartbeat_s: float = Field(10.0, gt=0)  # a worker silent 3x this long is declared dead


class Recipe(_Strict):
    """A whole recipe. ``stages`` holds validated technique configs (``TechniqueConfig``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str
    description: str = ""
    model: str
    data: Data = Data()
    targets: Targets = Targets()
    stages: list[Any] = []
    eval: EvalSuite = EvalSuite()
    export: list[Export] = []
    search: Search | None = None
    # compress and evaluate one block at a time (slimline.recipe.streamed): true / false /
    # absent = when the model would not fit in memory twice (and every stage streams)
    stream: bool | None = None
    source: str | None = None  # the file it was read from (not part of the digest)
    _lines: dict = PrivateAttr(default_factory=dict)  # key path -> line in ``source``

    @field_validator("stages", mode="before")
    @classmethod
    def _stages(cls, v: Any) -> list[TechniqueConfig]:
        if v is None:
            return []
        if not isinstance(v, list):
            raise ValueError("stages must be a list of `- kind: {params}` items")
        out = []
        for i, item in enumerate(v):
            if isinstance(item, TechniqueConfig):
                out.append(item)
                continue
            kind, params = _stage_item(i, item)
            out.append(make_config(kind, params))
        return out

    @model_validator(mode="after")
    def _search_fits(self) -> Recipe:
        """A search space names stage parameters that exist and objectives this recipe measures."""
        if self.search is not None:
            from slimline.search.space import validate_search

            try:
                validate_search(self)
            except ConfigError as e:
                raise ValueError(f"{e.problem} ({e.fix})") from e
        return self

    def stage_dicts(self) -> list[dict[str, Any]]:
        """Stages as ``[{kind: params}]``, the YAML form."""
        return [{s.kind: s.model_dump(mode="json")} for s in self.stages]

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json", exclude={"stages", "source"})
        d["stages"] = self.stage_dicts()
        if not d.get("export"):  # absent = none: digests of recipes without exports stay put
            d.pop("export", None)
        if d.get("stream") is None:  # absent = automatic: digests of older recipes stay put
            d.pop("stream", None)
        return d

    def digest(self) -> str:
        """sha256 of the canonical recipe (everything, targets included)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def work_digest(self) -> str:
        """sha256 of what decides the model and its measurements (model, data, stages, eval):
        a run dir resumes only under the same work digest. Name, description and targets are
        left out, so tightening a target re-checks a finished run instead of redoing it; so are
        a stage's run-control fields (``TechniqueConfig.identity``): more distillation steps go
        on from where the run stopped."""
        # exports are made from the finished artifact: adding one re-uses the run, not redoes it
        skip = ("name", "description", "targets", "export", "stream")  # stream: same weights
        d = {k: v for k, v in self.to_dict().items() if k not in skip}
        d["stages"] = [s.identity() for s in self.stages]
        blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


def _stage_item(i: int, item: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) and len(item) == 1:
        ((kind, params),) = item.items()
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise ValueError(f"stage {i}: parameters of {kind} must be a mapping, got {params!r}")
        return str(kind), params
    raise ValueError(
        f"stage {i} must be one `kind: {{params}}` mapping (e.g. `- quant.rtn: {{bits: 4}}`), got {item!r}"
    )


# --- reading a file with line numbers in errors --------------------------------------------------


def _node_lines(node: yaml.Node, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """Map every key path in a composed YAML tree to its 1-based line."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            lines[(*path, key)] = k.start_mark.line + 1
            lines.update(
                {p: n for p, n in _node_lines(v, (*path, key)).items() if p != (*path, key)}
            )
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            lines.update(_node_lines(v, (*path, i)))
    return lines


def _line_for(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    for n in range(len(loc), -1, -1):
        if tuple(loc[:n]) in lines:
            return lines[tuple(loc[:n])]
    return None


def _allowed_hint(loc: tuple[Any, ...]) -> str:
    top = {
        "": list(Recipe.model_fields),
        "data": list(Data.model_fields),
        "targets": list(Targets.model_fields),
        "eval": list(EvalSuite.model_fields),
        "export": list(Export.model_fields),
    }
    key = str(loc[0]) if loc else ""
    if key in top and key:
        return f"fields of `{key}`: {', '.join(top[key])}"
    return f"top-level fields: {', '.join(f for f in top[''] if f != 'source')}"


def parse_recipe(data: Any, source: str = "<recipe>", lines: dict | None = None) -> Recipe:
    """Validate a recipe given as plain data; errors name ``source``, the field and its line."""
    lines = lines or {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: a recipe is a YAML mapping, got {type(data).__name__}",
            "start from a template: `slimline recipe show default`",
        )
    if isinstance(data.get("stages"), list):  # stage errors: say which stage, list the kinds
        for i, item in enumerate(data["stages"]):
            where = _where(source, lines, ("stages", i))
            try:
                kind, params = _stage_item(i, item)
            except ValueError as e:
                raise ConfigError(f"{where}: {e}", "write each stage as `- kind: {params}`") from e
            try:
                get_technique(kind)
            except ConfigError as e:
                raise ConfigError(
                    f"{where}: unknown stage kind {kind!r}",
                    f"registered kinds: {', '.join(techniques()) or '(none)'}",
                ) from e
            try:
                make_config(kind, params)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e.problem}", e.fix) from e
    try:
        recipe = Recipe(**data, source=source if source != "<recipe>" else None)
    except TypeError as e:
        raise ConfigError(f"{source}: {e}", _allowed_hint(())) from e
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        where = _where(source, lines, loc)
        field = ".".join(map(str, loc)) or "recipe"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            raise ConfigError(
                f"{where}: unknown field {field!r}", _allowed_hint(loc[:-1] or ())
            ) from e
        if err["type"] == "missing":
            raise ConfigError(f"{where}: missing field {field!r}", _allowed_hint(loc[:-1])) from e
        raise ConfigError(
            f"{where}: {field}: {msg}", _allowed_hint(loc[:-1] if len(loc) > 1 else loc)
        ) from e
    recipe._lines = lines
    check_targets_measured(recipe, source, lines)
    return recipe


COST_FAMILIES = ("latency/", "memory/", "flops/")  # measured by the latency profile
ALWAYS_MEASURED = ("size/bytes", "params/total", "params/nonzero")


def measured_metrics(recipe: Recipe) -> set[str]:
    """The metric names a run of ``recipe`` records on the baseline and the final model (what
    ``recipe.measure`` keeps: ``ppl/<dataset>``, ``kl/teacher`` pooled and per dataset, ...).
    Cost metrics (``latency/*``, ``memory/*``, ``flops/*``) are not listed one by one: they are
    measured when ``eval.latency`` is set with the torch engine."""
    s = recipe.eval
    names = set(ALWAYS_MEASURED)
    for m in s.metrics:
        if m in ("ppl", "bpb"):
            names |= {f"{m}/{ds}" for ds in s.datasets}
            continue
        names.add(m)
        if len(s.datasets) > 1:
            names |= {f"{m}/{ds}" for ds in s.datasets}
    # an export evaluated in its engine: its perplexity, KL and agreement there, tagged @engine
    for e in recipe.export:
        if e.evaluate and s.datasets:
            tag = "@" + EXPORT_ENGINES[e.format]
            engine = {f"ppl/{ds}" for ds in s.datasets} | {"kl/teacher", "agree/top1"}
            engine |= {f"{m}/{ds}" for m in ("kl/teacher", "agree/top1") for ds in s.datasets}
            names |= {n + tag for n in engine}
    return names


def _latency_measured(recipe: Recipe) -> bool:
    from slimline.engines import ENGINES

    lats = recipe.eval.latencies()
    return bool(lats) and all(lat.engine in ENGINES for lat in lats)


def _timed_on(recipe: Recipe, engine: str, threads: int) -> bool:
    return any((lat.engine, lat.threads) == (engine, threads) for lat in recipe.eval.latencies())


def check_targets_measured(
    recipe: Recipe, source: str = "<recipe>", lines: dict | None = None
) -> None:
    """Refuse a target on a metric the recipe never measures: its verdict could only ever be
    "not measured", so the recipe would run to the end without being judged."""
    lines = lines or {}
    s, t = recipe.eval, recipe.targets
    lats = s.latencies()
    for name, lim in (
        ("max_prefill_ms", t.max_prefill_ms),
        ("min_decode_tok_s", t.min_decode_tok_s),
    ):
        if lim is None:
            continue
        where = _where(source, lines, ("targets", name))
        if not _latency_measured(recipe):
            bad = [lat.engine for lat in lats]
            raise ConfigError(
                f"{where}: targets.{name} needs latency, but eval.latency "
                + ("is off" if not lats else f"names engines {bad}, not all of which are timed"),
                "set eval.latency (engine: torch | llamacpp | onnxruntime), or drop the target",
            )
        if not _timed_on(recipe, lim.engine, lim.threads):
            timed = ", ".join(f"{lat.engine} with {lat.threads} threads" for lat in lats)
            raise ConfigError(
                f"{where}: targets.{name} holds on {lim.engine} with {lim.threads} threads, but "
                f"eval.latency measures on {timed}",
                f"add {{engine: {lim.engine}, threads: {lim.threads}}} to eval.latency, "
                "or change the target's engine/threads to one that is timed",
            )
    if t.max_memory_mb is not None and not _latency_measured(recipe):
        raise ConfigError(
            f"{_where(source, lines, ('targets', 'max_memory_mb'))}: targets.max_memory_mb needs "
            "the memory profile, which runs with eval.latency, and eval.latency is off",
            "set eval.latency (engine: torch), or drop the target",
        )
    measured = measured_metrics(recipe)
    for metric in t.max_quality_loss:
        if metric in measured or (metric.startswith(COST_FAMILIES) and _latency_measured(recipe)):
            continue
        where = _where(source, lines, ("targets", "max_quality_loss", metric))
        quality = sorted(m for m in measured if m not in ALWAYS_MEASURED)
        raise ConfigError(
            f"{where}: target on {metric}, which this recipe never measures "
            f"(eval.metrics {s.metrics} on eval.datasets {s.datasets} give: {', '.join(quality) or 'none'})",
            "add the metric to eval.metrics and its dataset to eval.datasets, or target one that is measured",
        )


def _where(source: str, lines: dict, loc: tuple[Any, ...]) -> str:
    line = _line_for(lines, loc)
    return f"{source}:{line}" if line else source


def load_recipe(path: str | Path, *, check: bool = True) -> Recipe:
    """Read and validate a recipe file (or a shipped template name, e.g. ``default``).

    With ``check`` also verify what needs the model: that it loads, and that the targets do not
    contradict what the stages can reach (see ``check_recipe``).
    """
    p = resolve_recipe_path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read recipe {p}: {e}", "check the path") from e
    data, node = load_yaml(text, str(p))  # no aliases: a "billion laughs" file is refused here
    lines = _node_lines(node) if node is not None else {}
    recipe = parse_recipe(data, str(p), lines)
    if check:
        check_recipe(recipe, lines)
    return recipe


def shipped_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "recipes"


def shipped_recipes() -> dict[str, Path]:
    """Templates shipped with slimline, by name (file stem)."""
    return {p.stem: p for p in sorted(shipped_dir().glob("*.yaml"))}


def resolve_recipe_path(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.exists():
        return p
    shipped = shipped_recipes()
    if str(path) in shipped:
        return shipped[str(path)]
    raise ConfigError(
        f"recipe {str(path)!r} not found: no such file or shipped template",
        f"templates: {', '.join(shipped)} (`slimline recipe list`)",
    )


# --- checks that need the model: it loads, and the targets are reachable --------------------------


def model_params(spec: str, lm: Any = None) -> dict[str, int]:
    """Parameter counts of ``spec`` (or of the already loaded ``lm``): total, and the part in
    Linear layers inside the blocks, which is what quantizers and pruners shrink."""
    from torch import nn

    from slimline.models import load_model

    if lm is None:
        lm = load_model(spec)
    model, arch = lm.model, lm.arch
    prefix = arch.block_prefix(model) + "."
    seen: set[int] = set()
    total = linear = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name.startswith(prefix):
            linear += m.weight.numel()
    return {"total": total, "block_linear": linear}


def size_lower_bound_mb(recipe: Recipe, params: dict[str, int]) -> float | None:
    """The smallest artifact the stages can possibly produce, or None when it cannot be bounded.

    Read from what each stage's config declares (``TechniqueConfig.size_effect``), never guessed
    from field names: block Linear weights go to the fewest bits any stage may store them in (32
    when none quantizes), everything else (embeddings, norms) stays at 16 bits at the very least;
    zeroed weights are taken as free (a sparse format can skip them) and scales/zeros/masks as
    costless, so the bound is never above what is reachable. A stage that declares nothing
    (it removes parameters, trains, factorises) leaves no provable bound."""
    effects = [s.size_effect() for s in recipe.stages]
    if any(e is None for e in effects):
        return None
    bits = [e.bits for e in effects if e is not None and e.bits is not None]
    b = min(bits) if bits else 32.0
    kept = min([e.kept for e in effects if e is not None] or [1.0])
    other = params["total"] - params["block_linear"]
    rest_bits = 16.0 if bits else 32.0
    return (params["block_linear"] * kept * b / 8 + other * rest_bits / 8) / 1e6


def check_data(recipe: Recipe, lines: dict | None = None, tokenizer: Any = None) -> None:
    """Every data source the recipe names exists and holds text; with the model's ``tokenizer``,
    the calibration and eval blocks are built exactly as the run will build them (so too little
    text, or calibration re-using each token many times, fails now, not after the baseline)."""
    from slimline.data import calibration_blocks, eval_blocks, text_part
    from slimline.data.blocks import mixed_sources

    lines = lines or {}
    src = recipe.source or recipe.name
    d = recipe.data
    uses: list[tuple[tuple[Any, ...], str, str]] = [
        (("data", "calibration", "source"), d.calibration.source, "fit")
    ]
    if d.train is not None:
        uses.append((("data", "train", "source"), d.train.source, "fit"))
    uses += [(("eval", "datasets", i), ds, "eval") for i, ds in enumerate(recipe.eval.datasets)]
    for loc, source, part in uses:
        try:
            for one in mixed_sources(source) if part == "fit" else [source]:
                text_part(one, part)
            if tokenizer is None:
                continue
            if loc[:2] == ("data", "calibration"):
                calibration_blocks(
                    tokenizer, source, d.calibration.n, d.calibration.seq_len, d.seed
                )
            elif part == "eval":
                eval_blocks(tokenizer, source, recipe.eval.seq_len, recipe.eval.windows)
        except SlimlineError as e:
            where = _where(src, lines, loc)
            raise type(e)(f"{where}: {'.'.join(map(str, loc[:2]))}: {e.problem}", e.fix) from e


def check_recipe(
    recipe: Recipe, lines: dict | None = None, *, model: bool = True
) -> dict[str, Any]:
    """Checks beyond the schema: the data sources exist; with ``model``, the model loads the way
    the run will load it (complete safetensors weights, finite, no pickle, no model code, a
    tokenizer), its calibration/eval blocks can be built, and no target contradicts what the
    stages can reach.

    Raises ``ModelLoadError`` / ``DataError`` / ``TargetError``; returns what it found."""
    from slimline.errors import TargetError
    from slimline.models import load_model

    lines = lines or recipe._lines
    src = recipe.source or recipe.name
    if not model:
        check_data(recipe, lines)
        return {}
    where = _where(src, lines, ("model",))
    try:
        lm = load_model(recipe.model)
    except SlimlineError as e:
        raise type(e)(f"{where}: model {recipe.model!r} does not load: {e.problem}", e.fix) from e
    if lm.tokenizer is None:
        raise ModelLoadError(
            f"{where}: model {recipe.model!r} has no tokenizer; a recipe calibrates and evaluates on text",
            "save the tokenizer with the model (tokenizer.save_pretrained(DIR), or save_artifact(model, tokenizer, DIR))",
        )
    check_data(recipe, lines, lm.tokenizer)
    params = model_params(recipe.model, lm)
    del lm
    bound = size_lower_bound_mb(recipe, params)
    t = recipe.targets
    if bound is not None and t.max_size_mb is not None and t.max_size_mb < bound:
        where = _where(src, lines, ("targets", "max_size_mb"))
        raise TargetError(
            f"{where}: max_size_mb {t.max_size_mb:g} is below the smallest size these stages can "
            f"reach ({bound:.1f} MB for {params['total']:,} parameters)",
            "raise max_size_mb, or add a stage that quantizes to fewer bits or removes parameters",
        )
    if bound is not None and t.max_memory_mb is not None and t.max_memory_mb < bound:
        where = _where(src, lines, ("targets", "max_memory_mb"))
        raise TargetError(
            f"{where}: max_memory_mb {t.max_memory_mb:g} is below the weights alone ({bound:.1f} MB)",
            "raise max_memory_mb, or compress further",
        )
    return {"params": params, "size_lower_bound_mb": bound}
