"""The loader refuses every tampered, corrupt or unsafe artifact before it builds anything.

Each case starts from a good signed artifact and breaks one thing; the error must be an
IntegrityError that names the offending file.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from artifact_helpers import tiny_llama
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from slimline.artifact import (
    MANIFEST,
    SIGNATURE,
    WEIGHTS,
    load_artifact,
    read_manifest,
    save_artifact,
    trust_key,
    verify_artifact,
)
from slimline.artifact.keys import public_key_b64, signing_key
from slimline.artifact.spec import sha256_file
from slimline.artifact.verify import signature_record
from slimline.errors import IntegrityError


def _resign(art: Path, key: Ed25519PrivateKey | None = None) -> None:
    """Re-list every file's digest and re-sign: an insider (or a writer bug) producing a
    consistent-looking artifact, so only the deeper checks can catch the bad file."""
    m = read_manifest(art)
    for name in m["files"]:
        p = art / name
        m["files"][name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    (art / MANIFEST).write_text(json.dumps(m))
    (art / SIGNATURE).write_text(json.dumps(signature_record(m, key or signing_key())))


def _truncate_weights(art: Path) -> None:
    w = art / WEIGHTS
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])


def _lying_header(art: Path) -> None:
    # Same byte count, but the header claims the first tensor is bigger than its byte range.
    w = art / WEIGHTS
    data = w.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [d * 2 for d in header[name]["shape"]]
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (n - len(raw))
    assert len(raw) == n
    w.write_bytes(data[:8] + raw + data[8 + n :])


def _edit_manifest(art: Path) -> None:
    m = read_manifest(art)
    m["metrics"]["ppl/python-docs"] = 3.0  # a better number than was measured
    (art / MANIFEST).write_text(json.dumps(m, indent=2))


def _swap_weights(art: Path, other: Path) -> None:
    (art / WEIGHTS).write_bytes((other / WEIGHTS).read_bytes())


def _pickle_present(art: Path, marker: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (art / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))


def _unknown_key(art: Path) -> None:
    _resign(art, Ed25519PrivateKey.generate())


@pytest.fixture
def other(tmp_path):
    return save_artifact(tiny_llama(seed=7), None, tmp_path / "other").path


CASES = {
    "truncated weights": (lambda a, o, mk: _truncate_weights(a), WEIGHTS),
    "header lying about sizes (re-signed)": (
        lambda a, o, mk: (_lying_header(a), _resign(a)),
        WEIGHTS,
    ),
    "header lying about sizes": (lambda a, o, mk: _lying_header(a), WEIGHTS),
    "truncated weights (re-signed)": (lambda a, o, mk: (_truncate_weights(a), _resign(a)), WEIGHTS),
    "manifest edited after signing": (lambda a, o, mk: _edit_manifest(a), MANIFEST),
    "weight file swapped": (lambda a, o, mk: _swap_weights(a, o), WEIGHTS),
    "signature by unknown key": (lambda a, o, mk: _unknown_key(a), SIGNATURE),
    "signature missing": (lambda a, o, mk: (a / SIGNATURE).unlink(), SIGNATURE),
    "pickle file present": (lambda a, o, mk: _pickle_present(a, mk), "pytorch_model.bin"),
    "unlisted file added": (lambda a, o, mk: (a / "extra.json").write_text("{}"), "extra.json"),
    "listed file removed": (lambda a, o, mk: (a / "config.json").unlink(), "config.json"),
    "manifest not json": (lambda a, o, mk: (a / MANIFEST).write_text("{oops"), MANIFEST),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_loader_refuses(case, saved, other, tmp_path):
    info, _ = saved
    marker = tmp_path / "unpickled"
    damage, culprit = CASES[case]
    damage(info.path, other, marker)
    with pytest.raises(IntegrityError) as err:
        load_artifact(info.path)
    assert culprit in err.value.problem, err.value.problem
    assert err.value.fix
    assert not verify_artifact(info.path).ok
    assert not marker.exists()  # nothing was ever unpickled


@pytest.mark.parametrize(
    "case", ["pickle file present", "header lying about sizes (re-signed)", "truncated weights"]
)
def test_structural_checks_hold_without_verification(case, saved, other, tmp_path):
    info, _ = saved
    marker = tmp_path / "unpickled"
    CASES[case][0](info.path, other, marker)
    with pytest.raises(IntegrityError):
        load_artifact(info.path, verify=False)
    assert not marker.exists()


def test_key_trusted_explicitly_is_accepted(saved):
    info, model = saved
    outsider = Ed25519PrivateKey.generate()
    _resign(info.path, outsider)
    with pytest.raises(IntegrityError, match="not trusted"):
        load_artifact(info.path)
    # Passing the key for one call, or trusting it for good, both accept it.
    load_artifact(info.path, trusted_keys=[public_key_b64(outsider.public_key())])
    trust_key(public_key_b64(outsider.public_key()))
    loaded, _, _ = load_artifact(info.path)
    ids = torch.arange(8)[None]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_own_key_not_trusted_when_an_explicit_list_excludes_it(saved):
    info, _ = saved
    stranger = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(IntegrityError, match="not trusted"):
        load_artifact(info.path, trusted_keys=[stranger])
