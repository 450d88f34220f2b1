"""Pruning benchmark (BENCH.md protocol): SmolLM2-135M-Instruct, unstructured 50% and 2:4 with
magnitude / Wanda / SparseGPT, and structured MLP-channel removal vs the dense model.

    python bench/prune.py --quick          # 8 python-docs + 4 Hamlet eval windows, 3 timing runs
    python bench/prune.py                  # full protocol: 64 + 64 eval windows, 5 timing runs

Calibration is 32 x 512 tokens of python-docs (seed 0), as llm-compressor's figures in
PEERS.md (Wanda 50% 25.392, SparseGPT 2:4 29.649 on 64 python-docs windows). llm-compressor is
not installed here, so its figures are quoted from PEERS.md, not re-measured in this run.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

PEERS = {("wanda", "50%"): 25.392, ("sparsegpt", "2:4"): 29.649}


@torch.inference_mode()
def ppl(model, blocks) -> float:
    from slimline.eval.api import hf_perplexity

    return hf_perplexity(model, blocks)


def linear_macs(model) -> int:
    """Multiply-accumulates per token in the Linear layers (attention scores excluded)."""
    return sum(
        m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)
    )


@torch.inference_mode()
def timings(models: dict, runs: int, tok_prompt) -> dict:
    """Prefill of 512 tokens and greedy decode of 64 tokens after a 32-token prompt, models
    interleaved A B A B so contention hits all alike; median/min/max of ``runs`` after a warm-up."""
    prefill = {k: [] for k in models}
    decode = {k: [] for k in models}
    ids512 = tok_prompt[:, :512]
    ids32 = tok_prompt[:, :32]
    for r in range(runs + 1):
        for k, m in models.items():
            t = time.perf_counter()
            m(input_ids=ids512, use_cache=False)
            p = time.perf_counter() - t
            t = time.perf_counter()
            out = m.generate(ids32, max_new_tokens=64, min_new_tokens=64, do_sample=False)
            d = time.perf_counter() - t
            assert out.shape[1] == 96
            if r:  # the first round is the warm-up
                prefill[k].append(p * 1000)
                decode[k].append(64 / d)
    res = {}
    for k in models:
        res[k] = {
            "prefill_ms": statistics.median(prefill[k]),
            "prefill_ms_min": min(prefill[k]),
            "prefill_ms_max": max(prefill[k]),
            "decode_tok_s": statistics.median(decode[k]),
            "decode_tok_s_min": min(decode[k]),
            "decode_tok_s_max": max(decode[k]),
        }
    return res


def dir_bytes(model, tokenizer=None) -> int:
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        return sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument(
        "--configs",
        default="wanda:50%,sparsegpt:2:4,magnitude:50%,sparsegpt:50%,magnitude:2:4,wanda:2:4",
        help="method:config pairs, run in this order (the peer comparisons first)",
    )
    ap.add_argument("--skip-unstructured", action="store_true")
    ap.add_argument("--skip-structured", action="store_true")
    ap.add_argument("--json", dest="json_out", default=None, help="also write results here")
    args = ap.parse_args()
    # Compression and perplexity run at 1 thread: on this contended VM (load ~16 on 2 cores)
    # thread hand-offs made 2 threads many times slower. Latency is measured at 2 (BENCH.md).
    torch.set_num_threads(1)

    from slimline.data import calibration_blocks, eval_blocks
    from slimline.models import load_model
    from slimline.prune import Magnitude, PruneMlp, SparseGpt, Wanda, prune, to_sparse

    n_py, n_ham, runs = (8, 4, 3) if args.quick else (64, 64, 5)
    lm = load_model("smollm2-135m")
    tok = lm.tokenizer
    dense = lm.model.eval()
    calib = calibration_blocks(tok, "python-docs", n=args.calib_samples, seq_len=512, seed=0)
    ev_py = eval_blocks(tok, "python-docs", seq_len=512, max_blocks=n_py)
    ev_ham = eval_blocks(tok, "shakespeare", seq_len=512, max_blocks=n_ham)
    mode = "quick" if args.quick else "full"
    print(
        f"# mode={mode} calib={args.calib_samples}x512 eval python-docs={len(ev_py)} hamlet={len(ev_ham)} "
        f"windows, torch threads=1 (latency: 2), engine=torch eager fp32",
        flush=True,
    )
    results: dict = {
        "mode": mode,
        "calib": [args.calib_samples, 512],
        "eval_windows": [len(ev_py), len(ev_ham)],
    }

    base_py, base_ham = ppl(dense, ev_py), ppl(dense, ev_ham)
    rows = [("fp32 dense", "-", base_py, base_ham, 0.0, None)]
    print(f"fp32: python-docs {base_py:.3f}  hamlet {base_ham:.3f}", flush=True)

    if not args.skip_unstructured:
        cls = {"magnitude": Magnitude, "wanda": Wanda, "sparsegpt": SparseGpt}
        for item in args.configs.split(","):
            meth, pat = item.split(":", 1)
            cfg = (
                cls[meth](pattern=pat)
                if ":" in pat
                else cls[meth](sparsity=float(pat.rstrip("%")) / 100)
            )
            m = copy.deepcopy(dense)
            t = time.perf_counter()
            rec = prune(m, cfg, data=calib)
            secs = time.perf_counter() - t
            p_py, p_ham = ppl(m, ev_py), ppl(m, ev_ham)
            rows.append((meth, pat, p_py, p_ham, secs, rec["sparsity"]))
            print(
                f"{meth:10s} {pat:4s} python-docs {p_py:8.3f} hamlet {p_ham:8.3f} "
                f"prune {secs:6.1f}s sparsity {rec['sparsity']:.4f}",
                flush=True,
            )
            if meth == "sparsegpt" and pat == "50%":
                # size of the saved artifact: SparseLinear (bitmask + fp32 non-zeros) vs dense
                from slimline.artifact import save_artifact

                with tempfile.TemporaryDirectory() as d:
                    st = to_sparse(m)
                    info = save_artifact(m, tok, Path(d) / "a")
                    results["sparse_artifact_bytes"] = info.size_bytes
                    results["sparse_weight_bytes"] = [
                        st["dense_weight_bytes"],
                        st["sparse_weight_bytes"],
                    ]
                m2 = copy.deepcopy(dense)
                prune(m2, Magnitude(sparsity=0.5))
                st4 = to_sparse(m2, bits=4, group_size=64)
                results["sparse4_weight_bytes"] = [
                    st4["dense_weight_bytes"],
                    st4["sparse_weight_bytes"],
                ]
                del m2
            del m
        results["unstructured"] = [
            {
                "method": r[0],
                "config": r[1],
                "ppl/python-docs": r[2],
                "ppl/shakespeare": r[3],
                "prune_s": r[4],
                "sparsity": r[5],
            }
            for r in rows
        ]
        print()
        print(
            "| method | config | python-docs ppl | ratio to fp32 | Hamlet ppl | prune s | llm-compressor (PEERS.md) |"
        )
        print("|---|---|---|---|---|---|---|")
        for meth, pat, p_py, p_ham, secs, _ in rows:
            peer = PEERS.get((meth, pat))
            print(
                f"| {meth} | {pat} | {p_py:.3f} | {p_py / base_py:.3f} | {p_ham:.3f} | {secs:.0f} | "
                f"{'' if peer is None else f'{peer:.3f}'} |"
            )
        if "sparse_weight_bytes" in results:
            d, s = results["sparse_weight_bytes"]
            d4, s4 = results["sparse4_weight_bytes"]
            print(
                f"\n50% sparse block linears: dense fp32 {d / 1e6:.1f} MB -> SparseLinear {s / 1e6:.1f} MB "
                f"({s / d:.3f}); with 4-bit non-zeros {s4 / 1e6:.1f} MB ({s4 / d4:.3f}); "
                f"whole artifact {results['sparse_artifact_bytes'] / 1e6:.1f} MB (dense 538.2 MB)"
            )

    if not args.skip_structured:
        cal = calib[: min(len(calib), 8 if args.quick else 32)]
        models = {"dense": dense}
        srow = {}
        for amount in (0.25, 0.5):
            m = copy.deepcopy(dense)
            t = time.perf_counter()
            rec = prune(m, PruneMlp(amount=amount), data=cal)
            secs = time.perf_counter() - t
            key = f"mlp-{int(amount * 100)}%"
            models[key] = m
            srow[key] = {
                "prune_s": secs,
                "params": rec["params_after"],
                "ppl/python-docs": ppl(m, ev_py),
                "ppl/shakespeare": ppl(m, ev_ham),
            }
        srow["dense"] = {
            "prune_s": 0.0,
            "params": sum(p.numel() for p in dense.parameters()),
            "ppl/python-docs": base_py,
            "ppl/shakespeare": base_ham,
        }
        prompt = ev_py[:1]
        torch.set_num_threads(2)
        tm = timings(models, runs, prompt)
        base_macs = linear_macs(dense)
        print(
            "\n| model | params | MB on disk | python-docs ppl | Hamlet ppl | linear MACs/token | prefill 512 ms (min-max) | decode tok/s (min-max) | prefill speedup | decode speedup |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for k, m in models.items():
            r = srow[k]
            r["bytes"] = dir_bytes(m)
            r["macs"] = linear_macs(m)
            r.update(tm[k])
            print(
                f"| {k} | {r['params'] / 1e6:.1f}M | {r['bytes'] / 1e6:.1f} | {r['ppl/python-docs']:.2f} | "
                f"{r['ppl/shakespeare']:.2f} | {r['macs'] / base_macs:.3f}x | "
                f"{r['prefill_ms']:.0f} ({r['prefill_ms_min']:.0f}-{r['prefill_ms_max']:.0f}) | "
                f"{r['decode_tok_s']:.1f} ({r['decode_tok_s_min']:.1f}-{r['decode_tok_s_max']:.1f}) | "
                f"{tm['dense']['prefill_ms'] / r['prefill_ms']:.2f}x | {r['decode_tok_s'] / tm['dense']['decode_tok_s']:.2f}x |"
            )
        results["structured"] = srow
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
