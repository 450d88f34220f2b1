"""Pruning benchmark (BENCH.md protocol) on SmolLM2-135M-Instruct.

1. Unstructured 50% and 2:4 with magnitude / Wanda / SparseGPT: perplexity (slimline.eval),
   prune wall seconds and process peak RSS, non-zero parameters, and bytes on disk of the saved
   artifact with ``SparseLinear`` storage (bitmask + non-zeros) vs the dense fp32 artifact.
2. Structured removal (MLP channels 25% / 50%, attention heads 25%, no recovery): parameters,
   bytes on disk, perplexity, analytic FLOPs per token (slimline.profile) and measured prefill /
   decode speed vs dense, interleaved A B A B in one run so contention hits all models alike.
3. Optional: the per-layer sensitivity sweep, its table and PNG.

    python bench/prune.py --windows 16 --json bench/results/prune_w16.json
    python bench/prune.py --windows 64 --datasets python-docs --configs wanda:50%,sparsegpt:2:4 \
        --skip-structured --json bench/results/prune_w64_peer.json
    python bench/prune.py --skip-unstructured --skip-structured --sensitivity 0.3,0.5,0.7
    python bench/prune.py --skip-unstructured --timing-only --runs 3   # structured speed only

Calibration is 32 x 512 tokens of python-docs (seed 0), as llm-compressor's runs in PEERS.md
(Wanda 50% 25.392, SparseGPT 2:4 29.649 on 64 python-docs windows). llm-compressor does not
install beside our transformers, so its figures are QUOTED from PEERS.md, not re-measured here.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

PEERS = {("wanda", "50%"): 25.392, ("sparsegpt", "2:4"): 29.649}
DENSE_PEER_PPL = 12.781  # PEERS.md fp32 on 64 python-docs windows


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


class Recorder:
    """Results dict written to JSON after every row, so a cut-off run still leaves figures."""

    def __init__(self, path: str | None, head: dict[str, Any]):
        self.path = Path(path) if path else None
        self.data: dict[str, Any] = dict(head)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.flush()

    def append(self, key: str, value: Any) -> None:
        self.data.setdefault(key, []).append(value)
        self.flush()

    def flush(self) -> None:
        if self.path is None:
            return
        self.data["updated"] = now()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)


def ppl(model: torch.nn.Module, tok: Any, windows: dict[str, torch.Tensor]) -> dict[str, float]:
    from slimline.eval import evaluate

    res = evaluate(model, data=windows, suite="ppl", tokenizer=tok)
    return {k: v for k, v in res.items() if k.startswith("ppl/")}


def artifact_bytes(model: torch.nn.Module, tok: Any, stages: Any) -> tuple[int, int]:
    """Bytes on disk (all files) of the model saved as a slimline artifact, and of its weights
    file(s) only; written to a temp dir and deleted."""
    from slimline.artifact import save_artifact
    from slimline.profile.static import size_on_disk

    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        out = Path(d) / "a"
        save_artifact(model, tok, out, manifest={"stages": stages})
        total = size_on_disk(out)
        weights = sum(f.stat().st_size for f in out.rglob("*.safetensors"))
    return total, weights


def hf_bytes(model: torch.nn.Module) -> int:
    from slimline.profile.static import size_on_disk

    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        model.save_pretrained(d)
        return size_on_disk(d)


@torch.inference_mode()
def interleaved_timings(
    models: dict[str, torch.nn.Module], runs: int, threads: int = 2
) -> dict[str, dict[str, Any]]:
    """BENCH.md speed protocol via ``slimline.profile.profile_paired`` (models take turns A B A B
    in every round, warm-up in the first), plus where each model's decode step spends its time
    (``decode_breakdown``): the share a narrower GEMM can shrink."""
    from slimline.profile import decode_breakdown, profile_paired
    from slimline.profile.runtime import torch_threads

    names = list(models)
    profs = profile_paired([models[k] for k in names], rounds=runs, threads=threads)
    vocab = int(models[names[0]].get_input_embeddings().num_embeddings)
    prompt = torch.randint(0, vocab, (1, 32), generator=torch.Generator().manual_seed(0))
    res = {}
    for k, p in zip(names, profs, strict=True):
        m = p.metrics
        res[k] = {
            "prefill_ms": m["latency/prefill_ms"],
            "prefill_ms_min": m["latency/prefill_ms_min"],
            "prefill_ms_max": m["latency/prefill_ms_max"],
            "decode_tok_s": m["latency/decode_tok_s"],
            "decode_tok_s_min": m["latency/decode_tok_s_min"],
            "decode_tok_s_max": m["latency/decode_tok_s_max"],
            "prefill_ms_all": p.timings["prefill_ms"],
            "decode_tok_s_all": p.timings["decode_tok_s"],
        }
        with torch_threads(threads):
            res[k]["decode_breakdown"] = decode_breakdown(models[k], prompt, new_tokens=32)
        print(f"  {k} decode step: {res[k]['decode_breakdown']['share']}", flush=True)
    return res


def make_cfg(item: str) -> tuple[str, str, Any]:
    from slimline.prune import Magnitude, SparseGpt, Wanda

    cls = {"magnitude": Magnitude, "wanda": Wanda, "sparsegpt": SparseGpt}
    meth, _, pat = item.partition(":")
    if meth not in cls or not pat:
        raise SystemExit(f"cannot read config {item!r}: use method:50% or method:2:4")
    if ":" in pat:
        return meth, pat, cls[meth](pattern=pat)
    return meth, pat, cls[meth](sparsity=float(pat.rstrip("%")) / 100)


def run_unstructured(args, lm, calib, windows, base, rec: Recorder) -> None:
    from slimline.profile.runtime import RssSampler
    from slimline.profile.static import param_stats
    from slimline.prune import prune, to_sparse

    dense, tok = lm.model, lm.tokenizer
    if not args.no_artifacts:
        t0 = time.perf_counter()
        a_total, a_w = artifact_bytes(dense, tok, [])
        rec.put("dense_artifact", {"bytes": a_total, "weight_bytes": a_w})
        print(f"dense artifact {a_total:,} bytes ({time.perf_counter() - t0:.0f}s)", flush=True)
    for item in args.configs.split(","):
        meth, pat, cfg = make_cfg(item)
        m = copy.deepcopy(dense)
        with RssSampler() as rss:
            t0 = time.perf_counter()
            r = prune(m, cfg, data=None if meth == "magnitude" else calib)
            secs = time.perf_counter() - t0
        stats = param_stats(m)
        row: dict[str, Any] = {
            "method": meth,
            "config": pat,
            "prune_s": secs,
            "prune_peak_rss_mb": rss.peak / 2**20,
            "sparsity": r.get("sparsity"),
            "params/total": stats.total,
            "params/nonzero": stats.nonzero,
        }
        t0 = time.perf_counter()
        row.update(ppl(m, tok, windows))
        row["eval_s"] = time.perf_counter() - t0
        if not args.no_artifacts:
            st = to_sparse(m)
            row["sparse_modules"] = len(st["modules"])
            row["sparse_weight_bytes"] = st["sparse_weight_bytes"]
            row["dense_weight_bytes_of_those"] = st["dense_weight_bytes"]
            row["artifact_bytes"], row["artifact_weight_bytes"] = artifact_bytes(m, tok, [r])
        rec.append("unstructured", row)
        print(
            f"{meth:10s} {pat:4s} "
            + " ".join(f"{k} {v:.3f}" for k, v in row.items() if k.startswith("ppl/"))
            + f"  prune {secs:.0f}s  rss {row['prune_peak_rss_mb']:.0f}MB"
            + f"  sparsity {row['sparsity']:.4f}"
            + (f"  artifact {row['artifact_bytes']:,}B" if "artifact_bytes" in row else ""),
            flush=True,
        )
        del m


def run_structured(args, lm, calib, windows, base, rec: Recorder) -> None:
    from slimline.profile.static import flops_per_token, param_stats
    from slimline.prune import PruneHeads, PruneMlp, prune

    dense, tok, arch = lm.model, lm.tokenizer, lm.arch
    cal = calib[: args.struct_calib]
    models: dict[str, torch.nn.Module] = {"dense": dense}
    rows: dict[str, dict[str, Any]] = {"dense": {"prune_s": 0.0, **base}}
    for spec in args.structured.split(","):
        kind, _, amt = spec.partition("=")
        amount = float(amt)
        imp = "magnitude" if args.timing_only else "activation"
        cls = PruneMlp if kind == "mlp" else PruneHeads
        cfg = cls(amount=amount, importance=imp)
        key = f"{kind}-{round(amount * 100)}%"
        m = copy.deepcopy(dense)
        t0 = time.perf_counter()
        r = prune(m, cfg, data=cal)
        secs = time.perf_counter() - t0
        models[key] = m
        rec = r.model_dump(mode="json")  # the typed StageRecord; per-block detail left out
        rec["details"].pop("per_block", None)
        rows[key] = {"prune_s": secs, "record": rec}
        if not args.timing_only:  # speed does not depend on which channels go
            rows[key].update(ppl(m, tok, windows))
        print(
            f"{key}: prune {secs:.0f}s "
            + " ".join(f"{k} {v:.3f}" for k, v in rows[key].items() if k.startswith("ppl/")),
            flush=True,
        )
        rec.put("structured", rows)
    for k, m in models.items():
        st = param_stats(m)
        rows[k]["params"] = st.total
        rows[k]["hf_bytes"] = hf_bytes(m)
        rows[k]["flops_prefill"] = flops_per_token(m, arch, 512)["total"]
        rows[k]["flops_decode"] = flops_per_token(m, arch, 96, mode="decode")["total"]
        rows[k]["flops_linear"] = flops_per_token(m, arch, 512)["linear"]
    rec.put("structured", rows)
    tm = interleaved_timings(models, args.runs, args.threads)
    for k in models:
        rows[k].update(tm[k])
    rec.put("structured", rows)


def run_sensitivity(args, lm, calib, rec: Recorder) -> None:
    from slimline.prune import allocate, sensitivity_sweep

    sps = [float(s) for s in args.sensitivity.split(",")]
    t0 = time.perf_counter()
    sw = sensitivity_sweep(lm.model, calib[: args.sens_calib], sparsities=sps, method="wanda")
    secs = time.perf_counter() - t0
    png = sw.plot(args.png)
    print(sw.table(), flush=True)
    alloc = allocate(sw, 0.5) if max(sps) >= 0.5 else None
    rec.put(
        "sensitivity",
        {
            "seconds": secs,
            "calib": [args.sens_calib, 512],
            "png": str(png),
            **sw.to_dict(),
            "allocation_at_50": alloc,
        },
    )
    print(f"sensitivity sweep {secs:.0f}s -> {png}", flush=True)


def print_tables(data: dict[str, Any]) -> None:
    base = data.get("dense", {})
    names = [k for k in base if k.startswith("ppl/")] if base else []
    if "unstructured" in data:
        print(
            "\n| method | config | "
            + " | ".join(f"{n} (x fp32)" for n in names)
            + " | llm-compressor python-docs (PEERS.md, 64 win) | prune s | peak RSS MB "
            "| non-zero params | artifact MB (sparse) | dense artifact MB |"
        )
        print("|---" * (len(names) + 8) + "|")
        da = data.get("dense_artifact", {}).get("bytes")
        print(
            "| fp32 dense | - | "
            + " | ".join(f"{base[n]:.3f}" for n in names)
            + f" | {DENSE_PEER_PPL} | - | - | - | - | {'' if da is None else f'{da / 1e6:.1f}'} |"
        )
        for r in data["unstructured"]:
            peer = PEERS.get((r["method"], r["config"]))
            ab = r.get("artifact_bytes")
            print(
                f"| {r['method']} | {r['config']} | "
                + " | ".join(f"{r[n]:.3f} ({r[n] / base[n]:.2f})" for n in names)
                + f" | {'' if peer is None else peer} | {r['prune_s']:.0f} | "
                f"{r['prune_peak_rss_mb']:.0f} | {r['params/nonzero'] / 1e6:.1f}M | "
                f"{'' if ab is None else f'{ab / 1e6:.1f}'} | {'' if da is None else f'{da / 1e6:.1f}'} |"
            )
    if "structured" in data and "decode_tok_s" in data["structured"].get("dense", {}):
        rows = data["structured"]
        d = rows["dense"]
        print(
            "\n| model | params | MB on disk | "
            + "".join(f"{n} | " for n in names)
            + "FLOPs/token prefill (x dense) | FLOPs/token decode (x dense) | prefill 512 ms "
            "(min-max) | decode tok/s (min-max) | prefill speedup | decode speedup |"
        )
        print("|---" * (len(names) + 9) + "|")
        for k, r in rows.items():
            print(
                f"| {k} | {r['params'] / 1e6:.1f}M | {r['hf_bytes'] / 1e6:.1f} | "
                + "".join(f"{r[n]:.2f} | " for n in names)
                + f"{r['flops_prefill'] / 1e6:.0f}M ({r['flops_prefill'] / d['flops_prefill']:.3f}) | "
                f"{r['flops_decode'] / 1e6:.0f}M ({r['flops_decode'] / d['flops_decode']:.3f}) | "
                f"{r['prefill_ms']:.0f} ({r['prefill_ms_min']:.0f}-{r['prefill_ms_max']:.0f}) | "
                f"{r['decode_tok_s']:.1f} ({r['decode_tok_s_min']:.1f}-{r['decode_tok_s_max']:.1f}) | "
                f"{d['prefill_ms'] / r['prefill_ms']:.2f}x (FLOPs {d['flops_prefill'] / r['flops_prefill']:.2f}x) | "
                f"{r['decode_tok_s'] / d['decode_tok_s']:.2f}x (FLOPs {d['flops_decode'] / r['flops_decode']:.2f}x) |"
            )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--windows", type=int, default=64, help="eval windows per dataset (<= 64)")
    ap.add_argument("--datasets", default="python-docs,shakespeare")
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument(
        "--configs",
        default="wanda:50%,sparsegpt:2:4,sparsegpt:50%,wanda:2:4,magnitude:50%,magnitude:2:4",
        help="method:config pairs, run in this order (the peer comparisons first)",
    )
    ap.add_argument("--structured", default="mlp=0.25,mlp=0.5,heads=0.25")
    ap.add_argument("--struct-calib", type=int, default=8, help="calibration windows for ranking")
    ap.add_argument("--runs", type=int, default=5, help="timed rounds after 1 warm-up round")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for latency (BENCH: 2)")
    ap.add_argument(
        "--timing-only",
        action="store_true",
        help="structured: magnitude ranking (no calibration) and no perplexity, speed only",
    )
    ap.add_argument("--no-artifacts", action="store_true", help="skip saving artifacts")
    ap.add_argument("--skip-unstructured", action="store_true")
    ap.add_argument("--skip-structured", action="store_true")
    ap.add_argument("--sensitivity", default=None, help="sparsities for the sweep, e.g. 0.3,0.5")
    ap.add_argument("--sens-calib", type=int, default=8)
    ap.add_argument("--png", default="bench/results/prune_sensitivity.png")
    ap.add_argument("--json", dest="json_out", default=None, help="results, updated per row")
    ap.add_argument("--compress-threads", type=int, default=2, help="torch threads (not latency)")
    args = ap.parse_args()
    # Compression and perplexity at --compress-threads (1 when other jobs share the VM's 2 cores);
    # latency at the protocol's --threads inside interleaved_timings.
    torch.set_num_threads(args.compress_threads)

    from slimline.data import calibration_blocks, eval_blocks
    from slimline.models import load_model

    lm = load_model("smollm2-135m")
    tok = lm.tokenizer
    calib = calibration_blocks(tok, "python-docs", n=args.calib_samples, seq_len=512, seed=0)
    windows = {
        ds: eval_blocks(tok, ds, seq_len=512, max_blocks=args.windows)
        for ds in args.datasets.split(",")
    }
    head = {
        "started": now(),
        "machine": "2-core AVX2 CPU VM",
        "load_average_at_start": os.getloadavg(),
        "engine": f"torch eager fp32 (compression/eval {args.compress_threads} threads, "
        f"latency {args.threads} threads)",
        "torch": torch.__version__,
        "calib": [args.calib_samples, 512],
        "eval_windows": {k: len(v) for k, v in windows.items()},
        "args": vars(args),
    }
    rec = Recorder(args.json_out, head)
    print(f"# {json.dumps(head, default=str)}", flush=True)
    need_base = not (args.skip_unstructured and (args.skip_structured or args.timing_only))
    base: dict[str, float] = {}
    if need_base:
        t0 = time.perf_counter()
        base = ppl(lm.model, tok, windows)
        rec.put("dense", base)
        print(f"fp32: {base}  ({time.perf_counter() - t0:.0f}s)", flush=True)
    if not args.skip_unstructured:
        run_unstructured(args, lm, calib, windows, base, rec)
    if not args.skip_structured:
        run_structured(args, lm, calib, windows, base, rec)
    if args.sensitivity:
        run_sensitivity(args, lm, calib, rec)
    rec.put("finished", now())
    print_tables(rec.data)


if __name__ == "__main__":
    main()
