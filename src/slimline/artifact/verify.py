"""Signing and verification of an artifact directory, before anything in it is built.

Order of checks (each failure names the file and the fix): no pickle-capable file is present;
the manifest parses; the signature is by a trusted key and matches the canonical manifest;
every listed file exists with the listed size and sha256, and no unlisted file is present;
every safetensors header is consistent with its file size.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from slimline.artifact import keys as _keys
from slimline.artifact.spec import (
    MANIFEST,
    PICKLE_SUFFIXES,
    SIGNATURE,
    canonical_bytes,
    check_safetensors_header,
    manifest_digest,
    read_manifest,
    sha256_file,
)
from slimline.errors import IntegrityError
from slimline.progress import track

_FIX_RESTORE = "the artifact was changed after it was signed: restore it from the registry store (`slimline registry verify`) or re-save it from the model"


def signature_record(manifest: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, str]:
    """The content of ``slimline.sig``: algorithm, key id, public key and the signature."""
    pub = key.public_key()
    sig = key.sign(canonical_bytes(manifest))
    return {
        "alg": "ed25519",
        "key_id": _keys.key_id(pub),
        "public_key": _keys.public_key_b64(pub),
        "signature": base64.b64encode(sig).decode("ascii"),
    }


@dataclass
class VerifyReport:
    """What a verification found. ``ok`` only when every check passed."""

    path: str
    digest: str | None = None
    key_id: str | None = None
    signed: bool = False  # signature verifies and its key is trusted
    files_checked: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (problem, fix)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        if self.problems:
            problem, fix = self.problems[0]
            more = f" (+{len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
            raise IntegrityError(problem + more, fix)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "digest": self.digest,
            "key_id": self.key_id,
            "signed": self.signed,
            "files_checked": self.files_checked,
            "problems": [{"problem": p, "fix": f} for p, f in self.problems],
        }


def _listing(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for d in dirnames:
            if (Path(dirpath) / d).is_symlink():
                out.append(str((Path(dirpath) / d).relative_to(root)))
        for f in filenames:
            out.append((Path(dirpath) / f).relative_to(root).as_posix())
    return sorted(out)


def verify_artifact(
    path: str | os.PathLike[str],
    *,
    trusted_keys: Iterable[_keys.PublicKeyLike] | None = None,
    home: str | os.PathLike[str] | None = None,
    check_signature: bool = True,
    check_digests: bool = True,
) -> VerifyReport:
    """Check an artifact without building anything; returns a report (``report.ok``).

    ``trusted_keys`` None = this user's key plus ``<home>/keys/trusted``. Pickle-capable files
    and safetensors headers are checked even with both flags off.
    """
    root = Path(path)
    rep = VerifyReport(path=str(root))
    if not root.is_dir():
        rep.problems.append((f"{root} is not a directory", "point at an artifact directory"))
        return rep
    if not (root / MANIFEST).is_file():  # before walking: never crawl a directory that is not ours
        rep.problems.append(
            (
                f"{root} has no {MANIFEST}: not a slimline artifact",
                "point at a directory written by save_artifact",
            )
        )
        return rep
    files = _listing(root)
    for f in files:
        if f.lower().endswith(PICKLE_SUFFIXES):
            rep.problems.append(
                (
                    f"{root / f} can hold a pickle; slimline never unpickles, so this artifact is refused",
                    f"remove {f} (weights belong in model.safetensors); if it was not yours, do not trust this directory",
                )
            )
        elif (root / f).is_symlink():
            rep.problems.append(
                (
                    f"{root / f} is a symbolic link",
                    "artifacts hold plain files only: copy the target in and re-save",
                )
            )
    if rep.problems:
        return rep
    try:
        manifest = read_manifest(root)
    except IntegrityError as e:
        rep.problems.append((e.problem, e.fix or _FIX_RESTORE))
        return rep
    rep.digest = manifest_digest(manifest)
    listed: dict[str, dict[str, Any]] = manifest.get("files") or {}

    if check_signature:
        _check_signature(root, manifest, rep, trusted_keys, home)

    if check_digests:
        for f in files:
            if f not in listed and f not in (MANIFEST, SIGNATURE):
                rep.problems.append(
                    (
                        f"{root / f} is not listed in the signed manifest",
                        f"remove {f}, or re-save the artifact to include it",
                    )
                )
        for name, entry in track(sorted(listed.items()), "verify files"):
            p = root / name
            if ".." in Path(name).parts or Path(name).is_absolute():
                rep.problems.append(
                    (f"manifest lists a path outside the artifact: {name!r}", _FIX_RESTORE)
                )
                continue
            if not p.is_file():
                rep.problems.append((f"{p} is listed in the manifest but missing", _FIX_RESTORE))
                continue
            size = p.stat().st_size
            if size != entry.get("bytes"):
                rep.problems.append(
                    (
                        f"{p} has {size} bytes, the signed manifest says {entry.get('bytes')} (truncated or replaced)",
                        _FIX_RESTORE,
                    )
                )
                continue
            if sha256_file(p) != entry.get("sha256"):
                rep.problems.append(
                    (
                        f"{p} does not match its sha256 in the signed manifest (modified or swapped)",
                        _FIX_RESTORE,
                    )
                )
                continue
            rep.files_checked += 1

    for name in sorted(listed):
        p = root / name
        if name.endswith(".safetensors") and p.is_file():
            try:
                check_safetensors_header(p)
            except IntegrityError as e:
                rep.problems.append((f"{root}: {e.problem}", e.fix or _FIX_RESTORE))
    return rep


def _check_signature(root, manifest, rep: VerifyReport, trusted_keys, home) -> None:
    sig_path = root / SIGNATURE
    try:
        sig = json.loads(sig_path.read_text())
        rep.key_id = str(sig["key_id"])
        pub = _keys.parse_public_key(sig["public_key"])
        signature = base64.b64decode(sig["signature"], validate=True)
    except FileNotFoundError:
        rep.problems.append(
            (
                f"{sig_path} is missing: the artifact is unsigned",
                "re-save it with slimline (it signs every artifact)",
            )
        )
        return
    except (
        Exception
    ) as e:  # malformed JSON, missing field, bad base64: all mean "not a valid signature"
        rep.problems.append((f"{sig_path} is malformed ({type(e).__name__}: {e})", _FIX_RESTORE))
        return
    trusted = _keys.trusted_keys(trusted_keys, home)
    if _keys.key_id(pub) != rep.key_id or rep.key_id not in trusted:
        rep.problems.append(
            (
                f"{sig_path}: signed by key {rep.key_id}, which is not trusted here",
                f"if you trust its author, run `slimline artifact trust {_keys.public_key_b64(pub)}`",
            )
        )
        return
    try:
        trusted[rep.key_id].verify(signature, canonical_bytes(manifest))
    except InvalidSignature:
        rep.problems.append(
            (
                f"{root / MANIFEST} does not match its signature in {SIGNATURE} (edited after signing)",
                _FIX_RESTORE,
            )
        )
        return
    rep.signed = True
