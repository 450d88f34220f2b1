"""`slimline quantize MODEL --method rtn|gptq|awq|w8a8|mixed --bits 4 --group-size 128 -o OUT`:
one quantization stage run as a recipe by the recipe runner (artifact at OUT, run dir in the home)."""

from __future__ import annotations

import typer

from slimline.cli._common import emit_json, kv_table, out

# what a streamed run adds to the printed result (slimline.calib.stream.StreamResult.summary)
STREAM_FIELDS = ("streamed", "peak_rss_mb", "process_peak_rss_mb", "model_bytes_on_disk",
                 "activation_limit_mb", "activation_peak_mb", "activation_spilled_mb")  # fmt: skip


def register(app: typer.Typer) -> None:
    @app.command("quantize")
    def quantize_cmd(
        model: str = typer.Argument(..., help="bundled name, HF dir, GGUF file or artifact"),
        output: str = typer.Option(..., "-o", "--out", help="output directory (must not exist)"),
        method: str = typer.Option("gptq", "--method", help="rtn | gptq | awq | w8a8 | mixed"),
        bits: int = typer.Option(4, "--bits", help="2, 3, 4 or 8"),
        group_size: int = typer.Option(128, "--group-size", help="0 = one group per channel"),
        asym: bool = typer.Option(False, "--asym", help="asymmetric grid (zero points)"),
        grid: str = typer.Option(
            None,
            "--grid",
            help="solve on an engine grid: gguf-{q8_0,q6_k,q5_k,q5_0,q5_1,q4_k,q4_0,q4_1}",
        ),
        targets: list[str] = typer.Option(None, "--targets", help="layer patterns (repeatable)"),
        ignore: list[str] = typer.Option(["lm_head"], "--ignore", help="layer patterns kept"),
        calib: str = typer.Option("python-docs", "--calib", help="calibration text source"),
        calib_samples: int = typer.Option(128, "--calib-samples"),
        seq_len: int = typer.Option(512, "--seq-len"),
        calib_batch: int = typer.Option(
            None,
            "--calib-batch",
            min=1,
            help="calibration windows per forward (default: the method's; fewer = smaller "
            "forward temporaries on a wide model, same data, sums in another order)",
        ),
        seed: int = typer.Option(0, "--seed"),
        smooth_alpha: float = typer.Option(
            0.5, "--smooth-alpha", help="w8a8: SmoothQuant migration strength (negative = off)"
        ),
        act: str = typer.Option("dynamic", "--act", help="w8a8: dynamic | static activations"),
        kernel: str = typer.Option(
            "sim", "--kernel", help="w8a8: sim (exact int8 simulation) | fbgemm (int8 CPU GEMM)"
        ),
        avg_bits: float = typer.Option(4.0, "--avg-bits", help="mixed: budget in bits per weight"),
        run_dir: str = typer.Option(
            None, "--run-dir", help="run dir (trace, checkpoints, report); default under the home"
        ),
        no_register: bool = typer.Option(
            False, "--no-register", help="do not add it to the registry"
        ),
        threads: int = typer.Option(2, "--threads", help="torch threads while compressing"),
        json_out: bool = typer.Option(False, "--json", help="print JSON"),
        stream: bool = typer.Option(
            False,
            "--stream",
            help="read, compress and write one block at a time (a model larger than memory): "
            "MODEL is a safetensors directory or a bundled name",
        ),
        activation_limit_mb: float = typer.Option(
            None,
            "--activation-limit-mb",
            help="keep at most this many MB of calibration activations in memory, the rest on "
            "disk (same result; default: all in memory, or SLIMLINE_ACT_LIMIT_MB)",
        ),
    ) -> None:
        """Quantize (RTN, GPTQ, AWQ weight-only; W8A8 with SmoothQuant; mixed precision) and save
        a slimline artifact: a one-stage recipe, run, registered and reported as `slimline run`."""
        from slimline.calib import activation_limit
        from slimline.calib.buffer import limit_from_env
        from slimline.quant.methods import make_quant_config
        from slimline.recipe.compress import compress, compress_recipe, summary
        from slimline.recipe.schema import DataSplit

        cfg = make_quant_config(
            method,
            bits,
            group_size,
            not asym,
            list(targets or []),
            list(ignore),
            None if smooth_alpha < 0 else smooth_alpha,
            act,
            avg_bits,
            kernel,
            grid,
            calib_batch,
        )
        recipe = compress_recipe(
            f"quantize-{method}",
            model,
            [cfg],
            calibration=DataSplit(source=calib, n=calib_samples, seq_len=seq_len),
            seed=seed,
            stream=True if stream else None,  # issue 15: block by block (slimline.recipe.streamed)
        )
        limit = activation_limit_mb if activation_limit_mb is not None else limit_from_env()
        with activation_limit(limit):
            run = compress(
                recipe, output, run_dir=run_dir, register=not no_register, threads=threads
            )
        d = summary(run)
        rec = d["stages"][0]
        res = {
            "out": d["out"],
            "method": method,
            "scheme": rec["details"].get("scheme", cfg.kind),
            "layers": len(rec["modules"]),
            "ragged_layers": len(rec["details"].get("ragged_layers", [])),
            "packed_bytes": rec["details"].get("packed_bytes"),
            "size_bytes": d["size_bytes"],
            "digest": d["digest"],
            "seconds": d["seconds"],
            "run_dir": d["run_dir"],
            "registered": d["registered"],
            **{k: d[k] for k in STREAM_FIELDS if k in d},
        }
        if json_out:
            emit_json(res)
        else:
            out.print(kv_table("quantize", res))
