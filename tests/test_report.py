"""The HTML report opens in headless Chromium: no console errors, every listed plot decodes."""

from __future__ import annotations

import json
import subprocess
import sys

from browser import inspect_page


def test_report_loads_in_chromium_with_every_plot(forced_qat_pipeline):
    run = forced_qat_pipeline
    proc = subprocess.run([sys.executable, "-m", "vitquant", "report", str(run)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    listed = json.loads((run / "report.json").read_text())
    pngs = sorted(str(p.relative_to(run)) for p in run.rglob("*.png"))
    assert sorted(listed["plots"]) == pngs
    assert listed["n_plots"] >= 8
    html = (run / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # self-contained
    assert "vitquant pipeline digits_vit" in html  # the reproducing command is shown
    page = inspect_page(run / "report.html", run / "report_screenshot.png")
    assert page["console_errors"] == []
    assert page["total"] == page["decoded"] == listed["n_plots"]
    assert (run / "report_screenshot.png").stat().st_size > 10_000
