"""`slimline export`: write a model for the engine that will serve it, verified in that engine."""

from __future__ import annotations

from pathlib import Path

import typer

from slimline.cli._common import emit_json


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        model: str = typer.Argument(..., help="bundled name, path or slimline artifact"),
        output: Path = typer.Option(
            ..., "-o", "--output", help="the .gguf or .onnx file to write (must not exist)"
        ),
        fmt: str = typer.Option("gguf", "--format", help="gguf (llama.cpp) | onnx (ONNX Runtime)"),
        qtype: str = typer.Option(
            None,
            help="type of dense weights: f32 | f16 (default) | q8_0 | q5_0 | q5_1 | q4_0 | q4_1; quantized "
            "layers keep their own grid (exactly, when it maps)",
        ),
        embed_type: str = typer.Option(
            "auto", "--embed-type", help="token embedding / tied head: auto (as llama.cpp) | a type"
        ),
        pre: str = typer.Option("smollm", help="llama.cpp pre-tokenizer name"),
        no_verify: bool = typer.Option(
            False,
            "--no-verify",
            help="skip loading the file in its engine and comparing with torch",
        ),
        verify_windows: int = typer.Option(2, "--verify-windows", help="windows compared"),
        verify_len: int = typer.Option(64, "--verify-len", help="tokens per window"),
        threads: int = typer.Option(2, "--threads", help="engine threads for the check"),
        json_out: bool = typer.Option(False, "--json", help="print the export record as JSON"),
    ) -> None:
        """Export a model (compressed layers included) to GGUF for llama.cpp (llama/mistral/qwen2/
        qwen3/phi3/gemma3) or ONNX for ONNX Runtime (llama/mistral/qwen2/gpt2/opt/bert); writes
        FILE and FILE.json (tensor types or ops, verification in the engine)."""
        from slimline.errors import ConfigError
        from slimline.export import export_gguf
        from slimline.models import load_model
        from slimline.outputs import check_output

        if fmt not in ("gguf", "onnx"):
            raise ConfigError(f"unknown export format {fmt!r}", "use --format gguf or onnx")
        if fmt == "onnx" and (qtype is not None or embed_type != "auto"):
            raise ConfigError(
                "--qtype and --embed-type are GGUF options; ONNX keeps dense weights in f32",
                "drop them, or quantize the model first (slimline quantize) for int4/int8 layers",
            )
        check_output(output, kind="file")  # before the model is loaded
        check_output(output.with_name(output.name + ".json"), kind="file")
        lm = load_model(model)
        if fmt == "onnx":
            _export_onnx(lm, output, not no_verify, verify_windows, verify_len, threads, json_out)
            return
        res = export_gguf(
            lm.model,
            lm.tokenizer,
            output,
            qtype=qtype,
            embed_type=embed_type,
            pre=pre,
            verify=not no_verify,
            verify_windows=verify_windows,
            verify_len=verify_len,
            threads=threads,
        )
        rec = res.record
        if json_out:
            emit_json(rec)
            return
        counts = ", ".join(f"{n} {t}" for t, n in sorted(rec["type_counts"].items()))
        typer.echo(f"wrote {res.path} ({rec['bytes'] / 1e6:.1f} MB; tensors: {counts})")
        typer.echo(f"  exact (our codes, no re-rounding): {len(rec['exact'])} tensors")
        rounded = [e for e in rec["errors"].values() if not e["exact"] and e["source"] == "dense"]
        if rounded:
            worst = min(e["sqnr_db"] for e in rounded)
            typer.echo(
                f"  dense weights rounded to {rounded[0]['type']}: {len(rounded)} tensors, "
                f"SQNR >= {worst} dB (asked for with --qtype)"
            )
        for name, e in rec["requantized"].items():
            typer.echo(
                f"  requantized {name}: {e['source']} -> {e['type']}, "
                f"SQNR {e['sqnr_db']} dB, max |err| {e['max_abs_err']:.3g}"
            )
        v = rec["verify"]
        if v.get("verified"):
            s = v["same_weights"]
            ppl = next(val for k, val in v.items() if k.startswith("ppl/"))
            typer.echo(
                f"  verified in llama.cpp {v['engine']['version']}: KL {s['kl']:.2e}, top-1 "
                f"{s['agree/top1']:.3f}, max |logit diff| {s['max_abs_logit_diff']:.3g} vs torch "
                f"on the same weights; ppl torch {ppl['torch']:.3f} / llama.cpp "
                f"{ppl['llamacpp']:.3f}"
            )
        else:
            typer.echo("  not verified in llama.cpp (--no-verify)")
        typer.echo(f"  record: {res.path}.json")


def _export_onnx(
    lm: object,
    output: Path,
    verify: bool,
    verify_windows: int,
    verify_len: int,
    threads: int,
    json_out: bool,
) -> None:
    from slimline.export.onnx_export import export_onnx

    res = export_onnx(
        lm.model,  # type: ignore[attr-defined]
        lm.tokenizer,  # type: ignore[attr-defined]
        output,
        verify=verify,
        verify_windows=verify_windows,
        verify_len=verify_len,
        threads=threads,
    )
    rec = res.record
    if json_out:
        emit_json(rec)
        return
    ops = ", ".join(f"{n} {op}" for op, n in rec["op_counts"].items())
    typer.echo(f"wrote {res.path} ({rec['bytes'] / 1e6:.1f} MB; {rec['family']}; linears: {ops})")
    v = rec["verify"]
    if not v.get("verified"):
        typer.echo("  not verified in ONNX Runtime (--no-verify)")
    elif rec["kind"] == "encoder":
        typer.echo(
            f"  verified in ONNX Runtime {v['engine']['version']}: sentence-embedding cosine >= "
            f"{v['cosine_min']:.6f}, max |hidden diff| {v['max_abs_hidden_diff']:.3g} vs torch"
        )
    else:
        s = v["same_weights"]
        ppl = next(val for k, val in v.items() if k.startswith("ppl/"))
        typer.echo(
            f"  verified in ONNX Runtime {v['engine']['version']}: KL {s['kl']:.2e}, top-1 "
            f"{s['agree/top1']:.3f}, max |logit diff| {s['max_abs_logit_diff']:.3g} vs torch; "
            f"ppl torch {ppl['torch']:.3f} / onnxruntime {ppl['onnxruntime']:.3f}"
        )
    typer.echo(f"  record: {res.path}.json")
