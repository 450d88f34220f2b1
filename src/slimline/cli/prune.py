"""`slimline prune MODEL ...` and `slimline prune-sensitivity MODEL ...`."""

from __future__ import annotations

import typer

from slimline.cli._common import emit_json, kv_table, out


def register(app: typer.Typer) -> None:
    @app.command("prune")
    def prune_cmd(
        model: str = typer.Argument(..., help="bundled name, HF dir, GGUF file or artifact"),
        output: str = typer.Option(..., "-o", "--out", help="output directory (must not exist)"),
        method: str = typer.Option(None, "--method", help="magnitude | wanda | sparsegpt"),
        sparsity: float = typer.Option(None, "--sparsity", help="fraction in [0, 1)"),
        pattern: str = typer.Option(None, "--pattern", help="N:M, e.g. 2:4"),
        structured: str = typer.Option(None, "--structured", help="heads=0.25,mlp=0.3,blocks=4"),
        calib: str = typer.Option("python-docs", "--calib", help="calibration text source"),
        calib_samples: int = typer.Option(128, "--calib-samples"),
        seq_len: int = typer.Option(512, "--seq-len"),
        sparse_bits: int = typer.Option(
            None, "--sparse-bits", help="store non-zeros in 4 or 8 bits"
        ),
        json_out: bool = typer.Option(False, "--json", help="print JSON"),
    ) -> None:
        """Prune a model: unstructured / N:M (saved as a sparse artifact) and/or structured
        heads, MLP channels, blocks (saved as a smaller plain HF model)."""
        from slimline.prune.run import prune_model

        res = prune_model(
            model,
            output,
            method=method,
            sparsity=sparsity,
            pattern=pattern,
            structured=structured,
            calib=calib,
            calib_samples=calib_samples,
            seq_len=seq_len,
            sparse_bits=sparse_bits,
        )
        if json_out:
            emit_json(res)
            return
        rows = {"out": res["out"], "format": res["format"], "params": res["params"]}
        rows["size/bytes"] = res["size_bytes"]
        for st in res["stages"]:
            if "sparsity" in st:
                rows[f"{st['kind']} sparsity"] = st["sparsity"]
            if "params_after" in st:
                rows[f"{st['kind']} params"] = f"{st['params_before']} -> {st['params_after']}"
        rows["seconds"] = res["seconds"]
        out.print(kv_table("prune", rows))

    @app.command("prune-sensitivity")
    def sensitivity_cmd(
        model: str = typer.Argument(...),
        method: str = typer.Option("wanda", "--method", help="magnitude | wanda"),
        calib: str = typer.Option("python-docs", "--calib"),
        calib_samples: int = typer.Option(16, "--calib-samples"),
        seq_len: int = typer.Option(256, "--seq-len"),
        plot: str = typer.Option(None, "--plot", help="write a PNG here"),
        target: float = typer.Option(None, "--target", help="also allocate this global sparsity"),
        json_out: bool = typer.Option(False, "--json"),
    ) -> None:
        """Per-layer sparsity vs output error on calibration data; optional allocation."""
        from slimline.data import calibration_blocks
        from slimline.models import load_model
        from slimline.prune import allocate, sensitivity_sweep

        lm = load_model(model)
        ids = calibration_blocks(lm.tokenizer, calib, n=calib_samples, seq_len=seq_len)
        sw = sensitivity_sweep(lm, ids, method=method)  # type: ignore[arg-type]
        res = sw.to_dict()
        if target is not None:
            res["allocation"] = allocate(sw, target)
        if plot:
            res["plot"] = str(sw.plot(plot))
        if json_out:
            emit_json(res)
            return
        typer.echo(sw.table())
        if target is not None:
            for n, s in res["allocation"].items():
                typer.echo(f"{n}: {s:.0%}")
