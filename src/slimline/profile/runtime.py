"""Runtime cost on the torch eager engine: prefill latency, decode speed, peak memory, a per-module
time breakdown and energy where the CPU exposes it (Intel RAPL through powercap).

Protocol (BENCH.md): batch 1, a fixed thread count, one warm-up, then ``repeats`` timed runs
reported as median, min and max. Every latency carries the engine, threads and machine.
"""

from __future__ import annotations

import glob
import os
import platform
import resource
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import torch
from torch import nn

from slimline.models import Arch
from slimline.models.kv import cache_of, with_cache

MB = 1e6  # decimal megabytes, as sizes on disk are reported


def machine() -> dict[str, Any]:
    """What a latency was measured on: CPU model, cores, SIMD flags, torch build."""
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and cpu in (
                    "",
                    platform.machine(),
                    platform.processor(),
                ):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    flags = [
                        x
                        for x in ("avx2", "avx512f", "avx512_vnni", "amx_tile", "fma")
                        if x in have
                    ]
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "flags": flags,
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def summary(xs: list[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


# --- memory ------------------------------------------------------------------------------------


class RssSampler:
    """Samples the process RSS in a thread; ``peak`` is the highest value seen (bytes).

    A sampler can miss a spike shorter than its period; ``ru_maxrss`` (the kernel's own peak,
    for the whole process lifetime) is reported beside it as the upper bound.
    """

    def __init__(self, period_s: float = 0.002):
        self.period_s = period_s
        self.proc = psutil.Process()
        self.peak = self.start = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.period_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def lifetime_peak_rss() -> int:
    """The process's peak RSS since it started (bytes), from getrusage."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# --- energy ------------------------------------------------------------------------------------

RAPL_GLOB = "/sys/class/powercap/intel-rapl:*/energy_uj"


class Energy:
    """Package energy from RAPL counters (whole CPU package: other processes count too)."""

    def __init__(self, pattern: str = RAPL_GLOB):
        # Top-level package domains only ("intel-rapl:0"), not their sub-domains ("intel-rapl:0:0").
        self.files = [
            f
            for f in sorted(glob.glob(pattern))
            if os.path.basename(os.path.dirname(f)).count(":") == 1
        ]
        self.reason = ""
        if not self.files:
            self.reason = (
                "no RAPL energy counters (/sys/class/powercap/intel-rapl:*) on this machine"
            )
        else:
            try:
                self._read()
            except OSError as e:
                self.reason = f"RAPL counters exist but are not readable ({e.strerror}); root or a udev rule is needed"
                self.files = []

    @property
    def available(self) -> bool:
        return bool(self.files)

    def _read(self) -> list[int]:
        out = []
        for f in self.files:
            with open(f, encoding="ascii") as fh:
                out.append(int(fh.read().strip()))
        return out

    def _ranges(self) -> list[int]:
        ranges = []
        for f in self.files:
            try:
                with open(
                    os.path.join(os.path.dirname(f), "max_energy_range_uj"), encoding="ascii"
                ) as fh:
                    ranges.append(int(fh.read().strip()))
            except (OSError, ValueError):
                ranges.append(2**32)
        return ranges

    def measure(self, fn: Callable[[], None]) -> float:
        """Joules spent while ``fn`` runs (counters wrap at ``max_energy_range_uj``)."""
        before = self._read()
        fn()
        after = self._read()
        total = 0
        for b, a, r in zip(before, after, self._ranges(), strict=True):
            total += a - b if a >= b else a + r - b
        return total / 1e6


# --- timing ------------------------------------------------------------------------------------


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def timed(fn: Callable[[], Any], repeats: int, warmup: int) -> list[float]:
    """Seconds per call of ``fn`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


@torch.inference_mode()
def greedy_decode(
    model: nn.Module, prompt: torch.Tensor, new_tokens: int
) -> tuple[float, float, torch.Tensor]:
    """Greedy generation with the KV cache, by hand so exactly ``new_tokens`` come out (no EOS stop).

    Returns (seconds for the prompt forward, seconds for the ``new_tokens - 1`` one-token steps,
    the generated ids). The first new token comes from the prompt's logits.
    """
    t0 = time.perf_counter()
    out = model(input_ids=prompt, use_cache=True)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    t1 = time.perf_counter()
    past = cache_of(out)
    ids = [nxt]
    for _ in range(new_tokens - 1):
        out = model(input_ids=nxt, **with_cache(model, past), use_cache=True)
        past = cache_of(out)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        ids.append(nxt)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, torch.cat(ids, dim=1)


_OP_CLASSES = (  # operator-name markers -> class, first match wins
    (
        "matmul",
        (
            "aten::mm",
            "aten::addmm",
            "aten::bmm",
            "aten::baddbmm",
            "aten::matmul",
            "aten::linear",
            "aten::_addmm_activation",
        ),
    ),
    ("attention", ("scaled_dot_product", "flash_attention", "efficient_attention")),
    (
        "copy / cache",
        (
            "aten::cat",
            "aten::copy_",
            "aten::clone",
            "aten::contiguous",
            "aten::index_copy",
            "aten::slice_scatter",
            "aten::to",
            "aten::_to_copy",
        ),
    ),
)


def _op_class(name: str) -> str:
    for cls, markers in _OP_CLASSES:
        if any(name == m or (not m.startswith("aten::") and m in name) for m in markers):
            return cls
    return "other operators"


@torch.inference_mode()
def decode_breakdown(
    model: nn.Module, prompt: torch.Tensor, new_tokens: int = 16
) -> dict[str, Any]:
    """Where greedy decode's wall time goes, per generated token: matrix multiplies, attention,
    copies / KV-cache growth, other operators, and the time outside any operator (Python, module
    calls, dispatch) — from ``torch.profiler`` self CPU times over one greedy run.

    It answers whether decode can get faster from faster GEMMs (int8, sparsity, fewer channels):
    only the ``matmul`` share can shrink that way. The profiler adds a little per-operator
    overhead, so the shares, not the absolute times, are the result.
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    greedy_decode(model, prompt, 4)  # warm-up, unprofiled
    out = model(input_ids=prompt, use_cache=True)  # the prompt, unprofiled: steps only
    past, nxt = cache_of(out), out.logits[:, -1].argmax(-1, keepdim=True)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=nxt, **with_cache(model, past), use_cache=True)
            past, nxt = cache_of(out), out.logits[:, -1].argmax(-1, keepdim=True)
        wall = time.perf_counter() - t0
    ms: dict[str, float] = defaultdict(float)
    calls = 0
    top: dict[str, float] = {}
    for evt in prof.key_averages():
        self_ms = evt.self_cpu_time_total / 1000
        ms[_op_class(evt.key)] += self_ms
        calls += evt.count
        top[evt.key] = self_ms
    total_ops = sum(ms.values())
    ms["outside operators"] = max(0.0, 1000 * wall - total_ops)
    per_tok = {k: v / new_tokens for k, v in ms.items()}
    whole = sum(per_tok.values()) or 1.0
    return {
        "tokens": new_tokens,
        "note": "one-token steps with the KV cache after the prompt, per generated token",
        "wall_ms_per_token": round(1000 * wall / new_tokens, 3),
        "ms_per_token": {k: round(v, 3) for k, v in sorted(per_tok.items(), key=lambda kv: -kv[1])},
        "share": {
            k: round(v / whole, 3) for k, v in sorted(per_tok.items(), key=lambda kv: -kv[1])
        },
        "operator_calls_per_token": round(calls / new_tokens, 1),
        "top_ops_ms": {
            k: round(v / new_tokens, 3) for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:8]
        },
    }


# --- per-module breakdown ----------------------------------------------------------------------

ROLES = ("embed", "position", "attention", "mlp", "norm", "lm_head", "other")


def module_roles(model: nn.Module, arch: Arch) -> dict[str, str]:
    """Role of every named module: embed, position, attention, mlp, norm, lm_head or other."""
    roles: dict[str, str] = {}
    exact: dict[str, str] = {arch.embed: "embed"}
    if arch.pos_embed:
        exact[arch.pos_embed] = "position"
    if arch.final_norm:
        exact[arch.final_norm] = "norm"
    if arch.lm_head:
        exact[arch.lm_head] = "lm_head"
    embed_parent = arch.embed.rpartition(".")[0]
    if embed_parent.endswith("embeddings"):  # BERT's embeddings module (word + position + norm)
        exact[embed_parent] = "embed"
    attn_names = arch.attention_linears()
    parts = [n.split(".") for n in attn_names]
    common = []
    for level in zip(*parts, strict=False):  # the deepest module holding all projections
        if len(set(level)) != 1:
            break
        common.append(level[0])
    attn_rel = ".".join(common) or None
    mlp_rel = {n.rpartition(".")[0] or n for n in arch.mlp_linears()}
    norm_rel = {arch.roles[r] for r in ("attn_norm", "mlp_norm") if r in arch.roles}
    blocks_prefix = arch.block_path + "."
    for name, mod in model.named_modules():
        if not name:
            continue
        role = None
        for e, r in sorted(exact.items(), key=lambda kv: len(kv[0])):  # longest match wins
            if name == e or name.startswith(e + "."):
                role = r
        if role is None and name.startswith(blocks_prefix):
            rel = name[len(blocks_prefix) :].partition(".")[2]  # drop the block index
            if rel and any(rel == n or rel.startswith(n + ".") for n in norm_rel):
                role = "norm"
            elif rel and attn_rel and (rel == attn_rel or rel.startswith(attn_rel + ".")):
                role = "attention"
            elif rel and any(rel == n or rel.startswith(n + ".") for n in mlp_rel):
                role = "mlp"
        if role is None and ("rotary" in name or "position" in name):
            role = "position"
        if role is None and "norm" in type(mod).__name__.lower():
            role = "norm"
        roles[name] = role or "other"
    return roles


def _generic_name(name: str, arch: Arch) -> str:
    """``model.layers.3.mlp.down_proj`` -> ``model.layers.*.mlp.down_proj``."""
    prefix = arch.block_path + "."
    if name.startswith(prefix):
        _, _, rest = name[len(prefix) :].partition(".")
        return f"{prefix}*" + (f".{rest}" if rest else "")
    return name


@torch.inference_mode()
def module_breakdown(
    model: nn.Module, arch: Arch, run: Callable[[], Any], runs: int = 3
) -> dict[str, Any]:
    """Exclusive wall time of every module (its own time minus its children's) over ``runs``
    calls of ``run``, aggregated by role, by module type and by block-relative name.

    Hooks add a few microseconds per module call, so this runs apart from the timed runs.
    """
    roles = module_roles(model, arch)
    names = {id(m): n for n, m in model.named_modules()}
    stack: list[list[float]] = []  # [start, children_time]
    excl: dict[str, float] = defaultdict(float)
    handles = []

    def pre(mod: nn.Module, *_: Any) -> None:
        stack.append([time.perf_counter(), 0.0])

    def post(mod: nn.Module, *_: Any) -> None:
        start, children = stack.pop()
        inclusive = time.perf_counter() - start
        excl[names[id(mod)]] += inclusive - children
        if stack:
            stack[-1][1] += inclusive

    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    try:
        run()  # warm-up, untimed
        excl.clear()
        t0 = time.perf_counter()
        for _ in range(runs):
            run()
        wall = (time.perf_counter() - t0) / runs
    finally:
        for h in handles:
            h.remove()
    by_role: dict[str, float] = dict.fromkeys(ROLES, 0.0)
    by_type: dict[str, float] = defaultdict(float)
    by_name: dict[str, float] = defaultdict(float)
    classes = {n: type(m).__name__ for n, m in model.named_modules()}
    for name, sec in excl.items():
        ms = 1000 * sec / runs
        by_role[roles.get(name, "other") if name else "other"] += ms
        by_type[classes[name]] += ms
        by_name[_generic_name(name, arch) if name else "(root)"] += ms

    def ranked(d: dict[str, float]) -> dict[str, float]:
        return {k: round(v, 3) for k, v in sorted(d.items(), key=lambda kv: -kv[1]) if v > 0}

    return {
        "wall_ms": round(1000 * wall, 3),
        "by_role_ms": ranked(by_role),
        "by_type_ms": ranked(by_type),
        "by_name_ms": dict(list(ranked(by_name).items())[:20]),
    }
