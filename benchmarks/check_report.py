"""Renders a run report in headless Chromium and checks the screenshot is a real page.

Usage::

    python benchmarks/check_report.py out/demo/report.html /tmp/report.png

Needs ``chromium`` (``apt-get install -y chromium``). Exits 0 and prints a JSON line when
the page rendered with its plots (a tall, non-blank screenshot); 1 otherwise. Look at the
PNG with an image viewer to see the report as a user would.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image


def render(html_path: str, png_path: str, timeout_s: float = 60.0) -> None:
    """Screenshots ``html_path`` (1300×2000 window) into ``png_path`` with headless Chromium."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise FileNotFoundError("chromium is not installed; apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
             "--hide-scrollbars", "--window-size=1300,2000", f"--screenshot={os.path.abspath(png_path)}",
             "file://" + os.path.abspath(html_path)],
            check=True, capture_output=True, timeout=timeout_s,
        )


def main(argv) -> int:
    html_path, png_path = argv[1], argv[2]
    render(html_path, png_path)
    pixels = np.asarray(Image.open(png_path).convert("L"), dtype=np.float32)
    dark_rows = int((pixels.min(axis=1) < 128).sum())  # rows with text or plot ink
    ok = pixels.std() > 10 and dark_rows > 200
    print(json.dumps({"screenshot": png_path, "size": list(pixels.shape[::-1]),
                      "pixel_std": round(float(pixels.std()), 2), "rows_with_ink": dark_rows, "ok": bool(ok)}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
