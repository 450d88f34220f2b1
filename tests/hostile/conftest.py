"""Hostile-input fixtures, all made at test time: the ``slimline`` command run in-process exactly
as a user runs it (``slimline.cli.main``: one-line error, exit code), a snapshot of a directory
tree to prove nothing was written or deleted, an unwritable location, a guard that fails a test
if a model gets loaded, and small signed artifacts."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tiny_hf import tiny_causal_lm

torch.set_num_threads(1)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def error_line(self) -> str:
        """The ``error: ...`` line; asserts the command ended with exactly one ``error:`` line
        and its ``  fix:`` line (a library's progress bar may come before them), no traceback."""
        lines = self.err.replace("\r", "\n").strip("\n").splitlines()
        assert len(lines) >= 2 and sum(x.startswith("error: ") for x in lines) == 1, self.err
        assert lines[-2].startswith("error: ") and lines[-1].startswith("  fix: "), self.err
        assert "Traceback" not in self.err + self.out
        return lines[-2]


@pytest.fixture
def cli(capsys, monkeypatch):
    """``cli(*args)`` runs ``slimline ARGS`` through ``slimline.cli.main`` (what the installed
    command runs). An exception that is not a ``SlimlineError`` propagates: a traceback fails."""
    from slimline.cli import main

    def run(*args: object) -> Result:
        monkeypatch.setattr(sys, "argv", ["slimline", *map(str, args)])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        got = capsys.readouterr()
        return Result(code, got.out, got.err)

    return run


def _writable(d: Path) -> bool:
    try:
        (d / ".probe").mkdir()
    except OSError:
        return False
    (d / ".probe").rmdir()
    return True


@pytest.fixture
def unwritable(tmp_path):
    """A directory this process cannot create anything in (mode 555; as root, where modes do not
    bind, /sys, which refuses every write)."""
    d = tmp_path / "read-only"
    d.mkdir()
    d.chmod(0o555)
    try:
        for cand in (d, Path("/sys")):
            if not _writable(cand):
                yield cand
                return
        pytest.skip("no unwritable directory available on this machine")
    finally:
        d.chmod(0o755)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if any command loads a model: refusals must come before the work."""

    def refuse(*a, **k):
        raise AssertionError(f"a model was loaded ({a[:1]}) before the bad input was refused")

    for module in ("slimline.models", "slimline.models.load", "slimline.distill.api"):
        monkeypatch.setattr(importlib.import_module(module), "load_model", refuse)


@pytest.fixture(scope="session")
def author(tmp_path_factory):
    """A signing key outside every test home (homes trust it, as a team trusts a colleague)."""
    from slimline.artifact import signing_key
    from slimline.artifact.keys import public_key_b64

    key = signing_key(tmp_path_factory.mktemp("author") / "home")
    return key, public_key_b64(key.public_key())


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory, author):
    """Two small signed artifacts (same weights, different manifests: different digests)."""
    from slimline.artifact import save_artifact

    root = tmp_path_factory.mktemp("hostile-artifacts")
    model = tiny_causal_lm(seed=0)
    return [
        save_artifact(
            model, None, root / f"a{i}", key=author[0], manifest={"metrics": {"size/bytes": i}}
        ).path
        for i in (1, 2)
    ]


@pytest.fixture
def home(tmp_path, monkeypatch, author) -> Path:
    """A fresh slimline home (registry + keys) that trusts the author's key."""
    from slimline.artifact import trust_key

    h = tmp_path / "home"
    monkeypatch.setenv("SLIMLINE_HOME", str(h))
    monkeypatch.delenv("SLIMLINE_REGISTRY_DB", raising=False)
    trust_key(author[1], home=h)
    return h
