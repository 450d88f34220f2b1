"""The ``slimline`` command: a thin Typer app over the library.

Each ``slimline/cli/<area>.py`` module defines ``register(app)`` and adds its own commands, so
areas never edit one shared file. Errors derived from ``SlimlineError`` become one-line messages
with the fix and the error's exit code; no traceback unless ``SLIMLINE_DEBUG=1``.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import sys
import warnings
from pathlib import Path

import typer

from slimline.errors import SlimlineError

app = typer.Typer(
    name="slimline",
    help="Compress and distill transformer models, and prove what it cost and bought.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register_all() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(mod, "register", None)
        if register is not None:
            register(app)


_register_all()
_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def fail(err: SlimlineError) -> None:
    """Print a ``SlimlineError`` as the CLI shows it and exit with its code."""
    msg = f"error: {err.problem}"
    if err.fix:
        msg += f"\n  fix: {err.fix}"
    typer.echo(msg, err=True)
    raise SystemExit(err.exit_code)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """Our warnings (calibration reuse, a profile fitted to a short window) as ``warning: ...``
    lines; libraries' deprecation notices about their own internals are not the user's business
    (shown with ``SLIMLINE_DEBUG=1``)."""
    ours = Path(filename).resolve().is_relative_to(_PACKAGE_DIR)
    if ours or os.environ.get("SLIMLINE_DEBUG") == "1":
        typer.echo(f"warning: {message}", err=True)


def main() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # our own bars say what happens
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' per-load "Loading weights" bars
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # transformers imports torchao (a bench dependency) on every load when it is installed, and
    # torchao logs its CUDA-only extensions failing to load and pytree deprecations: not ours
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            app()
    except SlimlineError as err:
        if os.environ.get("SLIMLINE_DEBUG") == "1":
            raise
        fail(err)
    except KeyboardInterrupt:
        typer.echo("interrupted: nothing half-written was kept", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
