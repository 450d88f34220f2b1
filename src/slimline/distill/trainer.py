"""The distillation loop: one visible function over Hugging Face Accelerate.

The same code runs as one CPU process here and on many GPUs / nodes under ``accelerate launch``.
Everything a resumed run needs to reproduce the uninterrupted one is in the checkpoint:
student (+ projection) weights as safetensors and optimizer state through
``accelerator.save_state`` (read back with ``weights_only=True``), the scheduler as JSON, the RNG
state as safetensors. Data order is a pure function of (seed, step), so nothing about the data
stream needs saving. A checkpoint whose run fingerprint (config, student, teacher, data) differs
is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from slimline.distill import losses as L
from slimline.distill.config import DistillConfig
from slimline.distill.hooks import LoopHook
from slimline.distill.teachers import (
    CachedTeacher,
    Teacher,
    TeacherOutput,
    run_model,
    same_tokenizer,
)
from slimline.errors import ConfigError, DataError, TrainingError
from slimline.models import get_arch
from slimline.progress import track

__all__ = ["TrainResult", "batch_indices", "run_fingerprint", "train"]

LOGIT_LOSSES = ("kl", "rkl", "jsd")


@dataclass
class TrainResult:
    steps: int
    losses: list[float]
    log_path: Path | None
    checkpoint: Path | None
    tokens: int
    seconds: float
    stopped: str  # "max_steps" | "time" | "resumed-finished"
    resumed_from: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _as_data(data: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(data, dict):
        ids, mask = data.get("input_ids"), data.get("attention_mask")
    else:
        ids, mask = data, None
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.numel() == 0:
        raise DataError(
            "distillation data must be a non-empty [N, T] tensor of token ids "
            "(or a dict with input_ids and attention_mask)",
            "build it with slimline.data.train_blocks(tokenizer, ...)",
        )
    if ids.dtype not in (torch.int32, torch.int64):
        raise DataError(
            f"token ids must be integers, got {ids.dtype}", "pass token ids, not floats"
        )
    if mask is not None and mask.shape != ids.shape:
        raise DataError(
            f"attention_mask {tuple(mask.shape)} does not match input_ids {tuple(ids.shape)}",
            "tokenize with tokenizer(texts, padding=True) and pass both tensors from that call",
        )
    return ids.long(), mask


def batch_indices(
    step: int,
    micro: int,
    grad_accum: int,
    batch_size: int,
    n: int,
    seed: int,
    process: int = 0,
    n_processes: int = 1,
    first_order: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample indices of one micro-batch: a pure function of (seed, step), so resume needs no
    data-loader state. Epoch e visits a permutation seeded by (seed, e); with ``first_order``
    (a curriculum) epoch 0 follows that order instead. Processes take interleaved slices."""
    g = (step * grad_accum + micro) * n_processes + process
    pos = torch.arange(g * batch_size, (g + 1) * batch_size)
    epochs, within = pos // n, pos % n
    out = torch.empty_like(pos)
    for e in epochs.unique().tolist():
        if e == 0 and first_order is not None:
            perm = first_order
        else:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + e))
        sel = epochs == e
        out[sel] = perm[within[sel]]
    return out


def _tensor_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        t = p.detach().double()
        h.update(f"{t.sum().item():.10e}|{t.abs().sum().item():.10e}".encode())
    return h.hexdigest()[:16]


def _config_identity(model: nn.Module) -> dict[str, Any] | None:
    """The student's HF config minus where it was read from: a student built in memory and the
    same student reloaded from its checkpoint (a resumed recipe) are the same student."""
    if not hasattr(model, "config"):
        return None
    d = model.config.to_dict()
    for k in ("_name_or_path", "architectures", "transformers_version"):
        d.pop(k, None)
    return d


def run_fingerprint(cfg: DistillConfig, student: nn.Module, teacher: Any, ids: torch.Tensor) -> str:
    """What makes two runs the same run: config (minus run length), student config and initial
    weights, teacher identity, data content."""
    from slimline.data import fingerprint

    ident = {
        "config": cfg.identity(),
        "student_config": _config_identity(student),
        "student_weights": _tensor_digest(student),
        "teacher": teacher.identity(),
        "data": fingerprint(ids),
    }
    blob = json.dumps(ident, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _check_compat(cfg: DistillConfig, student: nn.Module, teacher: Any, s_tok: Any) -> None:
    logit = [k for k in LOGIT_LOSSES if cfg.losses.get(k)]
    if logit:
        if (
            not hasattr(student, "lm_head")
            and getattr(student, "get_output_embeddings", lambda: None)() is None
        ):
            raise ConfigError(
                f"logit losses {logit} need a language-model head; this student is an encoder",
                "use embed/hidden/attn/value losses for encoders",
            )
        t_tok = getattr(teacher, "tokenizer", None)
        if s_tok is not None and t_tok is not None and not same_tokenizer(s_tok, t_tok):
            raise ConfigError(
                f"logit losses {logit} compare distributions over token ids, but the teacher "
                "and student tokenizers differ (one id means different text in each)",
                "drop kl/rkl/jsd and distill with hidden or embed losses, or use a student "
                "built from the teacher (same tokenizer)",
            )
    if isinstance(teacher, CachedTeacher):
        other = [k for k in ("rkl", "jsd", "hidden", "attn", "value", "embed") if cfg.losses.get(k)]
        if other:
            raise ConfigError(
                f"a cached teacher stores only top-k logits; {other} need the live teacher",
                "use losses {kl, ce} with a cached teacher",
            )


def _scheduler(cfg: DistillConfig, opt: torch.optim.Optimizer, total: int) -> Any:
    from transformers import get_scheduler

    name = "constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule
    return get_scheduler(
        name, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=max(total, 1)
    )


def _last_checkpoint(out: Path) -> Path | None:
    ck = sorted((out / "checkpoints").glob("step-*")) if (out / "checkpoints").exists() else []
    ck = [c for c in ck if (c / "meta.json").exists()]
    return ck[-1] if ck else None


def start_step_hint(out: Path | None, resume: bool) -> int:
    """The step a run will start from (hooks size their schedules before state is loaded)."""
    if not resume or out is None:
        return 0
    ck = _last_checkpoint(out)
    return json.loads((ck / "meta.json").read_text())["step"] if ck else 0


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _objective(
    cfg: DistillConfig,
    student: nn.Module,
    teacher: Any,
    proj: L.HiddenProjection | None,
    mapping: dict[int, int],
    ids: torch.Tensor,
    mask: torch.Tensor | None,
    indices: torch.Tensor,
    causal: bool,
    attn_pair: tuple[int, int],
) -> tuple[torch.Tensor, dict[str, float]]:
    w = cfg.losses
    need_hidden = bool(w.get("hidden") or w.get("embed"))
    need_attn = bool(w.get("attn"))
    s_layer, t_layer = attn_pair
    s = run_model(
        student,
        ids,
        mask,
        hidden=need_hidden or not causal,
        attentions=need_attn,
        value_layers=[s_layer] if w.get("value") else (),
    )
    need_logits = any(w.get(k) for k in LOGIT_LOSSES)
    if need_logits or need_hidden or need_attn or w.get("value"):
        t: TeacherOutput = teacher(
            ids,
            mask,
            logits=need_logits,
            hidden=need_hidden or not causal,
            attentions=need_attn,
            value_layers=[t_layer] if w.get("value") else (),
            indices=indices,
        )
    else:  # plain fine-tuning (ce only): a teacher forward would be thrown away
        t = TeacherOutput()
    terms: dict[str, torch.Tensor] = {}
    T = cfg.temperature
    if w.get("kl"):
        if t.topk_index is not None:
            terms["kl"] = L.topk_kl(s.logits, t.topk_index, t.topk_logits, T, mask)
        else:
            terms["kl"] = L.soft_kl(s.logits, t.logits, T, mask, "forward")
    if w.get("rkl"):
        terms["rkl"] = L.soft_kl(s.logits, t.logits, T, mask, "reverse")
    if w.get("jsd"):
        terms["jsd"] = L.generalized_jsd(s.logits, t.logits, cfg.jsd_beta, T, mask)
    if w.get("ce"):
        terms["ce"] = L.cross_entropy(s.logits, ids, mask)
    if w.get("hidden"):
        terms["hidden"] = L.hidden_loss(s.hidden, t.hidden, mapping, proj, cfg.hidden_kind, mask)
    if w.get("attn"):
        terms["attn"] = L.attention_kl(s.attentions[s_layer - 1], t.attentions[t_layer - 1], mask)
    if w.get("value"):
        terms["value"] = L.value_relation_loss(
            s.values[s_layer], t.values[t_layer], mask, cfg.relation_heads, causal
        )
    if w.get("embed"):
        hs, ht = s.hidden[-1], t.hidden[-1]
        es, et = L.mean_pool(hs, mask), L.mean_pool(ht, mask)
        if proj is not None and es.shape[-1] != et.shape[-1]:
            es = proj(max(mapping), es)
        terms["embed"] = L.embedding_loss(es, et, cfg.embed_kind)
    total = L.combine(terms, w)
    return total, {k: float(v.detach()) for k, v in terms.items()}


def train(
    student: nn.Module,
    teacher: Teacher | CachedTeacher | nn.Module,
    data: torch.Tensor | dict[str, torch.Tensor],
    config: DistillConfig,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    hooks: Sequence[LoopHook] = (),
    resume: bool = False,
    tokenizer: Any = None,
    curriculum_order: torch.Tensor | None = None,
) -> TrainResult:
    """Distil ``teacher`` into ``student`` (in place) on ``data`` with ``config``.

    ``out_dir`` receives ``train_log.jsonl`` and ``checkpoints/step-N`` (every
    ``checkpoint_every`` steps and at the end). ``resume=True`` continues from the last
    checkpoint there and reproduces the uninterrupted run. A non-finite loss stops the run with
    ``TrainingError`` naming the last good checkpoint.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    cfg = config
    ids, mask = _as_data(data)
    N = ids.shape[0]
    if not isinstance(teacher, (Teacher, CachedTeacher)):
        teacher = Teacher(teacher)
    _check_compat(cfg, student, teacher, tokenizer)
    if resume and out_dir is None:
        raise ConfigError("resume needs the run's output directory", "pass out_dir")
    out = Path(out_dir) if out_dir is not None else None
    arch = get_arch(student)
    causal = arch.kind == "causal-lm"

    # Feature-loss geometry: which student layer imitates which teacher layer, and projections.
    n_s = arch.n_blocks(student.config)
    t_model = teacher.models[0] if isinstance(teacher, Teacher) else None
    proj = None
    mapping: dict[int, int] = {}
    attn_pair = (n_s, n_s)
    if t_model is not None:
        t_arch = get_arch(t_model)
        n_t = t_arch.n_blocks(t_model.config)
        mapping = L.layer_map(n_s, n_t, cfg.layer_map)
        attn_pair = (n_s, n_t)
        d_s, d_t = arch.hidden(student.config), t_arch.hidden(t_model.config)
        if d_s != d_t and (cfg.losses.get("hidden") or cfg.losses.get("embed")):
            if not cfg.project:
                raise ConfigError(
                    f"student width {d_s} differs from teacher width {d_t} and projections are off",
                    "set project=True (learned projections) or match the widths",
                )
            proj = L.HiddenProjection(d_s, d_t, list(mapping))
        if cfg.losses.get("attn"):
            for m in (student, t_model):
                m.set_attn_implementation("eager")  # sdpa/flash kernels return no weights

    set_seed(cfg.seed)
    fp = run_fingerprint(cfg, student, teacher, ids)
    for h in hooks:  # before the optimizer: a hook may swap modules (QAT) or add parameters
        h.on_start(student, start_step_hint(out, resume), cfg.max_steps)
    accelerator = Accelerator(
        mixed_precision=_mixed_precision(cfg.mixed_precision), cpu=_cpu_processes()
    )
    dev = accelerator.device
    params = list(student.parameters()) + (list(proj.parameters()) if proj is not None else [])
    if not any(p.requires_grad for p in params):
        raise ConfigError(
            "the student has no trainable parameter (all have requires_grad=False)",
            "call student.requires_grad_(True); only the teacher should be frozen",
        )
    opt = torch.optim.AdamW(
        [p for p in params if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    sched = _scheduler(cfg, opt, cfg.max_steps)
    if proj is not None:
        student, proj, opt = accelerator.prepare(student, proj, opt)
    else:
        student, opt = accelerator.prepare(student, opt)
    teacher.to(dev)
    raw_student = accelerator.unwrap_model(student)

    # --- resume ------------------------------------------------------------------------------
    start, losses, tokens_total = 0, [], 0
    log_path = out / "train_log.jsonl" if out is not None else None
    if resume:
        assert out is not None
        ck = _last_checkpoint(out)
        if ck is None:
            raise TrainingError(
                f"no checkpoint to resume in {out / 'checkpoints'}", "start without --resume"
            )
        meta = json.loads((ck / "meta.json").read_text())
        if meta.get("fingerprint") != fp:
            raise TrainingError(
                f"checkpoint {ck} belongs to another run (fingerprint {meta.get('fingerprint')}, "
                f"this run {fp}): config, student, teacher or data differ",
                "resume with the exact settings of that run, or start a new output directory",
            )
        accelerator.load_state(str(ck))
        sched.load_state_dict(meta["scheduler"])
        torch.set_rng_state(load_file(str(ck / "rng.safetensors"))["torch"])
        start, losses, tokens_total = meta["step"], list(meta["losses"]), meta["tokens"]
        if log_path is not None and log_path.exists():
            kept = [
                ln
                for ln in log_path.read_text().splitlines()
                if ln and json.loads(ln).get("step", 0) <= start
            ]
            _atomic_write(log_path, "".join(x + "\n" for x in kept))
    elif out is not None and _last_checkpoint(out) is not None:
        raise TrainingError(
            f"{out} already holds checkpoints of a run",
            "pass resume=True (--resume) or choose a new directory",
        )
    if start:
        for h in hooks:
            h.on_resume(raw_student, start)

    def save_checkpoint(step: int) -> Path | None:
        if out is None:
            return None
        final = out / "checkpoints" / f"step-{step:07d}"
        tmp = out / "checkpoints" / f".step-{step:07d}.tmp"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()  # every process's state is in tmp before the rename
        if accelerator.is_main_process:
            save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
            meta = {
                "step": step,
                "fingerprint": fp,
                "scheduler": sched.state_dict(),
                "losses": losses,
                "tokens": tokens_total,
                "config": cfg.to_dict(),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, default=str))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in sorted((out / "checkpoints").glob("step-*"))[: -cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    if out is not None and accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    student.train()
    if proj is not None:
        proj.train()
    t0 = time.perf_counter()
    last_ck = _last_checkpoint(out) if out is not None else None
    stopped = "max_steps"
    step = start
    for step in track(
        range(start + 1, cfg.max_steps + 1), "distilling", total=cfg.max_steps - start
    ):
        ts = time.perf_counter()
        step_tokens, step_terms = 0, {}
        step_loss = 0.0
        for micro in range(cfg.grad_accum):
            idx = batch_indices(
                step - 1,
                micro,
                cfg.grad_accum,
                cfg.batch_size,
                N,
                cfg.seed,
                accelerator.process_index,
                accelerator.num_processes,
                curriculum_order,
            )
            b_ids = ids[idx].to(dev)
            b_mask = mask[idx].to(dev) if mask is not None else None
            with accelerator.autocast():
                loss, terms = _objective(
                    cfg, student, teacher, proj, mapping, b_ids, b_mask, idx, causal, attn_pair
                )
            if not torch.isfinite(loss):
                student.eval()
                where = (
                    f"the last good checkpoint is {last_ck}"
                    if last_ck
                    else "no checkpoint was written yet"
                )
                if log_path is not None and accelerator.is_main_process:
                    _append(log_path, {"step": step, "event": "nan", "terms": terms})
                raise TrainingError(
                    f"the loss became {loss.item()} at step {step} ({terms}); training stopped, {where}",
                    "lower the learning rate, enable clipping, or check the data; resume from that checkpoint",
                )
            sync = micro == cfg.grad_accum - 1
            ctx = accelerator.no_sync(student) if not sync else _nullctx()
            with ctx:
                accelerator.backward(loss / cfg.grad_accum)
            step_loss += loss.item() / cfg.grad_accum
            for k, v in terms.items():
                step_terms[k] = step_terms.get(k, 0.0) + v / cfg.grad_accum
            step_tokens += int(b_mask.sum()) if b_mask is not None else b_ids.numel()
        if accelerator.num_processes > 1:
            step_loss, step_terms, step_tokens = _global_step(
                accelerator, step_loss, step_terms, step_tokens
            )
        grad_norm = None
        if cfg.clip:
            grad_norm = float(accelerator.clip_grad_norm_(params, cfg.clip))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        hook_fields: dict[str, Any] = {}
        for h in hooks:
            hook_fields.update(h.after_step(raw_student, step) or {})
        losses.append(step_loss)
        tokens_total += step_tokens
        dt = time.perf_counter() - ts
        if log_path is not None and accelerator.is_main_process and step % cfg.log_every == 0:
            _append(
                log_path,
                {
                    "step": step,
                    "loss": step_loss,
                    **{f"loss/{k}": v for k, v in step_terms.items()},
                    "lr": sched.get_last_lr()[0],
                    "grad_norm": grad_norm,
                    "tokens": tokens_total,
                    "tokens_per_s": step_tokens / max(dt, 1e-9),
                    "processes": accelerator.num_processes,
                    **hook_fields,
                },
            )
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            last_ck = save_checkpoint(step)
        if cfg.minutes is not None and time.perf_counter() - t0 > cfg.minutes * 60:
            stopped = "time"
            break
    seconds = time.perf_counter() - t0
    if (
        out is not None
        and step > start
        and (last_ck is None or not last_ck.name.endswith(f"{step:07d}"))
    ):
        last_ck = save_checkpoint(step)
    if step == start and resume:
        stopped = "resumed-finished"
    hook_records: dict[str, Any] = {}
    for h in hooks:
        hook_records[h.name] = h.on_end(raw_student)
    student.eval()
    accelerator.wait_for_everyone()
    return TrainResult(
        step,
        losses,
        log_path,
        last_ck,
        tokens_total,
        seconds,
        stopped,
        start,
        {
            "fingerprint": fp,
            "projection": proj is not None,
            "mapping": mapping,
            "hooks": hook_records,
        },
    )


def _cpu_processes() -> bool:
    """True for a multi-process launch (``accelerate launch --multi_gpu``, ``torchrun``) on a
    machine without GPUs: Accelerate then runs data-parallel on the CPU with gloo instead of
    taking each process for a lone one (its CPU launcher needs MPI)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def _global_step(
    accelerator: Any, loss: float, terms: dict[str, float], tokens: int
) -> tuple[float, dict[str, float], int]:
    """The step's loss and terms over the global batch (the mean of the processes' equal
    shares, which is what their averaged gradients descend) and its total tokens: the logged
    curve of N processes is the one process's at the same global batch."""
    keys = sorted(terms)
    t = torch.tensor([loss, *(terms[k] for k in keys), float(tokens)], dtype=torch.float64)
    t = accelerator.reduce(t.to(accelerator.device), reduction="sum").cpu()
    n = accelerator.num_processes
    return (
        float(t[0]) / n,
        {k: float(v) / n for k, v in zip(keys, t[1:-1], strict=True)},
        int(t[-1]),
    )


class _nullctx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: Any) -> None:
        return None


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record, default=float) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def perplexity(model: nn.Module, blocks: torch.Tensor, batch_size: int = 4) -> float:
    """exp(mean next-token NLL) over ``blocks`` (BENCH.md), fp32, no grad."""
    model.eval()
    nll, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, blocks.shape[0], batch_size):
            b = blocks[i : i + batch_size]
            logits = model(input_ids=b).logits[:, :-1].float()
            nll += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1), reduction="sum"
            ).item()
            n += b[:, 1:].numel()
    return math.exp(nll / max(n, 1))
