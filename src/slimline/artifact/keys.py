"""Ed25519 signing keys: one per user, created on first use under ``SLIMLINE_HOME``.

Layout under the home dir (default ``~/.slimline``)::

    keys/signing.key          private key, PEM (PKCS8), mode 0600
    keys/signing.pub          its public key, base64 of the 32 raw bytes
    keys/trusted/<id>.pub     other public keys whose signatures this user accepts

A key id is the first 16 hex digits of sha256 over the 32 raw public-key bytes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from slimline.errors import ConfigError, IntegrityError

PublicKeyLike = Ed25519PublicKey | bytes | str


def home_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """The slimline home: ``home`` if given, else ``$SLIMLINE_HOME``, else ``~/.slimline``."""
    if home is not None:
        return Path(home).expanduser()
    env = os.environ.get("SLIMLINE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".slimline"


def _raw(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(pub: Ed25519PublicKey) -> str:
    return hashlib.sha256(_raw(pub)).hexdigest()[:16]


def public_key_b64(pub: Ed25519PublicKey) -> str:
    return base64.b64encode(_raw(pub)).decode("ascii")


def parse_public_key(key: PublicKeyLike) -> Ed25519PublicKey:
    """A public key from an object, its 32 raw bytes, or their base64 text."""
    if isinstance(key, Ed25519PublicKey):
        return key
    try:
        raw = base64.b64decode(key.strip(), validate=True) if isinstance(key, str) else key
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError) as e:
        raise ConfigError(
            f"not an Ed25519 public key: {str(key)[:60]!r}",
            "pass the base64 text of a 32-byte key, as in keys/signing.pub",
        ) from e


def _write_private(path: Path, key: Ed25519PrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".signing.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)  # mode set before a single key byte is written
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        # link() fails if another process created the key meanwhile: theirs wins, we use theirs.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def signing_key(home: str | os.PathLike[str] | None = None) -> Ed25519PrivateKey:
    """This user's signing key, created (mode 0600) the first time it is needed."""
    keys = home_dir(home) / "keys"
    path = keys / "signing.key"
    if not path.exists():
        _write_private(path, Ed25519PrivateKey.generate())
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise IntegrityError(
            f"{path} is readable by other users (mode {mode:o})",
            f"chmod 600 {path}",
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise IntegrityError(
            f"{path} is not a readable private key ({e})",
            f"move {path} aside; a new key is created on the next save (old artifacts then need `slimline artifact trust` of the old public key)",
        ) from e
    if not isinstance(key, Ed25519PrivateKey):
        raise IntegrityError(
            f"{path} is not an Ed25519 key", f"move {path} aside to create a new one"
        )
    pub_path = keys / "signing.pub"
    if not pub_path.exists():
        pub_path.write_text(public_key_b64(key.public_key()) + "\n")
    return key


def load_private_key(
    key: Ed25519PrivateKey | str | os.PathLike[str] | None, home=None
) -> Ed25519PrivateKey:
    """``key`` as given: None = this user's key, a key object, or a path to a PEM file."""
    if key is None:
        return signing_key(home)
    if isinstance(key, Ed25519PrivateKey):
        return key
    p = Path(key)
    try:
        loaded = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(
            f"cannot read a private key from {p} ({e})", "pass an Ed25519 PEM (PKCS8) file"
        ) from e
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ConfigError(
            f"{p} is not an Ed25519 key", "generate one with slimline (it creates keys/signing.key)"
        )
    return loaded


def trust_key(key: PublicKeyLike, home: str | os.PathLike[str] | None = None) -> str:
    """Accept signatures by ``key`` from now on; returns its key id."""
    pub = parse_public_key(key)
    d = home_dir(home) / "keys" / "trusted"
    d.mkdir(parents=True, exist_ok=True)
    kid = key_id(pub)
    tmp = d / f".{kid}.tmp"
    tmp.write_text(public_key_b64(pub) + "\n")
    os.replace(tmp, d / f"{kid}.pub")
    return kid


def trusted_keys(
    keys: Iterable[PublicKeyLike] | None = None, home: str | os.PathLike[str] | None = None
) -> dict[str, Ed25519PublicKey]:
    """Key id -> public key for the keys a verification accepts.

    With ``keys`` given, exactly those; otherwise this user's own key plus ``keys/trusted/*.pub``.
    """
    if keys is not None:
        pubs = [parse_public_key(k) for k in keys]
        return {key_id(p): p for p in pubs}
    out: dict[str, Ed25519PublicKey] = {}
    h = home_dir(home) / "keys"
    if (h / "signing.key").exists():
        pub = signing_key(home).public_key()
        out[key_id(pub)] = pub
    for f in sorted((h / "trusted").glob("*.pub")) if (h / "trusted").is_dir() else []:
        pub = parse_public_key(f.read_text())
        out[key_id(pub)] = pub
    return out
