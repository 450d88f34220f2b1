"""`slimline registry ...`, `slimline artifact ...` and `slimline compare A B`: thin wrappers over
slimline.registry and slimline.artifact."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from slimline.cli._common import emit_json, out
from slimline.errors import RegistryError

registry_app = typer.Typer(
    help="Versions, lineage, promotion gates, rollback and the audit log.", no_args_is_help=True
)
artifact_app = typer.Typer(help="Inspect, verify and trust signed artifacts.", no_args_is_help=True)

JSON = typer.Option(False, "--json", help="print JSON instead of a table")


def _reg() -> Any:
    from slimline.registry import Registry

    return Registry()


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else "" if v is None else str(v)


def _versions_table(versions: list[Any], title: str) -> Table:
    t = Table(title=title)
    for c in ("ref", "digest", "aliases", "parent", "size", "metrics", "created"):
        t.add_column(c)
    for v in versions:
        mets = ", ".join(f"{k}={_fmt(x)}" for k, x in v.metrics.items())
        t.add_row(
            v.ref,
            v.digest[:12],
            ",".join(v.aliases),
            (v.parent or "")[:12],
            _fmt(v.size_bytes),
            mets,
            v.created_at[:19],
        )
    return t


@registry_app.command("list")
def list_cmd(
    name: str = typer.Argument(None, help="only this model"), as_json: bool = JSON
) -> None:
    """List registered versions."""
    vs = _reg().list(name)
    if as_json:
        emit_json([v.to_dict() for v in vs])
    else:
        out.print(_versions_table(vs, "registry"))


@registry_app.command("show")
def show_cmd(ref: str, as_json: bool = JSON) -> None:
    """Everything recorded about one version (ref: name@version, name@alias, digest prefix)."""
    v = _reg().get(ref)
    if as_json:
        emit_json(v.to_dict())
    else:
        for k, x in v.to_dict().items():
            out.print(f"[bold]{k}[/]: {x}")


@registry_app.command("register")
def register_cmd(
    path: str,
    name: str,
    parent: str = typer.Option(None, help="parent ref (default: the manifest's parent)"),
    as_json: bool = JSON,
) -> None:
    """Verify an artifact and record it as the next version of NAME."""
    v = _reg().register(path, name, parent=parent)
    emit_json(v.to_dict()) if as_json else out.print(f"registered {v.ref} ({v.digest[:12]})")


@registry_app.command("lineage")
def lineage_cmd(ref: str, as_json: bool = JSON) -> None:
    """A version and its ancestors, newest first."""
    vs = _reg().lineage(ref)
    if as_json:
        emit_json([v.to_dict() for v in vs])
    else:
        out.print(_versions_table(vs, f"lineage of {ref}"))


@registry_app.command("gates")
def gates_cmd(
    alias: str,
    gates: list[str] = typer.Argument(
        None,
        help="e.g. 'ppl/python-docs <= 1.05 x parent' or 'suite default vs parent' (none: show)",
    ),
    name: str = typer.Option(None, help="only for this model"),
    as_json: bool = JSON,
) -> None:
    """Show or set the promotion gates of ALIAS."""
    reg = _reg()
    specs = (
        reg.set_gates(alias, gates, name=name)
        if gates
        else [str(g) for g in reg.gates(alias, name=name)]
    )
    emit_json(specs) if as_json else out.print("\n".join(specs) or f"no gates on {alias}")


@registry_app.command("promote")
def promote_cmd(
    ref: str,
    alias: str,
    force: bool = typer.Option(False, "--force", help="override failing gates (needs --reason)"),
    reason: str = typer.Option(None, help="why; recorded in the audit log"),
    suite: str = typer.Option(
        None,
        "--suite",
        help="also pass this evaluation suite's gates: NAME (against the parent) or "
        "'NAME vs baseline'; reuses what the version's recipe run measured",
    ),
    as_json: bool = JSON,
) -> None:
    """Point ALIAS at REF if its gates pass."""
    rep = _reg().promote(ref, alias, force=force, reason=reason, suite=suite)
    emit_json(rep.to_dict()) if as_json else out.print(str(rep), markup=False)
    if not rep.promoted:
        raise RegistryError(
            f"promotion of {rep.ref} to {alias} blocked by {len(rep.failures)} gate(s)",
            "fix the regressions, or override with --force --reason '...'",
        )


@registry_app.command("rollback")
def rollback_cmd(
    alias: str,
    name: str = typer.Option(None, help="the model (or pass NAME@ALIAS)"),
    as_json: bool = JSON,
) -> None:
    """Move ALIAS back to its previous holder."""
    v = _reg().rollback(alias, name=name)
    emit_json(v.to_dict()) if as_json else out.print(
        f"{v.name}@{alias.rpartition('@')[2]} -> {v.ref}"
    )


@registry_app.command("verify")
def verify_cmd(ref: str, as_json: bool = JSON) -> None:
    """Re-check a stored version's file digests and signature."""
    rep = _reg().verify(ref)
    emit_json(rep.to_dict()) if as_json else out.print(
        f"{ref}: {'ok' if rep.ok else 'FAILED'} ({rep.files_checked} files, key {rep.key_id})"
    )
    rep.raise_for_problems()


@registry_app.command("delete")
def delete_cmd(
    ref: str, reason: str = typer.Option(None, help="recorded in the audit log")
) -> None:
    """Remove a version from the catalogue (its files go at the next gc)."""
    v = _reg().delete(ref, reason=reason)
    out.print(f"deleted {v.ref}")


@registry_app.command("gc")
def gc_cmd(dry_run: bool = typer.Option(False, "--dry-run"), as_json: bool = JSON) -> None:
    """Remove stored artifacts no version references."""
    removed = _reg().gc(dry_run=dry_run)
    emit_json(removed) if as_json else out.print(
        f"{'would remove' if dry_run else 'removed'} {len(removed)}: {' '.join(removed)}"
    )


@registry_app.command("audit")
def audit_cmd(limit: int = 50, action: str = typer.Option(None), as_json: bool = JSON) -> None:
    """The newest entries of the append-only audit log."""
    rows = _reg().audit(limit, action=action)
    if as_json:
        emit_json(rows)
        return
    t = Table(title="audit log")
    for c in ("id", "at", "who", "action", "ref", "details"):
        t.add_column(c)
    for r in rows:
        t.add_row(
            str(r["id"]),
            r["at"][:23],
            r["who"],
            r["action"],
            r["ref"] or "",
            str(r["details"])[:80],
        )
    out.print(t)


@artifact_app.command("verify")
def artifact_verify_cmd(path: str, as_json: bool = JSON) -> None:
    """Check an artifact's signature and file digests without loading it."""
    from slimline.artifact import verify_artifact

    rep = verify_artifact(path)
    emit_json(rep.to_dict()) if as_json else out.print(
        f"{path}: {'ok' if rep.ok else 'FAILED'} digest {rep.digest} key {rep.key_id}"
    )
    rep.raise_for_problems()


@artifact_app.command("show")
def artifact_show_cmd(path: str) -> None:
    """Print an artifact's manifest (not verified; use `artifact verify`)."""
    from slimline.artifact import read_manifest

    emit_json(read_manifest(path))


@artifact_app.command("key")
def artifact_key_cmd() -> None:
    """Print this user's public signing key (created on first use), to share with verifiers."""
    from slimline.artifact.keys import key_id, public_key_b64, signing_key

    pub = signing_key().public_key()
    out.print(f"{key_id(pub)} {public_key_b64(pub)}")


@artifact_app.command("trust")
def artifact_trust_cmd(public_key: str) -> None:
    """Accept artifacts signed by PUBLIC_KEY (base64, as printed by `slimline artifact key`)."""
    from slimline.artifact import trust_key

    out.print(f"trusted key {trust_key(public_key)}")


def compare_cmd(
    a: str,
    b: str,
    tolerance: float = typer.Option(0.01, help="relative difference counted as the same"),
    as_json: bool = JSON,
) -> None:
    """Compare artifact B against A (paths or registry refs) on their recorded metrics."""
    from slimline.registry import compare

    c = compare(a, b, tolerance=tolerance)
    if as_json:
        emit_json(c.to_dict())
        return
    t = Table(title=f"B = {c.b}  vs  A = {c.a}: {c.verdict}")
    for col in ("metric", "A", "B", "B/A", "better when", "B is"):
        t.add_column(col)
    for r in c.rows:
        t.add_row(r.metric, _fmt(r.a), _fmt(r.b), _fmt(r.ratio), r.direction or "?", r.verdict)
    out.print(t)


def register(app: typer.Typer) -> None:
    app.add_typer(registry_app, name="registry")
    app.add_typer(artifact_app, name="artifact")
    app.command("compare")(compare_cmd)
