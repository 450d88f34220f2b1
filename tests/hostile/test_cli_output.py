"""What the CLI prints besides results: our warnings as one ``warning:`` line each, and no
library deprecation notices (transformers warns about its own internals on every forward)."""

from __future__ import annotations

import slimline.data.blocks as ours
from slimline.cli import _show_warning


def test_our_warnings_are_one_line_and_library_notices_are_dropped(capsys, monkeypatch):
    monkeypatch.delenv("SLIMLINE_DEBUG", raising=False)
    _show_warning("calibration reuses each token 3.1 times", UserWarning, ours.__file__, 10)
    _show_warning("`past_key_values` is deprecated", FutureWarning, "/x/transformers/m.py", 5)
    err = capsys.readouterr().err
    assert err == "warning: calibration reuses each token 3.1 times\n"
    monkeypatch.setenv("SLIMLINE_DEBUG", "1")
    _show_warning("`past_key_values` is deprecated", FutureWarning, "/x/transformers/m.py", 5)
    assert "past_key_values" in capsys.readouterr().err


def test_a_command_in_a_fresh_process_prints_no_library_noise(tiny_llama_dir):
    """transformers imports torchao (installed for the benchmarks) on every model load, which logs
    CUDA extensions failing to load; transformers' own bars and deprecations must not show either."""
    import os
    import subprocess
    import sys

    args = ["eval", str(tiny_llama_dir), "--suite", "ppl", "--windows", "1", "--seq-len", "16"]
    res = subprocess.run(
        [sys.executable, "-m", "slimline.cli", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "SLIMLINE_QUIET": "0"},
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr
