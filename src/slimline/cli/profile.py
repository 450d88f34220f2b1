"""`slimline profile MODEL`: what a model costs (size, FLOPs, latency, memory, time by module)."""

from __future__ import annotations

import typer

from slimline.cli._common import emit_json, out


def register(app: typer.Typer) -> None:
    @app.command("profile")
    def profile_cmd(
        model: str = typer.Argument(
            ..., help="bundled name, model directory, GGUF file or artifact"
        ),
        seq_len: int = typer.Option(512, "--seq-len", help="prefill length in tokens"),
        new_tokens: int = typer.Option(64, "--new-tokens", help="greedy tokens to decode"),
        prompt_len: int = typer.Option(32, "--prompt-len", help="prompt length before decoding"),
        repeats: int = typer.Option(5, "--repeats", help="timed runs (after 1 warm-up)"),
        threads: int = typer.Option(2, "--threads", help="torch CPU threads"),
        batch: int = typer.Option(1, "--batch", help="sequences per forward"),
        no_breakdown: bool = typer.Option(
            False, "--no-breakdown", help="skip the per-module timing"
        ),
        modules: bool = typer.Option(
            False, "--modules", help="only list module names (for targets/ignore)"
        ),
        json_out: bool = typer.Option(False, "--json", help="print JSON"),
        engine: str = typer.Option(
            "torch",
            "--engine",
            help="torch | llamacpp (a GGUF file, or MODEL exported to one) | onnxruntime (an .onnx "
            "file, or MODEL exported to one)",
        ),
    ) -> None:
        """Profile MODEL: params, bytes by dtype, FLOPs/token, prefill and decode latency, peak memory."""
        from slimline.models import load_model
        from slimline.profile import linear_io, module_roles, profile

        if engine != "torch" and not modules:
            _profile_engine(
                model, engine, seq_len, new_tokens, prompt_len, repeats, threads, json_out
            )
            return
        lm = load_model(model)
        if modules:
            roles = module_roles(lm.model, lm.arch)
            rows = []
            for name, mod in lm.model.named_modules():
                if not name:
                    continue
                try:
                    shape = (
                        "x".join(map(str, linear_io(mod)))
                        if hasattr(mod, "weight") or hasattr(mod, "in_features")
                        else ""
                    )
                except (
                    Exception
                ):  # a module with a weight that is not a 2-D matrix (norms, embeddings)
                    shape = ""
                rows.append(
                    {
                        "name": name,
                        "type": type(mod).__name__,
                        "role": roles.get(name, "other"),
                        "in x out": shape,
                    }
                )
            if json_out:
                emit_json(rows)
                return
            from rich.table import Table

            t = Table(
                title=f"{model}: modules (use names, suffixes, class names or re: regexes in targets/ignore)"
            )
            for col in ("name", "type", "role", "in x out"):
                t.add_column(col)
            for r in rows:
                t.add_row(*r.values())
            out.print(t)
            return
        p = profile(
            lm,
            seq_len=seq_len,
            new_tokens=new_tokens,
            prompt_len=prompt_len,
            repeats=repeats,
            threads=threads,
            batch=batch,
            breakdown=not no_breakdown,
        )
        if json_out:
            emit_json(p.to_dict())
            return
        for t in p.tables():
            out.print(t)


def _profile_engine(
    model: str,
    engine: str,
    seq_len: int,
    new_tokens: int,
    prompt_len: int,
    repeats: int,
    threads: int,
    json_out: bool,
) -> None:
    """``--engine llamacpp|onnxruntime``: the same protocol, measured in that engine."""
    from slimline.cli._common import kv_table
    from slimline.engines.profile import profile_engine

    res = profile_engine(
        model,
        engine,
        threads=threads,
        seq_len=seq_len,
        prompt_len=prompt_len,
        new_tokens=new_tokens,
        repeats=repeats,
    )
    if json_out:
        emit_json(res)
        return
    env = res["env"]
    title = f"{model} — {env['engine']} {env['version']}, {env['threads']} threads"
    out.print(kv_table(title, res["metrics"]))
