"""Item 16: every ``fix`` an error gives names something that exists.

Reads each ``SlimlineError(problem, fix)`` raised in src/ (the fix argument's literal text,
f-string parts included) and checks what it names: each ``--flag`` is an option of some
``slimline`` command, each `` `slimline CMD ...` `` is a command, and each ``name(..., kw=...)`` of a
function in src/ is one of its keywords. A bare ``kw=True`` with no function is refused: a CLI
user has nowhere to pass it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click
import typer

from slimline import errors
from slimline.cli import app

SRC = Path(__file__).resolve().parents[2] / "src" / "slimline"
ERRORS = {
    n
    for n, c in vars(errors).items()
    if isinstance(c, type) and issubclass(c, errors.SlimlineError)
}
FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)")
COMMAND = re.compile(r"`slimline ([a-z][a-z0-9 -]*)")
CALL = re.compile(r"\b([A-Za-z_][\w.]*)\(([^()]*)\)")
KW = re.compile(r"\b([a-z_][a-z0-9_]*)=")
BARE_KW = re.compile(
    r"\b(?P<kw>[a-z_][a-z0-9_]*)=(?:True|False|None)\b"
    r"(?: to `?(?P<to>[A-Za-z_][\w.]*)| \((?P<flag>--[a-z][a-z0-9-]*)\))?"
)


def _text(node: ast.AST) -> str:
    """The literal text of a str constant or f-string (formatted values become ``{}``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_text(v) if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _text(node.left) + _text(node.right)
    if isinstance(node, ast.IfExp):
        return _text(node.body) + " " + _text(node.orelse)
    return ""


def fix_strings() -> list[tuple[str, str]]:
    """(file:line, fix text) for every SlimlineError constructed in src/."""
    found = []
    for f in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else None
            name = node.func.id if isinstance(node.func, ast.Name) else name
            if name not in ERRORS:
                continue
            fix = node.args[1] if len(node.args) > 1 else None
            fix = next((k.value for k in node.keywords if k.arg == "fix"), fix)
            if fix is not None and (text := _text(fix)):
                found.append((f"{f.relative_to(SRC)}:{node.lineno}", text))
    return found


def cli_tree() -> tuple[click.Command, set[str]]:
    root = typer.main.get_command(app)
    flags: set[str] = set()

    def walk(cmd: click.Command) -> None:
        for p in cmd.params:
            flags.update(o[2:] for o in (*p.opts, *p.secondary_opts) if o.startswith("--"))
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(root)
    return root, flags


def functions() -> dict[str, set[str]]:
    """Every module-level function and class in src/ with the keyword arguments it takes; under
    ``""`` every config field (a class attribute with a type: settable in a config or recipe)."""
    out: dict[str, set[str]] = {"": set()}
    for f in SRC.rglob("*.py"):
        tree = ast.parse(f.read_text())
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = {x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)}
                out.setdefault(node.name, set()).update(names)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):  # pydantic/dataclass fields
                fields = {
                    t.target.id
                    for t in node.body
                    if isinstance(t, ast.AnnAssign) and isinstance(t.target, ast.Name)
                }
                out.setdefault(node.name, set()).update(fields)
                out[""].update(fields)
    return out


def problems_in(text: str, root: click.Command, flags: set[str], funcs: dict[str, set[str]]):
    bad = []
    external = re.search(r"\bpip\b|reinstall", text)  # flags of pip, not of slimline
    for flag in [] if external else FLAG.findall(text):
        if flag not in flags:
            bad.append(f"--{flag} is not an option of any slimline command")
    for words in COMMAND.findall(text):
        cmd: click.Command = root
        for w in words.split():
            subs = getattr(cmd, "commands", None)
            if not subs:
                break  # the rest are arguments
            if w not in subs:
                bad.append(f"`slimline {words.strip()}`: no command {w!r}")
                break
            cmd = subs[w]
    rest = text
    for fn, args in CALL.findall(text):
        short = fn.rsplit(".", 1)[-1]
        for kw in KW.findall(args):
            if short in funcs and kw not in funcs[short]:
                bad.append(f"{short}() takes no argument {kw!r}")
        rest = rest.replace(f"{fn}({args})", "")
    for m in BARE_KW.finditer(rest):
        kw, to = m["kw"], (m["to"] or "").rsplit(".", 1)[-1]
        if to:  # "pass kw=True to load_model"
            if kw not in funcs.get(to, set()):
                bad.append(f"{to}() takes no argument {kw!r}")
        elif not m["flag"] and kw not in funcs[""]:  # "(--flag)" is checked as a flag above
            bad.append(f"{m[0]!r} names no function or config field to set it in")
    return bad


def test_the_checker_catches_what_issue_16_found():
    root, flags = cli_tree()
    funcs = functions()
    for hint in (
        "pass the text field's name with --field",
        "pass allow_unsafe_pickle=True (--unsafe-pickle) if you trust the file",
        "see `slimline methods` for the fields",
        "choose a new directory, or pass overwrite=True to replace an existing artifact",
    ):
        assert problems_in(hint, root, flags, funcs), hint
    for hint in (
        "see `slimline techniques quant.gptq` for the fields",
        "from Python: save_artifact(..., overwrite=True) replaces an artifact",
        "or pass allow_unsafe_pickle=True to load_model if you trust the file",
        "lower --calib-samples",
        "`slimline registry promote NAME@N ALIAS`",
    ):
        assert not problems_in(hint, root, flags, funcs), hint


def test_every_fix_in_src_names_a_real_flag_command_or_argument():
    root, flags = cli_tree()
    funcs = functions()
    found = fix_strings()
    assert len(found) > 150  # the scan reads the source: measured 300+ fixes
    bad = [f"{where}: {p}" for where, text in found for p in problems_in(text, root, flags, funcs)]
    assert not bad, "\n".join(bad)
