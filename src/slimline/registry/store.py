"""The model registry: content-addressed artifact store + SQLite catalogue + append-only audit log.

Layout under the home dir (``SLIMLINE_HOME``, default ``~/.slimline``)::

    registry.db            versions, metrics, aliases, alias history, gates, audit
    store/<digest>/        one verified copy of each registered artifact
    store.owner            which database created the store's records (its id and path)

The store belongs to one database: ``gc`` refuses to run from any other (an emptied, missing or
redirected database would otherwise see every stored artifact as unreferenced), and even then
removes only digest-named directories that this database's audit log shows it registered, plus
its own temp copies once stale. Files a user put in ``store/`` are never touched. Promotion
re-verifies the stored copy, and registering a digest that is already stored verifies the
incoming copy and replaces a stored copy that no longer verifies.

Several processes may write at once: WAL journal, a busy timeout, and every write in a
``BEGIN IMMEDIATE`` transaction (so version numbers are allocated under the write lock).
A registration copies into a temp dir in the store, then inserts in a transaction, renames the
copy into place and commits; any failure rolls back both.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import getpass
import json
import os
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimline.artifact.keys import home_dir
from slimline.artifact.spec import manifest_digest, read_manifest
from slimline.artifact.verify import VerifyReport, verify_artifact
from slimline.errors import ConfigError, IntegrityError, RegistryError
from slimline.registry.gates import (
    Gate,
    GateReport,
    GateResult,
    SuiteGate,
    evaluate_gates,
    parse_gate,
    run_suite_gate,
)

SCHEMA_VERSION = 2  # 2: the meta table (the database's id, which owns the store)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEX = re.compile(r"^[0-9a-f]{6,64}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_TMP = re.compile(r"^\.tmp-[0-9a-f]{32}$")
OWNER_FILE = "store.owner"
_STALE_TMP_S = 3600.0  # a registration's temp copy older than this is debris from a crash

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL, version INTEGER NOT NULL, digest TEXT NOT NULL, parent TEXT,
  recipe TEXT, data_fingerprint TEXT, environment TEXT, size_bytes INTEGER,
  created_at TEXT NOT NULL, created_by TEXT NOT NULL,
  UNIQUE(name, version));
CREATE INDEX IF NOT EXISTS versions_digest ON versions(digest);
CREATE TABLE IF NOT EXISTS metrics(
  version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
  name TEXT NOT NULL, value REAL, PRIMARY KEY(version_id, name));
CREATE TABLE IF NOT EXISTS aliases(
  name TEXT NOT NULL, alias TEXT NOT NULL,
  version_id INTEGER NOT NULL REFERENCES versions(id), updated_at TEXT NOT NULL,
  PRIMARY KEY(name, alias));
CREATE TABLE IF NOT EXISTS alias_history(
  id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, alias TEXT NOT NULL,
  version_id INTEGER NOT NULL, previous_id INTEGER, at TEXT NOT NULL,
  undone INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS gates(scope TEXT PRIMARY KEY, gates TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit(
  id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, who TEXT NOT NULL,
  action TEXT NOT NULL, ref TEXT, details TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
  BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
  BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (containers): fall back to the uid
        return f"uid:{os.getuid()}"


def _metric_value(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


@dataclass
class Version:
    """One registered version of a named model."""

    id: int
    name: str
    version: int
    digest: str
    parent: str | None
    path: Path
    recipe: Any = None
    data_fingerprint: str | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)
    size_bytes: int | None = None
    created_at: str = ""
    created_by: str = ""
    aliases: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "name": self.name,
            "version": self.version,
            "digest": self.digest,
            "parent": self.parent,
            "path": str(self.path),
            "aliases": self.aliases,
            "metrics": self.metrics,
            "recipe": self.recipe,
            "data_fingerprint": self.data_fingerprint,
            "environment": self.environment,
            "size_bytes": self.size_bytes,
            "created_at": self.created_at,
            "created_by": self.created_by,
        }


class Registry:
    """Versions, lineage, aliases behind promotion gates, rollback and an audit log.

    ``home``: the slimline home (default ``$SLIMLINE_HOME`` or ``~/.slimline``); ``db_path``:
    the SQLite file (default ``<home>/registry.db``, or ``$SLIMLINE_REGISTRY_DB``);
    ``timeout``: seconds to wait for another writer (default 30, or ``$SLIMLINE_REGISTRY_TIMEOUT``).
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        db_path: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
    ):
        self.home = home_dir(home)
        self.store = self.home / "store"
        env_db = os.environ.get("SLIMLINE_REGISTRY_DB")
        self.db_path = Path(db_path or env_db or self.home / "registry.db")
        self.timeout = float(
            timeout if timeout is not None else os.environ.get("SLIMLINE_REGISTRY_TIMEOUT", 30)
        )
        self.store.mkdir(parents=True, exist_ok=True)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._init_schema()

    # --- database plumbing ---------------------------------------------------------------------

    def _error(self, e: sqlite3.Error) -> RegistryError:
        msg = str(e)
        if "locked" in msg or "busy" in msg:
            return RegistryError(
                f"the registry database {self.db_path} is locked by another process (waited {self.timeout:g} s)",
                "wait for the other slimline command to finish and retry, or raise SLIMLINE_REGISTRY_TIMEOUT",
            )
        if any(w in msg for w in ("not a database", "malformed", "corrupt", "disk image")):
            return RegistryError(
                f"the registry database {self.db_path} is unreadable or corrupt ({msg})",
                f"move {self.db_path} aside (the artifacts stay in {self.store}) and re-register them, "
                "or restore the file from a backup",
            )
        return RegistryError(
            f"registry database error: {msg}",
            "retry; if it persists, move the database aside and re-register the store's artifacts",
        )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=self.timeout, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys=ON")
        if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            db.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        return db

    def _init_schema(self) -> None:
        db = None
        try:
            db = self._connect()
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                # executescript commits any open transaction, so the script carries its own.
                db.executescript(
                    f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;"
                )
            row = db.execute("SELECT value FROM meta WHERE key='id'").fetchone()
            if row is None:
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('id', ?)", (uuid.uuid4().hex,)
                )
                db.execute("COMMIT")
                row = db.execute("SELECT value FROM meta WHERE key='id'").fetchone()
            self.db_id: str = row[0]
            self._claim_store(db)
        except sqlite3.Error as e:
            raise self._error(e) from e
        finally:
            if db is not None:
                db.close()

    # --- who owns the store ----------------------------------------------------------------------

    @staticmethod
    def _registered_digests(db: sqlite3.Connection) -> set[str]:
        """Every digest this database has recorded: referenced now, or registered once."""
        found = {r[0] for r in db.execute("SELECT DISTINCT digest FROM versions")}
        for (details,) in db.execute("SELECT details FROM audit WHERE action='register'"):
            d = json.loads(details).get("digest")
            if isinstance(d, str):
                found.add(d)
        return found

    def _blobs(self) -> list[Path]:
        return [d for d in self.store.iterdir() if _DIGEST.match(d.name) and d.is_dir()]

    def owner(self) -> dict[str, Any] | None:
        """The store's owner record (``id`` and ``db`` of the database that created its records),
        or None when there is none or it cannot be read."""
        try:
            data = json.loads((self.home / OWNER_FILE).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("id"), str) else None

    def _claim_store(self, db: sqlite3.Connection) -> None:
        """Record this database as the store's owner when that is provable: the store holds no
        artifacts yet, or this database registered some of those it holds (a registry made before
        the owner record existed). A store full of artifacts this database never saw stays
        unclaimed, and ``gc`` refuses to run on it."""
        path = self.home / OWNER_FILE
        if path.exists():
            return
        blobs = {d.name for d in self._blobs()}
        if blobs and not blobs & self._registered_digests(db):
            return
        tmp = self.home / f".{OWNER_FILE}.tmp-{uuid.uuid4().hex}"
        try:
            tmp.write_text(json.dumps({"id": self.db_id, "db": str(self.db_path.resolve())}) + "\n")
            os.link(tmp, path)  # atomic and never over another process's claim
        except FileExistsError:
            pass
        except OSError:  # a read-only home: nothing to claim, gc refuses later
            pass
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One connection, one transaction: ``BEGIN IMMEDIATE`` takes the write lock up front,
        so two writers never interleave (no lost updates, no duplicate version numbers)."""
        db = None
        try:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as e:
            raise self._error(e) from e
        finally:
            if db is not None:
                db.close()

    def _audit(self, db: sqlite3.Connection, action: str, ref: str | None, **details: Any) -> None:
        db.execute(
            "INSERT INTO audit(at, who, action, ref, details) VALUES (?,?,?,?,?)",
            (_now(), _who(), action, ref, json.dumps(details, default=str, sort_keys=True)),
        )

    def _version(self, db: sqlite3.Connection, row: sqlite3.Row) -> Version:
        metrics = {
            r["name"]: r["value"]
            for r in db.execute(
                "SELECT name, value FROM metrics WHERE version_id=? ORDER BY name", (row["id"],)
            )
        }
        aliases = [
            r["alias"]
            for r in db.execute(
                "SELECT alias FROM aliases WHERE version_id=? ORDER BY alias", (row["id"],)
            )
        ]
        return Version(
            id=row["id"],
            name=row["name"],
            version=row["version"],
            digest=row["digest"],
            parent=row["parent"],
            path=self.store / row["digest"],
            recipe=json.loads(row["recipe"]) if row["recipe"] else None,
            data_fingerprint=row["data_fingerprint"],
            environment=json.loads(row["environment"]) if row["environment"] else {},
            metrics=metrics,
            size_bytes=row["size_bytes"],
            created_at=row["created_at"],
            created_by=row["created_by"],
            aliases=aliases,
        )

    def _resolve(self, db: sqlite3.Connection, ref: str) -> Version:
        ref = str(ref).strip()
        row = None
        if "@" in ref:
            name, _, tag = ref.partition("@")
            if tag.isdigit():
                row = db.execute(
                    "SELECT * FROM versions WHERE name=? AND version=?", (name, int(tag))
                ).fetchone()
            elif tag == "latest":
                row = db.execute(
                    "SELECT * FROM versions WHERE name=? ORDER BY version DESC LIMIT 1", (name,)
                ).fetchone()
            else:
                row = db.execute(
                    "SELECT v.* FROM aliases a JOIN versions v ON v.id=a.version_id WHERE a.name=? AND a.alias=?",
                    (name, tag),
                ).fetchone()
        else:
            row = db.execute(
                "SELECT * FROM versions WHERE name=? ORDER BY version DESC LIMIT 1", (ref,)
            ).fetchone()
            if row is None and _HEX.match(ref):
                rows = db.execute(
                    "SELECT * FROM versions WHERE digest LIKE ? ORDER BY id DESC", (ref + "%",)
                ).fetchall()
                if len({r["digest"] for r in rows}) > 1:
                    raise RegistryError(
                        f"digest prefix {ref!r} matches {len({r['digest'] for r in rows})} artifacts",
                        "give more digits",
                    )
                row = rows[0] if rows else None
        if row is None:
            raise RegistryError(
                f"no registered version matches {ref!r}",
                "refs are name@version, name@alias, name (latest) or a digest prefix; see `slimline registry list`",
            )
        return self._version(db, row)

    def _by_digest(
        self, db: sqlite3.Connection, digest: str | None, prefer_name: str | None = None
    ) -> Version | None:
        if not digest:
            return None
        row = db.execute(
            "SELECT * FROM versions WHERE digest=? ORDER BY (name=?) DESC, id DESC LIMIT 1",
            (digest, prefer_name),
        ).fetchone()
        return self._version(db, row) if row else None

    # --- registration --------------------------------------------------------------------------

    def register(
        self,
        artifact_path: str | os.PathLike[str] | Any,
        name: str,
        *,
        parent: str | None = None,
        metrics: dict[str, Any] | None = None,
        recipe: Any = None,
        data_fingerprint: str | None = None,
        trusted_keys: Any = None,
    ) -> Version:
        """Verify the artifact, store a copy content-addressed, and record a new version of ``name``.

        Metrics, recipe and data fingerprint default to the manifest's; ``parent`` (a ref) defaults
        to the manifest's parent digest. Version numbers count up per name from 1.
        """
        if not _NAME.match(name or ""):
            raise ConfigError(
                f"bad model name {name!r}", "use letters, digits, '.', '_' and '-' (no '@')"
            )
        src = Path(getattr(artifact_path, "path", artifact_path))  # a path or an ArtifactInfo
        manifest = read_manifest(src)
        digest = manifest_digest(manifest)
        final = self.store / digest
        # Verify the copy we would keep, always (an identical digest proves nothing about the
        # bytes of this copy), and name the user's path in what goes wrong, not the temp copy.
        tmp: Path | None = self.store / f".tmp-{uuid.uuid4().hex}"
        try:
            shutil.copytree(src, tmp, symlinks=True)
            rep = _as_user_path(
                verify_artifact(tmp, trusted_keys=trusted_keys, home=self.home), tmp, src
            )
            if not rep.ok:
                with self._tx() as db:
                    self._audit(
                        db,
                        "register_refused",
                        name,
                        path=str(src),
                        problems=[p for p, _ in rep.problems],
                    )
                rep.raise_for_problems()
            # A stored copy that no longer verifies is replaced by this verified one.
            stored_bad = final.is_dir() and not self._stored_ok(final, digest, trusted_keys)
            mets = {**(manifest.get("metrics") or {}), **(metrics or {})}
            rec = recipe if recipe is not None else manifest.get("recipe")
            fp = (
                data_fingerprint
                if data_fingerprint is not None
                else manifest.get("data_fingerprint")
            )
            size = sum(int(f.get("bytes", 0)) for f in (manifest.get("files") or {}).values())
            renamed = False
            try:
                with self._tx() as db:
                    parent_digest = (
                        self._resolve(db, parent).digest if parent else manifest.get("parent")
                    )
                    (num,) = db.execute(
                        "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE name=?", (name,)
                    ).fetchone()
                    cur = db.execute(
                        "INSERT INTO versions(name, version, digest, parent, recipe, data_fingerprint, environment,"
                        " size_bytes, created_at, created_by) VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (
                            name,
                            num,
                            digest,
                            parent_digest,
                            json.dumps(rec) if rec is not None else None,
                            fp,
                            json.dumps(manifest.get("environment") or {}),
                            size,
                            _now(),
                            _who(),
                        ),
                    )
                    vid = cur.lastrowid
                    db.executemany(
                        "INSERT INTO metrics(version_id, name, value) VALUES (?,?,?)",
                        [(vid, k, _metric_value(v)) for k, v in sorted(mets.items())],
                    )
                    # under the write lock: gc cannot remove the stored copy meanwhile
                    repaired = False
                    if not final.is_dir():
                        os.replace(tmp, final)
                        tmp, renamed = None, True
                    elif stored_bad:
                        old = self.store / f".tmp-{uuid.uuid4().hex}"
                        os.replace(final, old)
                        os.replace(tmp, final)
                        tmp, repaired = old, True  # the corrupt copy goes in `finally`
                    self._audit(
                        db,
                        "register",
                        f"{name}@{num}",
                        digest=digest,
                        parent=parent_digest,
                        source=str(src),
                        metrics=mets,
                        **({"repaired_stored_copy": True} if repaired else {}),
                    )
                    version = self._version(
                        db, db.execute("SELECT * FROM versions WHERE id=?", (vid,)).fetchone()
                    )
            except BaseException:
                if renamed:
                    shutil.rmtree(final, ignore_errors=True)
                raise
            return version
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def _stored_ok(self, path: Path, digest: str, trusted_keys: Any = None) -> bool:
        rep = verify_artifact(path, trusted_keys=trusted_keys, home=self.home)
        return rep.ok and rep.digest == digest

    # --- reading -------------------------------------------------------------------------------

    def get(self, ref: str) -> Version:
        """A version by ``name@version``, ``name@alias``, ``name`` (latest) or digest prefix."""
        with self._tx(write=False) as db:
            return self._resolve(db, ref)

    def list(self, name: str | None = None) -> list[Version]:
        with self._tx(write=False) as db:
            q = (
                "SELECT * FROM versions"
                + (" WHERE name=?" if name else "")
                + " ORDER BY name, version"
            )
            return [self._version(db, r) for r in db.execute(q, (name,) if name else ())]

    def load(self, ref: str, **kw: Any) -> tuple[Any, Any, dict[str, Any]]:
        """``load_artifact`` of the stored copy of ``ref``: (model, tokenizer, manifest), verified."""
        from slimline.artifact import load_artifact

        return load_artifact(self.get(ref).path, home=self.home, **kw)

    def lineage(self, ref: str) -> list[Version]:
        """``ref`` and its registered ancestors, newest first (follows parent digests)."""
        with self._tx(write=False) as db:
            v = self._resolve(db, ref)
            chain, seen = [v], {v.digest}
            while v.parent and v.parent not in seen:
                p = self._by_digest(db, v.parent, prefer_name=v.name)
                if p is None:
                    break
                chain.append(p)
                seen.add(p.digest)
                v = p
            return chain

    def audit(self, limit: int = 50, *, action: str | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` audit rows (optionally of one action)."""
        with self._tx(write=False) as db:
            q = (
                "SELECT * FROM audit"
                + (" WHERE action=?" if action else "")
                + " ORDER BY id DESC LIMIT ?"
            )
            rows = db.execute(q, (action, limit) if action else (limit,)).fetchall()
            return [{**dict(r), "details": json.loads(r["details"])} for r in rows]

    # --- gates, promotion, rollback ------------------------------------------------------------

    def set_gates(
        self,
        alias: str,
        gates: list[str | dict[str, Any] | Gate | SuiteGate],
        *,
        name: str | None = None,
    ) -> list[str]:
        """The gates a version must pass to take ``alias`` (for every model, or only ``name``);
        a ``suite <name> [vs parent|baseline]`` line adds an evaluation suite's gates."""
        self._check_alias(alias)
        parsed = [str(parse_gate(g)) for g in gates]
        scope = f"{name}@{alias}" if name else alias
        with self._tx() as db:
            db.execute(
                "INSERT INTO gates(scope, gates) VALUES (?,?) ON CONFLICT(scope) DO UPDATE SET gates=excluded.gates",
                (scope, json.dumps(parsed)),
            )
            self._audit(db, "set_gates", scope, gates=parsed)
        return parsed

    def gates(self, alias: str, *, name: str | None = None) -> list[Gate | SuiteGate]:
        with self._tx(write=False) as db:
            return self._gates(db, alias, name)

    def _gates(
        self, db: sqlite3.Connection, alias: str, name: str | None
    ) -> list[Gate | SuiteGate]:
        for scope in ([f"{name}@{alias}"] if name else []) + [alias]:
            row = db.execute("SELECT gates FROM gates WHERE scope=?", (scope,)).fetchone()
            if row:
                return [parse_gate(g) for g in json.loads(row["gates"])]
        return []

    @staticmethod
    def _check_alias(alias: str) -> None:
        if not _NAME.match(alias or "") or alias.isdigit() or alias == "latest":
            raise ConfigError(
                f"bad alias {alias!r}",
                "use a word such as staging or production (not a number, not 'latest')",
            )

    def _holder(self, db: sqlite3.Connection, name: str, alias: str) -> Version | None:
        row = db.execute(
            "SELECT v.* FROM aliases a JOIN versions v ON v.id=a.version_id WHERE a.name=? AND a.alias=?",
            (name, alias),
        ).fetchone()
        return self._version(db, row) if row else None

    def _references(
        self, db: sqlite3.Connection, v: Version, alias: str
    ) -> dict[str, tuple[str, dict] | None]:
        return {
            k: (x.ref, x.metrics) if x else None
            for k, x in self._reference_versions(db, v, alias).items()
        }

    def _reference_versions(
        self, db: sqlite3.Connection, v: Version, alias: str
    ) -> dict[str, Version | None]:
        parent = self._by_digest(db, v.parent, prefer_name=v.name)
        current = self._holder(db, v.name, alias)
        baseline = self._holder(db, v.name, "baseline")
        if baseline is None:
            root, seen = v, {v.digest}
            while root.parent and root.parent not in seen:
                p = self._by_digest(db, root.parent, prefer_name=root.name)
                if p is None:
                    break
                seen.add(p.digest)
                root = p
            baseline = root if root.id != v.id else None
        return {"parent": parent, "current": current, "baseline": baseline}

    def check_gates(self, ref: str, alias: str, *, suite: str | None = None) -> list[GateResult]:
        """Evaluate ``alias``'s gates (and ``suite``'s, see ``promote``) for ``ref`` without
        moving anything."""
        suites = self._suite_gates(ref, alias, suite)
        with self._tx(write=False) as db:
            v = self._resolve(db, ref)
            plain = [g for g in self._gates(db, alias, v.name) if isinstance(g, Gate)]
            results = evaluate_gates(plain, v.metrics, self._references(db, v, alias))
        return results + self._suite_results(ref, alias, suites)

    def _suite_gates(self, ref: str, alias: str, suite: str | None) -> list[SuiteGate]:
        """The suite gates of ``alias`` for ``ref``'s model, plus ``suite`` (``NAME`` or ``NAME
        vs baseline``) when given; a bad suite name fails here, before anything runs."""
        extra = [SuiteGate.parse(f"suite {suite}")] if suite else []
        name = self.get(ref).name
        return [g for g in self.gates(alias, name=name) if isinstance(g, SuiteGate)] + extra

    def _suite_results(self, ref: str, alias: str, suites: list[SuiteGate]) -> list[GateResult]:
        """Each suite gate's results for ``ref``: from the suite its recipe run recorded against
        the same reference, else by running the suite on the stored copies (slow: called
        outside any transaction)."""
        out: list[GateResult] = []
        for g in suites:
            with self._tx(write=False) as db:
                v = self._resolve(db, ref)
                r = self._reference_versions(db, v, alias)[g.ref]
            out += run_suite_gate(
                g,
                (v.ref, v.path, read_manifest(v.path)),
                None if r is None else (r.ref, r.digest, r.path),
                self._loaded,
            )
        return out

    def _loaded(self, path: Path) -> Any:
        """A stored copy as a ``LoadedModel`` (verified by this home's keys before it is built)."""
        from slimline.artifact import load_artifact
        from slimline.models import LoadedModel
        from slimline.models.arch import get_arch

        model, tokenizer, manifest = load_artifact(path, home=self.home)
        model.eval()
        arch = get_arch(model)
        kind = manifest.get("kind") or arch.kind
        return LoadedModel(model, tokenizer, arch, kind, str(path), path, manifest=manifest)

    def promote(
        self,
        ref: str,
        alias: str,
        *,
        force: bool = False,
        reason: str | None = None,
        trusted_keys: Any = None,
        suite: str | None = None,
    ) -> GateReport:
        """Point ``alias`` of the version's model at it if every gate passes (or ``force`` with a
        ``reason``, which is audited). A blocked promotion is audited and returned with
        ``promoted=False``; check ``report.promoted``. The stored copy is verified first (digests
        and signature): one that fails is never promoted, forced or not (``IntegrityError``).

        ``suite`` (``NAME`` or ``NAME vs baseline``) adds an evaluation suite's gates to the
        alias's own, as a ``suite ...`` gate line does: judged on the metrics the version's run
        recorded against that reference, else on a run of the suite now."""
        self._check_alias(alias)
        if force and not (reason and reason.strip()):
            raise ConfigError(
                "--force needs a reason",
                "say why the gates are overridden: --reason '...' (it goes to the audit log)",
            )
        suites = self._suite_gates(ref, alias, suite)  # a bad suite name: refused right here
        checked = self.get(ref)
        rep_files = self._check_stored(checked, trusted_keys)  # outside the lock: hashing is slow
        if not rep_files.ok:
            with self._tx() as db:
                self._audit(
                    db,
                    "promote_refused",
                    checked.ref,
                    alias=alias,
                    digest=checked.digest,
                    problems=[p for p, _ in rep_files.problems],
                )
            problem, _ = rep_files.problems[0]
            raise IntegrityError(
                f"refusing to promote {checked.ref} to {alias}: its stored copy does not verify ({problem})",
                f"register the original artifact again (`slimline registry register PATH {checked.name}`): "
                "a verified copy replaces the damaged one; then promote",
            )
        suite_results = self._suite_results(checked.ref, alias, suites)  # slow: outside the lock
        with self._tx() as db:
            v = self._resolve(db, ref)
            if v.digest != checked.digest:
                raise RegistryError(
                    f"{ref} moved to another version while it was being verified",
                    "run the promotion again",
                )
            plain = [g for g in self._gates(db, alias, v.name) if isinstance(g, Gate)]
            results = evaluate_gates(plain, v.metrics, self._references(db, v, alias))
            results += suite_results
            current = self._holder(db, v.name, alias)
            rep = GateReport(
                v.ref,
                alias,
                results,
                forced=False,
                reason=reason,
                previous=current.ref if current else None,
            )
            details = {
                "gates": [r.detail for r in results],
                "digest": v.digest,
                "previous": rep.previous,
            }
            if not rep.passed and not force:
                self._audit(db, "gate_failed", v.ref, alias=alias, **details)
                return rep
            if current is not None and current.id == v.id:
                rep.promoted = True
                self._audit(db, "promote", v.ref, alias=alias, unchanged=True, **details)
                return rep
            db.execute(
                "INSERT INTO aliases(name, alias, version_id, updated_at) VALUES (?,?,?,?) "
                "ON CONFLICT(name, alias) DO UPDATE SET version_id=excluded.version_id, updated_at=excluded.updated_at",
                (v.name, alias, v.id, _now()),
            )
            db.execute(
                "INSERT INTO alias_history(name, alias, version_id, previous_id, at) VALUES (?,?,?,?,?)",
                (v.name, alias, v.id, current.id if current else None, _now()),
            )
            rep.promoted, rep.forced = True, force and not rep.passed
            self._audit(
                db, "promote", v.ref, alias=alias, forced=rep.forced, reason=reason, **details
            )
            return rep

    def rollback(self, alias: str, *, name: str | None = None) -> Version:
        """Move ``alias`` (``name@alias``, or ``alias`` with ``name``) back to its previous holder."""
        if "@" in alias:
            name, _, alias = alias.partition("@")
        with self._tx() as db:
            if name is None:
                names = [
                    r["name"]
                    for r in db.execute("SELECT name FROM aliases WHERE alias=?", (alias,))
                ]
                if len(names) != 1:
                    raise RegistryError(
                        f"alias {alias!r} is held by {len(names)} models ({', '.join(names) or 'none'})",
                        "name the model: `slimline registry rollback NAME@ALIAS`",
                    )
                name = names[0]
            current = self._holder(db, name, alias)
            if current is None:
                raise RegistryError(
                    f"{name}@{alias} points at nothing",
                    f"promote a version first: `slimline registry promote {name}@N {alias}`",
                )
            row = db.execute(
                "SELECT * FROM alias_history WHERE name=? AND alias=? AND undone=0 AND version_id=? ORDER BY id DESC LIMIT 1",
                (name, alias, current.id),
            ).fetchone()
            if row is None or row["previous_id"] is None:
                raise RegistryError(
                    f"{name}@{alias} has no previous holder to roll back to (it was first given to {current.ref})",
                    f"promote another version instead: `slimline registry promote {name}@N {alias}`",
                )
            prev = db.execute("SELECT * FROM versions WHERE id=?", (row["previous_id"],)).fetchone()
            if prev is None:
                raise RegistryError(
                    f"the previous holder of {name}@{alias} was deleted",
                    "promote a version explicitly",
                )
            db.execute(
                "UPDATE aliases SET version_id=?, updated_at=? WHERE name=? AND alias=?",
                (prev["id"], _now(), name, alias),
            )
            db.execute("UPDATE alias_history SET undone=1 WHERE id=?", (row["id"],))
            restored = self._version(db, prev)
            self._audit(
                db, "rollback", f"{name}@{alias}", from_ref=current.ref, to_ref=restored.ref
            )
            return restored

    # --- integrity and housekeeping ------------------------------------------------------------

    def _check_stored(self, v: Version, trusted_keys: Any = None) -> VerifyReport:
        rep = verify_artifact(v.path, trusted_keys=trusted_keys, home=self.home)
        if rep.ok and rep.digest != v.digest:
            rep.problems.append(
                (
                    f"{v.path} holds an artifact with digest {rep.digest}, not {v.digest}",
                    "re-register the artifact",
                )
            )
        return rep

    def verify(self, ref: str, *, trusted_keys: Any = None) -> VerifyReport:
        """Re-check the stored copy of ``ref`` (digests, signature); audited either way."""
        v = self.get(ref)
        rep = self._check_stored(v, trusted_keys)
        with self._tx() as db:
            self._audit(db, "verify", v.ref, ok=rep.ok, problems=[p for p, _ in rep.problems])
        return rep

    def delete(self, ref: str, *, reason: str | None = None) -> Version:
        """Remove a version from the catalogue (its files go at the next ``gc``)."""
        with self._tx() as db:
            v = self._resolve(db, ref)
            if v.aliases:
                raise RegistryError(
                    f"{v.ref} holds aliases {v.aliases}",
                    "promote another version to those aliases (or roll them back) before deleting it",
                )
            db.execute("DELETE FROM versions WHERE id=?", (v.id,))
            self._audit(db, "delete", v.ref, digest=v.digest, reason=reason)
            return v

    def gc(self, *, dry_run: bool = False) -> list[str]:
        """Remove stored artifacts this database registered and no version references any more,
        and its stale temp copies; returns their names.

        Refuses (``RegistryError``) unless this database owns the store (see ``owner``): an
        emptied, missing or redirected database sees every stored artifact as unreferenced.
        Never touches an entry it cannot prove is its own (any other name, a symlink, a digest
        this database never registered)."""
        owner = self.owner()
        if owner is None or owner["id"] != self.db_id:
            holder = (
                f"belongs to the registry database {owner.get('db')}"
                if owner is not None
                else "has no owner record"
            )
            raise RegistryError(
                f"refusing to garbage-collect {self.store}: it {holder}, and this database "
                f"({self.db_path}) did not create its records; nothing was removed",
                "run gc with the database that registered these artifacts "
                + (
                    f"(SLIMLINE_REGISTRY_DB={owner.get('db')}, or unset SLIMLINE_REGISTRY_DB)"
                    if owner is not None
                    else "(unset SLIMLINE_REGISTRY_DB, or restore registry.db from a backup)"
                ),
            )
        removed = []
        with self._tx() as db:
            used = {r["digest"] for r in db.execute("SELECT DISTINCT digest FROM versions")}
            ours = self._registered_digests(db)
            now = time.time()
            for d in sorted(self.store.iterdir()):
                if d.is_symlink() or not d.is_dir():
                    continue
                if _TMP.match(d.name):
                    if now - d.stat().st_mtime < _STALE_TMP_S:
                        continue  # a registration in progress
                elif not (_DIGEST.match(d.name) and d.name in ours and d.name not in used):
                    continue
                removed.append(d.name)
                if not dry_run:
                    shutil.rmtree(d)
            self._audit(db, "gc", None, removed=removed, dry_run=dry_run)
        return removed


def _as_user_path(rep: VerifyReport, tmp: Path, src: Path) -> VerifyReport:
    """A report on the temp copy, told in terms of the path the user gave."""
    t, u = str(tmp), str(src)
    rep.path = u
    rep.problems = [(p.replace(t, u), f.replace(t, u)) for p, f in rep.problems]
    return rep
