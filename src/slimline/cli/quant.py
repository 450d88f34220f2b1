"""`slimline quantize MODEL --method rtn|gptq|awq|w8a8|mixed --bits 4 --group-size 128 -o OUT`."""

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
        json_out: bool = typer.Option(False, "--json", help="print JSON"),
    ) -> None:
        """Quantize (RTN, GPTQ, AWQ weight-only; W8A8 with SmoothQuant; mixed precision) and save
        a slimline artifact."""
        from slimline.quant.run import quantize_model

        res = quantize_model(
            model,
            output,
            method=method,
            bits=bits,
            group_size=group_size,
            symmetric=not asym,
            targets=list(targets or []),
            ignore=list(ignore),
            calib=calib,
            calib_samples=calib_samples,
            seq_len=seq_len,
            seed=seed,
            smooth_alpha=None if smooth_alpha < 0 else smooth_alpha,
            act=act,
            avg_bits=avg_bits,
            kernel=kernel,
        )
        if json_out:
            emit_json(res)
        else:
            out.print(kv_table("quantize", res))
