"""`slimline quantize MODEL --method rtn|gptq|awq|w8a8|mixed --bits 4 --group-size 128 -o OUT`:
one quantization stage run as a recipe by the recipe runner (artifact at OUT, run dir in the home)."""

from __future__ import annotations

import typer

from slimline.cli._common import emit_json, kv_table, out


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
            help="MODEL is a safetensors directory: read, compress and write one block at a "
            "time (a model larger than memory); no evaluation, no registry row",
        ),
    ) -> None:
        """Quantize (RTN, GPTQ, AWQ weight-only; W8A8 with SmoothQuant; mixed precision) and save
        a slimline artifact: a one-stage recipe, run, registered and reported as `slimline run`."""
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
        )
        if stream:  # issue 15: streamed one-shot compression (slimline.calib.stream)
            from slimline.calib.stream import cli_stream

            res = cli_stream(model, output, cfg, calib, calib_samples, seq_len, seed, threads)
            if json_out:
                emit_json(res)
            else:
                out.print(kv_table("quantize --stream", res))
            return
        recipe = compress_recipe(
            f"quantize-{method}",
            model,
            [cfg],
            calibration=DataSplit(source=calib, n=calib_samples, seq_len=seq_len),
            seed=seed,
        )
        run = compress(recipe, output, run_dir=run_dir, register=not no_register, threads=threads)
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
        }
        if json_out:
            emit_json(res)
        else:
            out.print(kv_table("quantize", res))
