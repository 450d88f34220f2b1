"""The report's evaluation-suite section: the verdict table (metric, value, limit, passed) and
the reliability diagram, from a real tiny run; and the report never imports the recipe area."""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

import pytest

import slimline.report
from slimline.eval.cloze import Calibration, Cloze
from slimline.eval.suites import SUITES, Suite
from slimline.eval.tail import Tail
from slimline.report import SECTIONS, model_card

TINY = Suite(
    "tiny-report",
    (
        Tail(datasets=("python-docs",), windows=1, seq_len=32),
        Cloze(sources=("python-docs",), n=4),
        Calibration(),
    ),
    ("kl/p99/* <= 50", "flip/cloze-* <= 1"),
)


def _pngs(html: str) -> list[bytes]:
    return [
        base64.b64decode(m)
        for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    ]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished tiny run whose recipe names the suite, plus a failing extra gate."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "recipe"))
    import helpers

    from slimline.recipe import parse_recipe, run_recipe

    tmp = tmp_path_factory.mktemp("suite-report")
    mp = pytest.MonkeyPatch()
    mp.setitem(SUITES, TINY.name, TINY)
    mp.setenv("SLIMLINE_HOME", str(tmp / "home"))
    try:
        model = helpers.save_tiny(tmp / "m")
        rec = helpers.tiny_recipe(model, [{"test.rtn": {"bits": 4}}])
        rec["eval"].update(latency=None, suite=TINY.name, gates=["kl/p99/* <= 0"])
        run_recipe(parse_recipe(rec), tmp / "run")
    finally:
        mp.undo()
    return tmp / "run"


def test_card_shows_every_verdict_of_the_suite(run_dir):
    card = (run_dir / "MODEL_CARD.md").read_text()
    assert re.findall(r"^## (.+)$", card, flags=re.M) == list(SECTIONS)
    section = card.split("## Evaluation suite")[1].split("\n## ")[0]
    assert "Suite `tiny-report`" in section and "2 of 3 gates passed" in section
    assert "failed: `kl/p99/python-docs`." in section
    rows = [r for r in section.splitlines() if r.startswith("| `")]
    assert len(rows) == 3
    failing = next(r for r in rows if "(recipe)" in r)
    assert failing.startswith("| `kl/p99/python-docs` |") and failing.endswith("| **no** |")
    assert "| `kl/p99/* <= 50` | yes |" in section
    assert "figure: `suite/reliability-cloze.png`" in section
    # the card is rebuilt from run.json alone
    assert model_card(json.loads((run_dir / "run.json").read_text())) == card


def test_html_has_the_verdict_table_and_the_reliability_diagram(run_dir):
    html = (run_dir / "report.html").read_text()
    part = html.split("<h2>Evaluation suite</h2>")[1].split("<h2>")[0]
    assert "<code>tiny-report</code>" in part and "2 of 3 gates passed" in part
    assert part.count("<tr><td><code>") == 3
    assert '<td class="missed">no</td>' in part and '<td class="met">yes</td>' in part
    (png,) = _pngs(part)
    assert png.startswith(b"\x89PNG")
    assert png == (run_dir / "suite" / "reliability-cloze.png").read_bytes()


def test_a_run_without_a_suite_says_so():
    state = {
        "recipe": {"name": "x", "model": "m"},
        "baseline": {"metrics": {}},
        "stages": [],
    }
    card = model_card(state)
    assert "No evaluation suite ran" in card.split("## Evaluation suite")[1]


def test_the_report_never_imports_the_recipe_area():
    # dependency arrows: recipe -> report, never back
    root = Path(slimline.report.__file__).parent
    for f in root.glob("*.py"):
        assert not re.search(r"^\s*(from|import) slimline\.recipe", f.read_text(), re.M), f.name
