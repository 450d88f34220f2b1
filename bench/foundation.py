"""Baseline profile and evaluation of both bundled models (BENCH.md protocol).

SmolLM2-135M-Instruct: python-docs and shakespeare perplexity / bits per byte / ECE, each
cross-checked against transformers' own ``labels=`` loss on the same windows; prefill and decode
latency (our KV-cache loop and, interleaved A B A B, transformers' ``generate``); per-module time.
all-MiniLM-L6-v2: parameters, latency for a batch of sentences (ours vs sentence-transformers'
``encode``, interleaved), and a cosine self-check of our embeddings against sentence-transformers'.

    python bench/foundation.py            # full protocol: 64 windows, 5 repeats
    python bench/foundation.py --quick    # 8 windows, 3 repeats
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from rich.console import Console
from rich.table import Table

from slimline.data import eval_blocks, sentences
from slimline.eval import evaluate, hf_perplexity, sentence_embeddings
from slimline.models import BUNDLED, bundled_path, load_model
from slimline.profile import profile, size_on_disk
from slimline.profile.runtime import greedy_decode, machine

console = Console(width=160)
BENCH_PPL = 12.78  # BENCH.md / PEERS.md fp32 python-docs reference


def smollm2(windows: int, repeats: int, threads: int, results: dict) -> None:
    lm = load_model("smollm2-135m")
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    metrics = evaluate(lm, data=["python-docs", "shakespeare"], windows=windows, seq_len=512)
    eval_s = time.perf_counter() - t0
    t = Table(title=f"SmolLM2-135M fp32: quality ({windows} windows x 512 tokens per dataset)")
    for c in (
        "dataset",
        "windows",
        "ppl (slimline)",
        "ppl (HF labels= loss)",
        "rel. diff",
        "bpb",
        "ece",
    ):
        t.add_column(c, justify="right")
    for ds in ("python-docs", "shakespeare"):
        blocks = eval_blocks(lm.tokenizer, ds, seq_len=512, max_blocks=windows)
        hf = hf_perplexity(lm.model, blocks)
        ours = metrics[f"ppl/{ds}"]
        rel = abs(ours - hf) / hf
        results[f"ppl/{ds}"] = ours
        results[f"ppl_hf/{ds}"] = hf
        results[f"windows/{ds}"] = int(blocks.shape[0])
        t.add_row(
            ds,
            str(blocks.shape[0]),
            f"{ours:.4f}",
            f"{hf:.4f}",
            f"{rel:.1e}",
            f"{metrics[f'bpb/{ds}']:.4f}",
            f"{metrics[f'ece/{ds}']:.4f}",
        )
    console.print(t)
    console.print(f"BENCH.md fp32 python-docs reference: {BENCH_PPL}; eval took {eval_s:.0f} s")
    results["smollm2_eval"] = metrics

    p = profile(lm, seq_len=512, new_tokens=64, prompt_len=32, repeats=repeats, threads=threads)
    for tab in p.tables():
        console.print(tab)
    results["smollm2_profile"] = {"metrics": p.metrics, "breakdown": p.breakdown, "env": p.env}

    # Decode: our cached greedy loop vs transformers' generate, interleaved A B A B.
    prompt = torch.randint(0, 49152, (1, 32), generator=torch.Generator().manual_seed(0))
    ours, hf = [], []
    with torch.inference_mode():
        lm.model.generate(prompt, max_new_tokens=4, do_sample=False)  # warm-up
        greedy_decode(lm.model, prompt, 4)
        for _ in range(repeats):
            tp, ts, _ = greedy_decode(lm.model, prompt, 64)
            ours.append(64 / (tp + ts))
            t0 = time.perf_counter()
            out = lm.model.generate(prompt, max_new_tokens=64, min_new_tokens=64, do_sample=False)
            hf.append((out.shape[1] - 32) / (time.perf_counter() - t0))
    d = Table(
        title=f"SmolLM2 generate 64 tokens after a 32-token prompt ({threads} threads, A B interleaved)"
    )
    for c in ("engine", "tok/s median", "min", "max"):
        d.add_column(c, justify="right")
    d.add_row(
        "slimline greedy loop (KV cache)",
        f"{statistics.median(ours):.2f}",
        f"{min(ours):.2f}",
        f"{max(ours):.2f}",
    )
    d.add_row(
        "transformers generate", f"{statistics.median(hf):.2f}", f"{min(hf):.2f}", f"{max(hf):.2f}"
    )
    console.print(d)
    results["decode_ours_tok_s"] = ours
    results["decode_hf_generate_tok_s"] = hf
    results["smollm2_disk_bytes"] = size_on_disk(lm.path) if lm.path else None


def ppl_only(windows: int, threads: int, results: dict) -> None:
    """The BENCH.md headline figure alone: python-docs perplexity of the fp32 model."""
    lm = load_model("smollm2-135m")
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    m = evaluate(lm, data=["python-docs"], windows=windows, seq_len=512, suite="ppl")
    console.print(
        f"SmolLM2 python-docs over {windows} windows x 512: ppl {m['ppl/python-docs']:.4f}, "
        f"bpb {m['bpb/python-docs']:.4f} (BENCH.md fp32: {BENCH_PPL}); {time.perf_counter() - t0:.0f} s"
    )
    results["ppl_only"] = m


def minilm(repeats: int, threads: int, n_sent: int, results: dict) -> None:
    from sentence_transformers import SentenceTransformer

    lm = load_model("minilm-l6")
    torch.set_num_threads(threads)
    p = profile(lm, seq_len=128, batch=32, repeats=repeats, threads=threads)
    for tab in p.tables()[:3]:
        console.print(tab)
    texts = sentences("python-docs", split="eval", n=n_sent)
    st = SentenceTransformer(str(bundled_path("minilm-l6")), device="cpu")
    max_len = st.max_seq_length
    ours_t, st_t = [], []
    sentence_embeddings(lm, texts[:8], max_len=max_len)  # warm-up
    st.encode(texts[:8], batch_size=32)
    for _ in range(repeats):
        t0 = time.perf_counter()
        e = sentence_embeddings(lm, texts, max_len=max_len)
        ours_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        r = torch.as_tensor(st.encode(texts, batch_size=32, normalize_embeddings=True))
        st_t.append(time.perf_counter() - t0)
    cos = torch.nn.functional.cosine_similarity(e, r, dim=-1)
    t = Table(
        title=f"MiniLM-L6: embed {len(texts)} python-docs paragraphs (max {max_len} tokens, batch 32, {threads} threads)"
    )
    for c in ("engine", "s median", "min", "max", "sentences/s"):
        t.add_column(c, justify="right")
    for name, xs in (("slimline embed()", ours_t), ("sentence-transformers encode", st_t)):
        med = statistics.median(xs)
        t.add_row(name, f"{med:.2f}", f"{min(xs):.2f}", f"{max(xs):.2f}", f"{len(texts) / med:.1f}")
    console.print(t)
    console.print(
        f"cosine(ours, sentence-transformers): mean {float(cos.mean()):.6f}, min {float(cos.min()):.6f}"
    )
    self_eval = evaluate(lm, reference=lm, n_sentences=n_sent)
    console.print(f"evaluate(minilm, reference=minilm): {self_eval}")
    results["minilm_profile"] = {"metrics": p.metrics, "env": p.env}
    results["minilm_embed_s"] = {"ours": ours_t, "sentence_transformers": st_t}
    results["minilm_cos_vs_st"] = {"mean": float(cos.mean()), "min": float(cos.min())}
    results["minilm_self_eval"] = self_eval


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 eval windows, 3 repeats")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--only",
        choices=["smollm2", "minilm", "ppl"],
        default=None,
        help="ppl: only SmolLM2 python-docs perplexity over --windows (no HF re-run)",
    )
    ap.add_argument("--windows", type=int, default=None, help="override the eval window count")
    ap.add_argument(
        "--sentences", type=int, default=None, help="override the MiniLM sentence count"
    )
    ap.add_argument("--json", default=None, help="also write all figures to this JSON file")
    args = ap.parse_args()
    windows, repeats = (8, 3) if args.quick else (64, 5)
    windows = args.windows or windows
    results: dict = {
        "machine": machine(),
        "mode": "quick" if args.quick else "full",
        "threads": args.threads,
        "models": {k: v.description for k, v in BUNDLED.items()},
    }
    console.print(
        f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores; "
        f"engine torch eager {torch.__version__}; {args.threads} threads; mode {results['mode']}"
    )
    if args.only == "ppl":
        ppl_only(windows, args.threads, results)
    if args.only in (None, "smollm2"):
        smollm2(windows, repeats, args.threads, results)
    if args.only in (None, "minilm"):
        minilm(repeats, args.threads, args.sentences or (128 if args.quick else 256), results)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2, default=str)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
