"""`slimline prune MODEL ...` (its stages run as a recipe) and `slimline prune-sensitivity MODEL ...`."""

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
        seed: int = typer.Option(0, "--seed"),
        run_dir: str = typer.Option(
            None, "--run-dir", help="run dir (trace, checkpoints, report); default under the home"
        ),
        no_register: bool = typer.Option(
            False, "--no-register", help="do not add it to the registry"
        ),
        threads: int = typer.Option(2, "--threads", help="torch threads while compressing"),
        json_out: bool = typer.Option(False, "--json", help="print JSON"),
    ) -> None:
        """Prune a model: unstructured / N:M (kept as SparseLinear: bitmask + non-zeros) and/or
        structured heads, MLP channels, blocks (a smaller dense model transformers loads as is).
        The stages run as a recipe: artifact, trace, registry and report as `slimline run`."""
        from slimline.prune.methods import prune_stages
        from slimline.recipe.compress import compress, compress_recipe, summary
        from slimline.recipe.schema import DataSplit

        stages = prune_stages(method, sparsity, pattern, structured, None, sparse_bits)
        recipe = compress_recipe(
            "prune",
            model,
            stages,
            calibration=DataSplit(source=calib, n=calib_samples, seq_len=seq_len),
            seed=seed,
        )
        run = compress(recipe, output, run_dir=run_dir, register=not no_register, threads=threads)
        res = summary(run)
        sparse = any(getattr(s, "storage", "") == "sparse" for s in stages)
        res["format"] = (
            "slimline-artifact (SparseLinear: bitmask + non-zeros)"
            if sparse
            else "hf-loadable slimline artifact (a smaller dense model)"
        )
        if json_out:
            emit_json(res)
            return
        rows = {"out": res["out"], "format": res["format"], "params": res["params"]}
        rows["size/bytes"] = res["size_bytes"]
        for st in res["stages"]:
            if "sparsity" in st["details"]:
                rows[f"{st['kind']} sparsity"] = st["details"]["sparsity"]
            if st["params_after"] != st["params_before"]:
                rows[f"{st['kind']} params"] = f"{st['params_before']} -> {st['params_after']}"
        rows["seconds"] = res["seconds"]
        rows["run dir"] = res["run_dir"]
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
        from slimline.outputs import check_output
        from slimline.prune import allocate, sensitivity_sweep

        if plot:
            check_output(plot, kind="file", what="--plot file")  # before the sweep, not after
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
