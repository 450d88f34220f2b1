"""Task accuracy from real text, scored by log-likelihood, and calibration on those answers.

``cloze``: the true next span of a passage against distractor spans of the same length drawn from
elsewhere in the same source (multiple choice, lm-eval's ``acc``: the highest summed
log-probability wins). ``lambada``: passages whose last word already occurred in the passage
(predictable from context, as LAMBADA selects), scored right when every token of that word is the
greedy choice. Items come from each source's eval part, seeded, so every run and every model sees
the same ones. Each reports accuracy, its standard error, and the **flip rate** against the
reference: at 135M parameters accuracy deltas sit inside the noise while changed answers do not.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass

import torch

from slimline.data import text_part
from slimline.errors import DataError
from slimline.eval.api import dataset_name
from slimline.eval.engine import LogitsEngine
from slimline.eval.metrics import CalibrationBins
from slimline.eval.tasks import TaskConfig, TaskContext, TaskResult, mean_se, register_task

_WORD = re.compile(r"\S+\s*")


class Cloze(TaskConfig):
    """Multiple-choice continuation: ``acc/cloze-<source>``, ``flip/cloze-<source>``."""

    name = "cloze"
    sources: tuple[str, ...] = ("python-docs", "shakespeare")
    n: int = 40  # items per source
    context_words: int = 16
    span_words: int = 5
    choices: int = 4
    seed: int = 0


class Lambada(TaskConfig):
    """Last-word prediction: ``acc/lambada-<source>``, ``flip/lambada-<source>``."""

    name = "lambada"
    sources: tuple[str, ...] = ("python-docs", "shakespeare")
    n: int = 40
    context_words: int = 40
    min_word_len: int = 5
    seed: int = 0


class Calibration(TaskConfig):
    """``ece/cloze`` and ``overconfidence/cloze`` (mean confidence on the answers it gets wrong,
    i.e. confidence minus accuracy there) over the cloze answers; a reliability-diagram PNG."""

    name = "calibration"
    cloze: Cloze | None = None  # None: the suite's own cloze task (its answers are reused)
    n_bins: int = 10


@dataclass(frozen=True)
class Item:
    context: str
    choices: tuple[str, ...]
    answer: int


def _words(source: str) -> list[str]:
    return _WORD.findall(text_part(source, "eval"))


def _rng(seed: int, source: str, task: str) -> random.Random:
    return random.Random(seed * 1_000_003 + zlib.crc32(f"{task}|{source}".encode()))


def _join(words: list[str]) -> str:
    return "".join(words).rstrip()


def cloze_items(source: str, cfg: Cloze, n: int) -> list[Item]:
    """``n`` seeded multiple-choice items from ``source``'s eval text."""
    words = _words(source)
    need = cfg.context_words + cfg.span_words
    if len(words) < need * (cfg.choices + 1):
        raise DataError(
            f"{source} has {len(words)} words; cloze needs several passages of {need}",
            "use a longer source or lower context_words/span_words",
        )
    rng = _rng(cfg.seed, source, "cloze")
    items: list[Item] = []
    tries = 0
    while len(items) < n and tries < 50 * n:
        tries += 1
        i = rng.randrange(cfg.context_words, len(words) - cfg.span_words)
        context = _join(words[i - cfg.context_words : i])
        sep = words[i - 1][len(words[i - 1].rstrip()) :]
        true = _join(words[i : i + cfg.span_words])
        if len(context) > 400 or len(true) > 80 or not sep:
            continue  # long code lines make token counts (and time) unpredictable
        spans = {true}
        while len(spans) < cfg.choices:
            j = rng.randrange(0, len(words) - cfg.span_words)
            if abs(j - i) > need:
                span = _join(words[j : j + cfg.span_words])
                if len(span) <= 80:
                    spans.add(span)
        others = sorted(spans - {true})
        rng.shuffle(others)
        answer = rng.randrange(cfg.choices)
        opts = [*others[:answer], true, *others[answer:]]
        items.append(Item(context, tuple(sep.replace("\n\n", "\n") + s for s in opts), answer))
    return items


_STOP_ALPHA = re.compile(r"^[A-Za-z]+")


def lambada_items(source: str, cfg: Lambada, n: int) -> list[Item]:
    """Passages whose last word (letters only, ``min_word_len`` or longer) occurred earlier in
    the passage: the answer is predictable from context, not from world knowledge alone."""
    words = _words(source)
    rng = _rng(cfg.seed, source, "lambada")
    starts = list(range(cfg.context_words, len(words)))
    rng.shuffle(starts)
    items: list[Item] = []
    for i in starts:
        m = _STOP_ALPHA.match(words[i])
        if not m or len(m.group()) < cfg.min_word_len:
            continue
        target = m.group()
        ctx_words = words[i - cfg.context_words : i]
        if not any(w.strip().strip(".,;:!?'\"()[]").lower() == target.lower() for w in ctx_words):
            continue
        context = _join(ctx_words)
        sep = ctx_words[-1][len(ctx_words[-1].rstrip()) :]
        if not sep or len(context) > 600:
            continue
        items.append(Item(context, (sep.replace("\n\n", "\n") + target,), 0))
        if len(items) == n:
            break
    if not items:
        raise DataError(
            f"{source} gave no last-word items", "use a longer source or a smaller min_word_len"
        )
    return items


def _encode(tok: object, item: Item) -> tuple[list[int], list[list[int]]]:
    enc = tok(item.context, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    conts = [tok(c, add_special_tokens=False)["input_ids"] for c in item.choices]  # type: ignore[operator]
    return list(enc), [list(c) for c in conts]


@dataclass
class Scored:
    """One engine's answers on a task's items."""

    pred: list[int]  # chosen option (cloze) or 1/0 right (lambada)
    conf: list[float]  # probability of the chosen option among the options (cloze)
    correct: list[bool]
    answer_ids: list[tuple[int, ...]]  # greedy tokens at the answer (lambada)


def score_choices(engine: LogitsEngine, items: list[Item], per_call: int = 8) -> Scored:
    """Summed log-probability of each option after its context; greedy tokens of option 0."""
    tok = engine.tokenizer
    s = Scored([], [], [], [])
    for k in range(0, len(items), per_call):
        batch = items[k : k + per_call]
        encs = [_encode(tok, it) for it in batch]
        windows = [torch.tensor(c + o) for c, opts in encs for o in opts]
        logits = iter(engine.logits(windows))
        for it, (c, opts) in zip(batch, encs, strict=True):
            scores, greedy = [], ()
            for o in opts:
                lp = torch.log_softmax(next(logits)[len(c) - 1 : len(c) + len(o) - 1], -1)
                tgt = torch.tensor(o)
                scores.append(float(lp.gather(-1, tgt[:, None]).sum()))
                if not greedy:
                    greedy = tuple(lp.argmax(-1).tolist())
            probs = torch.softmax(torch.tensor(scores, dtype=torch.float64), 0)
            pred = int(probs.argmax())
            s.pred.append(pred)
            s.conf.append(float(probs[pred]))
            s.correct.append(pred == it.answer)
            s.answer_ids.append(greedy)
    return s


def _cloze_scored(ctx: TaskContext, engine: LogitsEngine, cfg: Cloze, source: str) -> Scored:
    n = ctx.n(cfg.n)
    items = ctx.cached(("cloze-items", source, cfg, n), lambda: cloze_items(source, cfg, n))
    return ctx.cached(("cloze", engine, source, cfg, n), lambda: score_choices(engine, items))


def _report(res: TaskResult, task: str, scored: dict[str, Scored], key: str) -> None:
    for name, s in scored.items():
        out = res.metrics if name == "model" else res.reference
        acc, se = mean_se([float(c) for c in s.correct])
        out[f"acc/{task}"] = acc
        out[f"stderr/acc/{task}"] = se
    if "reference" in scored:
        m, r = scored["model"], scored["reference"]
        flips = [a != b for a, b in zip(getattr(m, key), getattr(r, key), strict=True)]
        res.metrics[f"flip/{task}"] = sum(flips) / len(flips)


@register_task(Cloze)
def run_cloze(cfg: Cloze, ctx: TaskContext) -> TaskResult:
    res = TaskResult()
    for source in cfg.sources:
        scored = {name: _cloze_scored(ctx, e, cfg, source) for name, e in ctx.engines()}
        _report(res, f"cloze-{dataset_name(source)}", scored, "pred")
    return res


@register_task(Lambada)
def run_lambada(cfg: Lambada, ctx: TaskContext) -> TaskResult:
    res = TaskResult()
    for source in cfg.sources:
        n = ctx.n(cfg.n)
        items = ctx.cached(
            ("lambada-items", source, cfg, n), lambda s=source, n=n: lambada_items(s, cfg, n)
        )
        scored = {}
        for name, e in ctx.engines():
            s = ctx.cached(
                ("lambada", e, source, cfg, n), lambda e=e, it=items: score_choices(e, it)
            )
            tok = e.tokenizer
            s.correct = [
                g == tuple(_encode(tok, it)[1][0])
                for g, it in zip(s.answer_ids, items, strict=True)
            ]
            scored[name] = s
        _report(res, f"lambada-{dataset_name(source)}", scored, "answer_ids")
    return res


def reliability_figure(bins: dict[str, CalibrationBins], title: str) -> object:
    """Accuracy against confidence per bin (the diagonal is perfect calibration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for name, b in bins.items():
        keep = b.count > 0
        conf = (b.conf[keep] / b.count[keep]).tolist()
        acc = (b.correct[keep] / b.count[keep]).tolist()
        ax.plot(conf, acc, marker="o", label=f"{name} (ECE {b.ece():.3f})")
    ax.set_xlabel("confidence of the chosen option")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


@register_task(Calibration)
def run_calibration(cfg: Calibration, ctx: TaskContext) -> TaskResult:
    res = TaskResult()
    cloze = cfg.cloze or ctx.memo.get("cloze-config") or Cloze()
    all_bins = {}
    for name, e in ctx.engines():
        out = res.metrics if name == "model" else res.reference
        bins = CalibrationBins(cfg.n_bins)
        wrong: list[float] = []
        for source in cloze.sources:
            s = _cloze_scored(ctx, e, cloze, source)
            bins.add(torch.tensor(s.conf), torch.tensor(s.correct))
            wrong += [c for c, ok in zip(s.conf, s.correct, strict=True) if not ok]
        out["ece/cloze"] = bins.ece()
        out["overconfidence/cloze"] = sum(wrong) / len(wrong) if wrong else 0.0
        all_bins[name] = bins
    if ctx.figures_dir is not None:
        from slimline.figures import save_png

        fig = reliability_figure(all_bins, "cloze reliability")
        res.figures.append(str(save_png(fig, ctx.figures_dir / "reliability-cloze.png")))
    return res
