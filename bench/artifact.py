"""Artifact save / verify / load / register cost against plain Hugging Face safetensors.

What a signed, verified artifact costs over `save_pretrained` / `from_pretrained` on the same
model, measured side by side in one run (A B A B ...), median of N after one warm-up, plus a
check that the loaded model's logits are bit-identical to the saved one's.

    python bench/artifact.py            # SmolLM2-135M-Instruct fp32, 5 repeats
    python bench/artifact.py --quick    # its first 4 blocks, 3 repeats
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="first 4 blocks, 3 repeats")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)

    work = Path(tempfile.mkdtemp(prefix="slimline-bench-artifact-"))
    os.environ["SLIMLINE_HOME"] = str(work / "home")  # a throwaway signing key and registry
    os.environ.setdefault("SLIMLINE_QUIET", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slimline.artifact import load_artifact, save_artifact, verify_artifact
    from slimline.data import eval_blocks
    from slimline.models import load_model, truncate
    from slimline.registry import Registry

    lm = load_model("smollm2-135m")
    if args.quick:
        lm = truncate(lm, 4)
    model, tok = lm.model, lm.tokenizer
    ids = eval_blocks(tok, "python-docs", seq_len=512, max_blocks=1)
    with torch.no_grad():
        ref_logits = model(input_ids=ids).logits

    times: dict[str, list[float]] = {
        k: []
        for k in (
            "hf_save",
            "our_save",
            "hf_load",
            "our_load",
            "our_load_noverify",
            "verify",
            "register",
        )
    }
    hf_dir, our_dir = work / "hf", work / "ours"
    for i in range(repeats + 1):  # the first round is the warm-up
        for d in (hf_dir, our_dir):
            shutil.rmtree(d, ignore_errors=True)
        rnd = {
            "hf_save": _timed(
                lambda: (
                    model.save_pretrained(hf_dir, safe_serialization=True),
                    tok.save_pretrained(hf_dir),
                )
            ),
            "our_save": _timed(
                lambda: save_artifact(
                    model, tok, our_dir, manifest={"metrics": {"ppl/python-docs": 12.78}}
                )
            ),
            "hf_load": _timed(
                lambda: (
                    AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32),
                    AutoTokenizer.from_pretrained(hf_dir),
                )
            ),
            "our_load": _timed(lambda: load_artifact(our_dir)),
            "our_load_noverify": _timed(lambda: load_artifact(our_dir, verify=False)),
            "verify": _timed(lambda: verify_artifact(our_dir).raise_for_problems()),
        }
        reg = Registry(work / "home")
        rnd["register"] = _timed(lambda reg=reg: reg.register(our_dir, "bench"))
        reg.gc()
        if i:
            for k, v in rnd.items():
                times[k].append(v)

    loaded, _, _ = load_artifact(our_dir)
    with torch.no_grad():
        same = torch.equal(loaded(input_ids=ids).logits, ref_logits)
    hf_bytes, our_bytes = _dir_bytes(hf_dir), _dir_bytes(our_dir)

    def med(k: str) -> str:
        xs = times[k]
        return f"{statistics.median(xs):7.2f} s  (min {min(xs):.2f}, max {max(xs):.2f})"

    name = "SmolLM2-135M-Instruct" + (" [first 4 blocks]" if args.quick else "") + " fp32"
    print(
        f"\n{name}; torch threads {args.threads}; median of {repeats} after 1 warm-up; A B A B in one run"
    )
    print(f"{'step':<40} {'HF safetensors (peer)':<34} {'slimline artifact':<34} ratio")
    for label, a, b in (
        ("save (model + tokenizer, + sign)", "hf_save", "our_save"),
        ("load (model + tokenizer, + verify)", "hf_load", "our_load"),
    ):
        r = statistics.median(times[b]) / statistics.median(times[a])
        print(f"{label:<40} {med(a):<34} {med(b):<34} {r:.2f}x")
    print(f"{'load without verify':<40} {'':<34} {med('our_load_noverify'):<34}")
    print(f"{'verify only (sha256 all files + sig)':<40} {'':<34} {med('verify'):<34}")
    print(f"{'registry register (copy + verify)':<40} {'':<34} {med('register'):<34}")
    print(f"{'bytes on disk':<40} {hf_bytes:<34,} {our_bytes:<34,} {our_bytes / hf_bytes:.4f}x")
    print(f"loaded logits bit-identical to the saved model's: {same}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
