"""The run dir's ``run.json``: the marker that says ``slimline run`` wrote it, and how it is read.

Written by the recipe runner, read by the runner (resume), the report and the CLI; kept apart
from both so the report never imports the recipe package (the arrows point one way).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from slimline.errors import InputError

RUN_FILE = "run.json"
RUN_FORMAT, RUN_FORMAT_VERSION = "slimline-run", 1  # written into run.json: "slimline made this"
# run.json fields and their types: a file without them is not a slimline run (whatever its name)
_RUN_FIELDS: dict[str, type | tuple[type, ...]] = {
    "work_digest": str,
    "recipe": dict,
    "stages": list,
    "status": str,
    "started_at": str,
}


def read_run_state(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``run.json`` of a run dir, checked to be one ``slimline run`` wrote (``InputError``
    naming the problem otherwise: missing, not JSON, another program's file)."""
    f = Path(run_dir) / RUN_FILE
    fix = "point at a run dir made by `slimline run` (it holds run.json, recipe.yaml, baseline/)"
    try:
        data = json.loads(f.read_text())
    except FileNotFoundError as e:
        raise InputError(f"{run_dir} is not a run dir: it has no {RUN_FILE}", fix) from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{f} is unreadable ({e})", fix) from e
    bad = (
        ["not a JSON object"]
        if not isinstance(data, dict)
        else [k for k, t in _RUN_FIELDS.items() if not isinstance(data.get(k), t)]
    )
    if isinstance(data, dict) and "format" in data and data["format"] != RUN_FORMAT:
        bad.append("format")
    if bad:
        raise InputError(
            f"{f} was not written by `slimline run` (missing or wrong: {', '.join(bad)})", fix
        )
    return data


def is_run_dir(run_dir: str | os.PathLike[str]) -> bool:
    """True only for a directory provably made by ``slimline run``: its run.json carries the run
    marker (``format: slimline-run``) and the run schema. Only such a directory is ever replaced."""
    try:
        data = read_run_state(run_dir)
    except InputError:
        return False
    return data.get("format") == RUN_FORMAT and isinstance(data.get("format_version"), int)
