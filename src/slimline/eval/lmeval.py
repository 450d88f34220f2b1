"""lm-evaluation-harness bridge: any slimline model (any engine that gives logits) as an
``lm_eval`` ``LM``, so users run whichever lm-eval task they have, local YAML tasks included.

``lmeval_evaluate(model, ["my_task"], include_path="tasks/")`` returns slimline metric names:
``acc/<task>``, ``acc/<task>-norm``, ``acc/<task>-exact``, ``ppl/<task>`` (word perplexity),
and ``lmeval/<task>/<metric>`` for anything else; ``stderr/...`` beside each.
Needs the optional ``lm-eval`` package (``pip install lm-eval``).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from slimline.errors import ConfigError
from slimline.eval.engine import LogitsEngine, as_engine
from slimline.eval.tasks import TaskConfig, TaskContext, TaskResult, register_task


def _lm_eval() -> Any:
    try:
        import lm_eval
        from lm_eval.api.model import LM
    except ImportError as e:
        raise ConfigError(
            "the lm-evaluation-harness bridge needs the lm-eval package",
            "pip install lm-eval (it runs on the CPU torch already installed)",
        ) from e
    return lm_eval, LM


def make_lm(engine: Any) -> Any:
    """An ``lm_eval.api.model.LM`` that scores and generates through ``engine``."""
    _, LM = _lm_eval()
    from lm_eval import utils

    eng: LogitsEngine = as_engine(engine)

    class SlimlineLM(LM):
        """lm-eval model over a slimline ``LogitsEngine``."""

        def __init__(self) -> None:
            super().__init__()
            self.engine = eng
            self.tok = eng.tokenizer
            self.max_length = eng.max_length or 2048
            prefix = self.tok.bos_token_id
            self.prefix_id = prefix if prefix is not None else self.tok.eos_token_id

        def _enc(self, s: str) -> list[int]:
            return list(self.tok(s, add_special_tokens=False)["input_ids"])

        def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
            out = []
            for k in range(0, len(pairs), 8):
                chunk = pairs[k : k + 8]
                windows = []
                for ctx, cont in chunk:
                    whole = (ctx + cont)[-(self.max_length + 1) :]
                    windows.append(torch.tensor(whole[:-1]))
                for (_, cont), lg in zip(chunk, self.engine.logits(windows), strict=True):
                    n = len(cont)
                    lp = torch.log_softmax(lg[-n:], -1)
                    tgt = torch.tensor(cont)
                    ll = float(lp.gather(-1, tgt[:, None]).sum())
                    out.append((ll, bool((lp.argmax(-1) == tgt).all())))
            return out

        def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
            pairs = []
            for req in requests:
                context, cont = req.args
                ctx = self._enc(context) if context else [self.prefix_id]
                pairs.append((ctx, self._enc(cont)))
            return self._score(pairs)

        def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
            out = []
            for req in requests:
                (text,) = req.args
                windows = map(
                    utils.make_disjoint_window,
                    utils.get_rolling_token_windows(
                        token_list=self._enc(text),
                        prefix_token=self.prefix_id,
                        max_seq_len=self.max_length,
                        context_len=1,
                    ),
                )
                out.append(sum(ll for ll, _ in self._score(list(windows))))
            return out

        def generate_until(self, requests: list[Any]) -> list[str]:
            out = []
            for req in requests:
                context, kw = req.args
                until = kw.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                n = int(kw.get("max_gen_toks", 64))
                ids = self._enc(context)[-(self.max_length - n) :]
                text = self.tok.decode(
                    self.engine.generate(torch.tensor(ids), n).tolist(), skip_special_tokens=True
                )
                for stop in until:
                    if stop and stop in text:
                        text = text.split(stop)[0]
                out.append(text)
            return out

    return SlimlineLM()


def _metric_name(task: str, key: str) -> str:
    metric, _, _ = key.partition(",")
    err = metric.endswith("_stderr")
    metric = metric.removesuffix("_stderr")
    name = {
        "acc": f"acc/{task}",
        "acc_norm": f"acc/{task}-norm",
        "exact_match": f"acc/{task}-exact",
        "word_perplexity": f"ppl/{task}",
    }.get(metric, f"lmeval/{task}/{metric}")
    return f"stderr/{name}" if err else name


def lmeval_evaluate(
    model: Any,
    tasks: Sequence[str],
    *,
    include_path: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
) -> dict[str, float]:
    """Run lm-eval ``tasks`` on ``model`` (engine or ``LoadedModel``), slimline metric names."""
    lm_eval, _ = _lm_eval()
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise ConfigError("no lm-eval tasks named", "pass tasks=['<task name>']")
    lm = make_lm(model)
    quiet = [logging.getLogger(n) for n in ("lm_eval", "lm-eval", "datasets", "evaluate")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            manager = TaskManager(
                verbosity="ERROR", include_path=str(include_path) if include_path else None
            )
            unknown = [t for t in tasks if t not in manager.all_tasks]
            if unknown:
                raise ConfigError(
                    f"lm-eval does not know task(s) {', '.join(unknown)}",
                    "check the name, or pass include_path= to the folder of your task YAML",
                )
            res = lm_eval.simple_evaluate(
                model=lm,
                tasks=list(tasks),
                limit=limit,
                num_fewshot=num_fewshot,
                task_manager=manager,
                log_samples=False,
                bootstrap_iters=0,
                verbosity="ERROR",
            )
    finally:
        for lg, lv in zip(quiet, levels, strict=True):
            lg.setLevel(lv)
    out: dict[str, float] = {}
    for task, metrics in res["results"].items():
        for key, value in metrics.items():
            if key == "alias" or not isinstance(value, int | float):
                continue
            out[_metric_name(task, key)] = float(value)
    return out


class LmEval(TaskConfig):
    """lm-eval tasks by name (``include_path``: a folder of local task YAML)."""

    name = "lmeval"
    tasks: tuple[str, ...] = ()
    include_path: str | None = None
    limit: int | None = None
    num_fewshot: int | None = None


@register_task(LmEval)
def run_lmeval(cfg: LmEval, ctx: TaskContext) -> TaskResult:
    res = TaskResult()
    limit = cfg.limit if ctx.limit is None else min(cfg.limit or ctx.limit, ctx.limit)
    for name, e in ctx.engines():
        out = res.metrics if name == "model" else res.reference
        out.update(
            lmeval_evaluate(
                e,
                cfg.tasks,
                include_path=cfg.include_path,
                limit=limit,
                num_fewshot=cfg.num_fewshot,
            )
        )
    return res
