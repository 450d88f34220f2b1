"""Scale (issue 15): compressing models larger than memory, and distilling on several processes.

    python bench/scale.py --json bench/results/scale.json     # the full run (lead: quiet box)
    python bench/scale.py --smoke                              # tiny settings, a minute or two
    python bench/scale.py --rows gptq-mem,gptq-stream          # a subset

Rows (each compression runs in its own process under ``/usr/bin/time -v``: wall seconds and peak
RSS of the whole process, as BENCH.md asks):

- ``gptq-mem``: ``slimline quantize smollm2-135m --method gptq --bits 4 --group-size 64`` — the
  full protocol (128 x 512 python-docs calibration windows), model in memory, through the
  recipe runner as every ``quantize`` is.
- ``gptq-stream``: the same command with ``--stream --activation-limit-mb 64`` (read, compressed
  and written block by block from the bundled model's converted directory, activations beyond
  64 MB through disk), then both artifacts' perplexity measured in a separate process so that
  "perplexity unchanged" is checked, not assumed.
- ``synth-gptq`` / ``synth-rtn``: a synthetic llama of ~1.6 B parameters (hidden 2048, 24 blocks,
  MLP 8192, SmolLM2's vocabulary, random weights) written as fp32 safetensors shards (~6.5 GB),
  quantized with ``--stream`` (GPTQ on 8 x 512 windows, 2 per forward: ``--calib-batch 2``;
  RTN): peak RSS against size on disk.
- ``distill-1`` / ``distill-2``: the 20-block SmolLM2 student (cut from the teacher) distilled
  for a few steps at the same global batch on 1 and on 2 processes (``accelerate launch
  --multi_gpu``; gloo on this CPU): tokens/s and the loss curves side by side.

Results go to ``--json`` after every row, so a cut-off run still leaves figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SLIMLINE_QUIET", "1")

BIN = Path(sys.executable).parent
RESULTS: dict[str, Any] = {}
ROWS = ["gptq-mem", "gptq-stream", "synth-gptq", "synth-rtn", "distill-1", "distill-2"]
# ~1.6 B parameters: 24 x (2 x 2048^2 + 2 x 2048 x 256 + 3 x 2048 x 8192) + 2 x 49152 x 2048
SYNTH = {"hidden": 2048, "inter": 8192, "blocks": 24, "heads": 32, "kv": 4}
SYNTH_SMOKE = {"hidden": 64, "inter": 128, "blocks": 3, "heads": 4, "kv": 2}


def dump(path: str | None) -> None:
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text(json.dumps(RESULTS, indent=2, default=str))
        os.replace(tmp, path)


def timed(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` under ``/usr/bin/time -v``: wall seconds, peak RSS (MB), its JSON output."""
    full = ["/usr/bin/time", "-v", *cmd]
    p = subprocess.run(full, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", p.stderr)
    parts = [float(x) for x in wall.group(1).split(":")]
    secs = sum(v * 60**i for i, v in enumerate(reversed(parts)))
    out: dict[str, Any] = {"wall_s": round(secs, 1), "peak_rss_mb": round(rss / 1024, 1)}
    if "{" in p.stdout:
        out["result"] = json.loads(p.stdout[p.stdout.index("{") :])
    return out


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


# --- models on disk --------------------------------------------------------------------------
def tiny_dir(where: Path) -> Path:
    from slimline.models import tiny_model

    d = where / "tiny"
    if not d.exists():
        lm = tiny_model("llama", n_blocks=3, hidden=64, intermediate=128)
        lm.model.save_pretrained(d, max_shard_size="200KB")
        lm.tokenizer.save_pretrained(str(d))
    return d


def write_synthetic(d: Path, shape: dict[str, int]) -> Path:
    """A random llama written one block per shard: never more than one block in memory."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from slimline.models.tiny import _tokenizer

    if (d / "model.safetensors.index.json").exists():
        return d
    tmp = d.with_name(d.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok = _tokenizer("causal-lm")
    h, f, n, hd = (
        shape["hidden"],
        shape["inter"],
        shape["blocks"],
        shape["hidden"] // shape["heads"],
    )
    kv = shape["kv"] * hd
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=h, intermediate_size=f, num_hidden_layers=n,
        num_attention_heads=shape["heads"], num_key_value_heads=shape["kv"],
        max_position_embeddings=2048, tie_word_embeddings=False, architectures=["LlamaForCausalLM"],
    )  # fmt: skip
    cfg.save_pretrained(tmp)
    tok.save_pretrained(str(tmp))
    g = torch.Generator().manual_seed(0)

    def w(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=g) * (1.0 / s[-1] ** 0.5)

    weight_map: dict[str, str] = {}
    shards = [("embed", {"model.embed_tokens.weight": w(len(tok), h)})]
    for i in range(n):
        p = f"model.layers.{i}."
        shards.append((f"block{i}", {
            p + "self_attn.q_proj.weight": w(h, h), p + "self_attn.k_proj.weight": w(kv, h),
            p + "self_attn.v_proj.weight": w(kv, h), p + "self_attn.o_proj.weight": w(h, h),
            p + "mlp.gate_proj.weight": w(f, h), p + "mlp.up_proj.weight": w(f, h),
            p + "mlp.down_proj.weight": w(h, f),
            p + "input_layernorm.weight": torch.ones(h), p + "post_attention_layernorm.weight": torch.ones(h),
        }))  # fmt: skip
    shards.append(("head", {"model.norm.weight": torch.ones(h), "lm_head.weight": w(len(tok), h)}))
    for k, (_name, tensors) in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(tmp / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, fname))
        del tensors
    index = {"metadata": {}, "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    os.replace(tmp, d)
    return d


# --- rows --------------------------------------------------------------------------------------
def row_gptq(args: argparse.Namespace, work: Path, stream: bool) -> dict[str, Any]:
    from slimline.models.bundled import bundled_path

    src = str(tiny_dir(work)) if args.smoke else "smollm2-135m"
    if not args.smoke:
        bundled_path("smollm2-135m")  # converts once into the cache (outside the timing)
    name = "gptq-stream" if stream else "gptq-mem"
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work / f"run-{name}", ignore_errors=True)
    n, t = ("8", "64") if args.smoke else ("128", "512")
    # both through the recipe runner (load or stream, compress, save, sign, register)
    cmd = [str(BIN / "slimline"), "quantize", src, "--method", "gptq", "--bits", "4",
           "--group-size", "64" if not args.smoke else "32", "--calib-samples", n, "--seq-len", t,
           "-o", str(out), "--json", "--run-dir", str(work / f"run-{name}")]  # fmt: skip
    if stream:  # activations beyond 64 MB go through disk (the result is the same bytes)
        cmd += ["--stream", "--activation-limit-mb", str(args.activation_limit_mb)]
    r = timed(cmd)
    r["artifact_bytes"] = dir_bytes(out)
    r["ppl/python-docs"] = perplexity(out, args.smoke)
    return r


def perplexity(artifact: Path, smoke: bool) -> float:
    """python-docs perplexity of ``artifact`` (BENCH.md windows), in its own process."""
    code = (
        "import json,sys; from slimline.models import load_model; from slimline.data import eval_blocks;"
        "from slimline.distill.trainer import perplexity as ppl; lm=load_model(sys.argv[1]);"
        f"b=eval_blocks(lm.tokenizer, seq_len={64 if smoke else 512}, max_blocks={2 if smoke else 64});"
        "print(json.dumps({'ppl': ppl(lm.model, b)}))"
    )
    p = subprocess.run([sys.executable, "-c", code, str(artifact)], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    return round(json.loads(p.stdout[p.stdout.index("{") :])["ppl"], 4)


def row_synth(args: argparse.Namespace, work: Path, method: str) -> dict[str, Any]:
    d = write_synthetic(work / "synth", SYNTH_SMOKE if args.smoke else SYNTH)
    out = work / f"synth-{method}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(BIN / "slimline"), "quantize", str(d), "--stream", "--method", method, "--bits",
           "4", "--group-size", "32" if args.smoke else "64", "--calib-samples", "8",
           "--seq-len", "64" if args.smoke else "512", "-o", str(out), "--json"]  # fmt: skip
    if method == "gptq":  # 2 windows per forward: the MLP's [tokens, 8192] temporaries at 1/4
        cmd += ["--calib-batch", str(args.calib_batch)]
    r = timed(cmd)
    r["model_bytes_on_disk"] = dir_bytes(d)
    r["rss_over_disk"] = round(r["peak_rss_mb"] * 2**20 / r["model_bytes_on_disk"], 3)
    r["artifact_bytes"] = dir_bytes(out)
    return r


DISTILL_WORKER = """
import json, sys, time
import torch
from slimline.distill.config import DistillConfig
from slimline.distill.trainer import train
from slimline.models import load_model, tiny_model
from slimline.distill.api import build_student
from slimline.data import train_blocks
smoke, per_proc, steps, out = sys.argv[1] == "1", int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(max(1, 2 // int(__import__("os").environ.get("WORLD_SIZE", "1"))))
if smoke:
    t = tiny_model("llama", n_blocks=2, hidden=64); s = tiny_model("llama", n_blocks=1, hidden=64, seed=1)
    ids = torch.randint(0, 49152, (32, 64), generator=torch.Generator().manual_seed(0))
else:
    t = load_model("smollm2-135m"); s = build_student(t, {"keep": 20, "importance": "even"})
    ids = train_blocks(t.tokenizer, seq_len=256)
cfg = DistillConfig(batch_size=per_proc, max_steps=steps, lr=1e-4, mixed_precision="no", seed=0, seq_len=ids.shape[1])
r = train(s.model, t.model, ids, cfg, out)
from accelerate import PartialState
if PartialState().is_main_process:
    logs = [json.loads(x) for x in open(out + "/train_log.jsonl")]
    tps = [x["tokens_per_s"] for x in logs[1:]] or [logs[0]["tokens_per_s"]]
    print(json.dumps({"losses": r.losses, "tokens": r.tokens, "seconds": r.seconds,
                      "tokens_per_s_median": sorted(tps)[len(tps) // 2]}))
"""


def row_distill(args: argparse.Namespace, work: Path, procs: int) -> dict[str, Any]:
    script = work / "distill_worker.py"
    script.write_text(DISTILL_WORKER)
    out = work / f"distill-{procs}"
    shutil.rmtree(out, ignore_errors=True)
    global_batch, steps = (4, 3) if args.smoke else (8, 12)
    wargs = ["1" if args.smoke else "0", str(global_batch // procs), str(steps), str(out)]
    if procs == 1:
        cmd = [sys.executable, str(script), *wargs]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(procs),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), str(script), *wargs]  # fmt: skip
    r = timed(cmd, env={"OMP_NUM_THREADS": str(max(1, 2 // procs))})
    r["processes"], r["global_batch"] = procs, global_batch
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny models and settings")
    ap.add_argument("--json", help="write results here after every row")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {ROWS}")
    ap.add_argument("--work", help="work dir (default: a temp dir, removed at the end)")
    ap.add_argument("--activation-limit-mb", type=float, default=64.0,
                    help="gptq-stream: calibration activations kept in memory (MB)")  # fmt: skip
    ap.add_argument("--calib-batch", type=int, default=2,
                    help="synth-gptq: calibration windows per forward")  # fmt: skip
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        raise SystemExit(f"unknown rows {bad}; choose from {ROWS}")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="slimline-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SLIMLINE_HOME", str(work / "home"))
    RESULTS["settings"] = {
        "smoke": args.smoke,
        "machine": os.uname().machine,
        "cpus": os.cpu_count(),
    }
    run = {
        "gptq-mem": lambda: row_gptq(args, work, stream=False),
        "gptq-stream": lambda: row_gptq(args, work, stream=True),
        "synth-gptq": lambda: row_synth(args, work, "gptq"),
        "synth-rtn": lambda: row_synth(args, work, "rtn"),
        "distill-1": lambda: row_distill(args, work, 1),
        "distill-2": lambda: row_distill(args, work, 2),
    }
    try:
        for r in rows:
            t0 = time.perf_counter()
            RESULTS[r] = run[r]()
            RESULTS[r]["bench_s"] = round(time.perf_counter() - t0, 1)
            dump(args.json)
            brief = {k: v for k, v in RESULTS[r].items() if k != "result"}
            print(f"{r:12s} {json.dumps(brief)}", flush=True)
        if "distill-1" in RESULTS and "distill-2" in RESULTS:
            a, b = RESULTS["distill-1"]["result"], RESULTS["distill-2"]["result"]
            RESULTS["distill-compare"] = {
                "tokens_per_s_1": a["tokens_per_s_median"],
                "tokens_per_s_2": b["tokens_per_s_median"],
                "max_rel_loss_diff": max(
                    abs(x - y) / abs(x) for x, y in zip(a["losses"], b["losses"], strict=True)
                ),
            }
            print(f"{'distill':12s} {json.dumps(RESULTS['distill-compare'])}")
        dump(args.json)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
