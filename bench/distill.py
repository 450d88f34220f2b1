"""Distillation benchmark (BENCH.md data): does KD recover a cut SmolLM2 better than plain
fine-tuning on the same tokens, and how close does a 3-layer MiniLM get to the 6-layer one?

    python bench/distill.py --quick            # small eval, short runs (a few minutes each)
    python bench/distill.py                    # BENCH.md protocol (64 x 512 eval windows)

Prints a side-by-side table: teacher (fp32), the cut student, student + KD, student + CE on
the same tokens; training tokens/s; MiniLM 6 -> 3 cosine / retrieval agreement; writes the
recovery curve PNG and a JSON of every figure to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from slimline.data import eval_blocks, sentences, train_blocks
from slimline.distill import DistillConfig, LoopHook, drop_blocks, perplexity, train
from slimline.models import embed, load_model

RESULTS = Path(__file__).parent / "results"


class PplCurve(LoopHook):
    """Records perplexity on a few eval windows every ``every`` steps (the recovery curve)."""

    name = "curve"

    def __init__(self, blocks: torch.Tensor, every: int):
        self.blocks, self.every, self.points = blocks, every, []

    def on_start(self, model, step, max_steps):
        self.points.append((0, perplexity(model, self.blocks)))

    def after_step(self, model, step):
        if step % self.every == 0:
            self.points.append((step, perplexity(model, self.blocks)))
            model.train()
        return None


def bench_smollm2(args: argparse.Namespace, keep: int) -> dict:
    t = load_model("smollm2-135m")
    tok = t.tokenizer
    n_eval, eval_len = (args.eval_windows or 8, 256) if args.quick else (64, 512)
    evals = {
        "python-docs": eval_blocks(tok, "python-docs", seq_len=eval_len, max_blocks=n_eval),
        "shakespeare": eval_blocks(tok, "shakespeare", seq_len=eval_len, max_blocks=n_eval),
    }
    data = train_blocks(tok, "python-docs", seq_len=args.seq_len, seed=0, exclude_calib=128)
    curve_blocks = evals["python-docs"][:2, :128]
    rows: dict = {}
    curves: dict = {}

    def measure(name: str, model: torch.nn.Module, extra: dict | None = None) -> None:
        rows[name] = {f"ppl/{k}": round(perplexity(model, v), 3) for k, v in evals.items()}
        rows[name]["params"] = sum(p.numel() for p in model.parameters())
        rows[name].update(extra or {})
        print(name, rows[name], flush=True)
        partial = RESULTS / "distill_partial.json"
        partial.write_text(
            json.dumps({"keep": keep, "rows": rows, "curves": curves}, indent=2) + "\n"
        )

    measure("teacher fp32 (30 blocks)", t.model)
    cut = drop_blocks(t, keep=keep)
    measure(f"cut to {keep} blocks (no training)", cut.model)
    common = dict(
        max_steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        warmup_steps=max(1, args.steps // 10),
        schedule="cosine",
        seed=0,
        clip=1.0,
    )
    for label, losses in (("KD", {"kl": 1.0}), ("CE", {"ce": 1.0})):
        s = drop_blocks(t, keep=keep)
        hook = PplCurve(curve_blocks, max(1, args.steps // 6))
        cfg = DistillConfig(losses=losses, temperature=1.0, **common)
        r = train(s.model, t, data, cfg, hooks=[hook], tokenizer=tok)
        curves[label] = hook.points
        measure(
            f"cut + {label} {r.steps} steps",
            s.model,
            {
                "train_tokens": r.tokens,
                "train_s": round(r.seconds, 1),
                "tokens_per_s (incl. curve evals)": round(r.tokens / r.seconds, 1),
            },
        )
    return {"keep": keep, "rows": rows, "curves": curves, "eval": f"{n_eval} x {eval_len}"}


@torch.no_grad()
def _retrieval(lm, texts) -> tuple[torch.Tensor, torch.Tensor]:
    enc = lm.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    e = torch.cat(
        [
            embed(lm, enc["input_ids"][i : i + 32], enc["attention_mask"][i : i + 32])
            for i in range(0, len(texts), 32)
        ]
    )
    sim = e @ e.T
    sim.fill_diagonal_(-2)
    return e, sim.topk(10, dim=-1).indices


def bench_minilm(args: argparse.Namespace) -> dict:
    t = load_model("minilm-l6")
    held = sentences("python-docs", "eval", n=256)
    fit = sentences("python-docs", "fit", n=2000)
    e_t, nn_t = _retrieval(t, held)
    s = drop_blocks(t, keep=3)

    def score(lm) -> dict:
        e_s, nn_s = _retrieval(lm, held)
        top1 = (nn_s[:, 0] == nn_t[:, 0]).float().mean().item()
        overlap = sum(
            len(set(a.tolist()) & set(b.tolist())) for a, b in zip(nn_s, nn_t, strict=True)
        )
        return {
            "cos/teacher": round((e_s * e_t).sum(-1).mean().item(), 4),
            "agree/top1 neighbour": round(top1, 4),
            "recall@10/teacher": round(overlap / (10 * len(held)), 4),
        }

    before = score(s)
    enc = t.tokenizer(fit, padding=True, truncation=True, max_length=128, return_tensors="pt")
    cfg = DistillConfig(
        losses={"embed": 1.0, "hidden": 1.0},
        max_steps=args.minilm_steps,
        batch_size=16,
        seq_len=128,
        lr=1e-4,
        warmup_steps=5,
        seed=0,
    )
    r = train(s.model, t, dict(enc), cfg, tokenizer=t.tokenizer)
    after = score(s)
    return {
        "before": before,
        "after": after,
        "steps": r.steps,
        "train_s": round(r.seconds, 1),
        "tokens_per_s": round(r.tokens / r.seconds, 1),
        "train_sentences": len(fit),
        "eval_sentences": len(held),
    }


def plot(curves: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in curves.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("python-docs perplexity (2 x 128-token windows)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--keep", type=int, nargs="+", default=[20])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--minilm-steps", type=int, default=None)
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--eval-windows", type=int, default=None, help="quick mode: windows per dataset"
    )
    ap.add_argument("--tag", default="", help="suffix of the result files")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.steps = args.steps or (24 if args.quick else 400)
    args.seq_len = args.seq_len or (128 if args.quick else 512)
    args.minilm_steps = args.minilm_steps or (30 if args.quick else 300)
    RESULTS.mkdir(exist_ok=True)
    mode = ("quick" if args.quick else "full") + (f"-{args.tag}" if args.tag else "")
    out = {"mode": mode, "args": vars(args), "smollm2": [], "minilm": None}
    t0 = time.time()
    path = RESULTS / f"distill_{mode}.json"

    def save() -> None:  # after each part, so a long run that is cut short keeps what it measured
        out["wall_s"] = round(time.time() - t0, 1)
        path.write_text(json.dumps(out, indent=2) + "\n")

    if not args.skip_minilm:
        out["minilm"] = bench_minilm(args)
        print("minilm", out["minilm"], flush=True)
        save()
    for keep in args.keep:
        res = bench_smollm2(args, keep)
        out["smollm2"].append(res)
        save()
        plot(
            res["curves"],
            RESULTS / f"distill_recovery_keep{keep}{'-' + args.tag if args.tag else ''}.png",
            f"SmolLM2-135M cut to {keep}/30 blocks: KD vs CE ({mode})",
        )
    save()
    print()
    for res in out["smollm2"]:
        print(f"SmolLM2-135M -> {res['keep']} blocks, eval {res['eval']} tokens, mode {mode}")
        print(
            f"{'model':38s} {'params':>11s} {'ppl/python-docs':>16s} {'ppl/shakespeare':>16s} {'tok/s':>8s}"
        )
        for name, r in res["rows"].items():
            tps = next((v for k, v in r.items() if k.startswith("tokens_per_s")), "")
            print(
                f"{name:38s} {r['params']:>11,d} {r['ppl/python-docs']:>16.3f} "
                f"{r['ppl/shakespeare']:>16.3f} {tps!s:>8s}"
            )
    if out["minilm"]:
        m = out["minilm"]
        print(f"\nMiniLM-L6 -> 3 layers ({m['steps']} steps, {m['tokens_per_s']} tok/s)")
        for k in m["before"]:
            print(f"{k:24s} before {m['before'][k]:.4f}  after {m['after'][k]:.4f}")
    print(
        f"\nwall {out['wall_s']} s; no peer distillation tool is installed here: the baseline is "
        "plain cross-entropy fine-tuning on the same tokens (same steps, lr, schedule)"
    )


if __name__ == "__main__":
    main()
