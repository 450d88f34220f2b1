"""Byte-exact golden checks of the format's fixed parts, and the safetensors header checker on
hand-built files."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from slimline.artifact.keys import key_id, parse_public_key, public_key_b64
from slimline.artifact.spec import canonical_bytes, check_safetensors_header, manifest_digest
from slimline.artifact.verify import signature_record
from slimline.errors import ConfigError, IntegrityError

MANIFEST = {
    "format": "slimline-artifact",
    "format_version": 1,
    "metrics": {"ppl/python-docs": 12.5, "size/bytes": 7},
    "z": [1, "é"],
    "a": None,
}
GOLDEN = b'{"a":null,"format":"slimline-artifact","format_version":1,"metrics":{"ppl/python-docs":12.5,"size/bytes":7},"z":[1,"\xc3\xa9"]}'


def test_canonical_bytes_and_digest_are_golden():
    assert canonical_bytes(MANIFEST) == GOLDEN
    assert manifest_digest(MANIFEST) == hashlib.sha256(GOLDEN).hexdigest()
    # Key order and whitespace never matter; content always does.
    shuffled = json.loads(json.dumps(dict(reversed(list(MANIFEST.items()))), indent=4))
    assert canonical_bytes(shuffled) == GOLDEN
    assert manifest_digest({**MANIFEST, "a": 0}) != manifest_digest(MANIFEST)


def test_non_json_values_are_refused():
    with pytest.raises(ConfigError, match="plain JSON"):
        canonical_bytes({"x": object()})


def test_signature_is_deterministic_ed25519_over_canonical_bytes():
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    rec = signature_record(MANIFEST, key)
    assert rec == signature_record(MANIFEST, key)  # Ed25519 signatures are deterministic
    assert (
        rec["alg"] == "ed25519"
        and rec["key_id"] == key_id(key.public_key())
        and len(rec["key_id"]) == 16
    )
    pub = parse_public_key(rec["public_key"])
    import base64

    pub.verify(base64.b64decode(rec["signature"]), GOLDEN)  # raises if not over the golden bytes
    assert public_key_b64(pub) == rec["public_key"]
    with pytest.raises(ConfigError):
        parse_public_key("not base64!")


def _st(header: dict, data: bytes, pad_to: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    if pad_to:
        raw += b" " * (pad_to - len(raw))
    return struct.pack("<Q", len(raw)) + raw + data


GOOD = {
    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    "b": {"dtype": "I8", "shape": [3], "data_offsets": [8, 11]},
}


@pytest.mark.parametrize(
    "blob, problem",
    [
        (_st(GOOD, b"\0" * 11), None),
        (b"\1\0", "truncated"),
        (struct.pack("<Q", 10**6) + b"{}", "header claims"),
        (_st(GOOD, b"\0" * 10), "data section has 10"),
        (_st(GOOD, b"\0" * 12), "trailing"),
        (
            _st({**GOOD, "a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 11),
            r"claims shape \[3\]",
        ),
        (
            _st({**GOOD, "b": {"dtype": "I8", "shape": [3], "data_offsets": [5, 8]}}, b"\0" * 8),
            "overlap or gap",
        ),
        (
            _st({**GOOD, "a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 11),
            "unknown dtype",
        ),
        (
            _st({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8),
            "malformed",
        ),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (struct.pack("<Q", 3) + b"{x}", "not valid JSON"),
    ],
)
def test_safetensors_header_checker(tmp_path, blob, problem):
    p = tmp_path / "w.safetensors"
    p.write_bytes(blob)
    if problem is None:
        assert set(check_safetensors_header(p)) == {"a", "b"}
    else:
        with pytest.raises(IntegrityError, match=problem):
            check_safetensors_header(p)


def test_checker_accepts_what_safetensors_writes(tmp_path):
    import torch
    from safetensors.torch import save_file

    p = tmp_path / "real.safetensors"
    save_file(
        {"w": torch.zeros(3, 5), "i": torch.ones(7, dtype=torch.int8), "e": torch.zeros(0)},
        str(p),
        metadata={"format": "pt"},
    )
    assert set(check_safetensors_header(p)) == {"w", "i", "e"}
