"""Render a run's report.html in headless Chromium and save a PNG screenshot, to check by eye
that the report reads well (plots visible, tables not overflowing).

    python bench/report_screenshot.py runs/default            # the default recipe's run dir
    python bench/report_screenshot.py RUN_DIR -o shot.png --height 4000
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("no Chromium found: apt-get install -y chromium")


def screenshot(html: Path, out: Path, width: int = 1200, height: int = 3000) -> Path:
    """Headless, sandbox off (containers), no GPU, no network: the report is self-contained."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={out.resolve()}",
            html.resolve().as_uri(),
        ]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    if not out.exists():
        sys.exit(f"chromium wrote no screenshot to {out}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, nargs="?", default=Path("runs/default"))
    ap.add_argument("-o", "--out", type=Path, default=None)
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=3000)
    a = ap.parse_args()
    html = a.run_dir / "report.html"
    if not html.exists():
        sys.exit(f"{html} does not exist: run `slimline run` first (or write_report(RUN_DIR))")
    out = a.out or a.run_dir / "report.png"
    print(screenshot(html, out, a.width, a.height))


if __name__ == "__main__":
    main()
