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
            ..., "-o", "--output", help="the .gguf file to write (must not exist)"
        ),
        fmt: str = typer.Option("gguf", "--format", help="gguf (llama.cpp)"),
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
            False, "--no-verify", help="skip loading the file in llama.cpp and comparing logits"
        ),
        verify_windows: int = typer.Option(2, "--verify-windows", help="windows compared"),
        verify_len: int = typer.Option(64, "--verify-len", help="tokens per window"),
        threads: int = typer.Option(2, "--threads", help="llama.cpp threads for the check"),
        json_out: bool = typer.Option(False, "--json", help="print the export record as JSON"),
    ) -> None:
        """Export a llama/mistral/qwen2/qwen3/phi3/gemma3 model (compressed layers included) to
        GGUF for llama.cpp; writes FILE and FILE.json (tensor types, errors, verification in
        llama.cpp)."""
        from slimline.errors import ConfigError
        from slimline.export import export_gguf
        from slimline.models import load_model
        from slimline.outputs import check_output

        if fmt != "gguf":
            raise ConfigError(f"unknown export format {fmt!r}", "use --format gguf")
        check_output(output, kind="file")  # before the model is loaded
        check_output(output.with_name(output.name + ".json"), kind="file")
        lm = load_model(model)
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
