"""The HTML report opens in headless Chromium: no console errors, every listed plot decodes."""

from __future__ import annotations

import json
import subprocess
import sys

from browser import inspect_page


def test_report_loads_in_chromium_with_every_plot(forced_qat_pipeline):
    run = forced_qat_pipeline
    proc = subprocess.run(
        [sys.executable, "-m", "vitquant", "report", str(run)],
        capture_output=True,
        text=True,
        timeout=300,
    )
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


def test_report_lists_each_results_table_with_its_notes(tmp_path):
    from vitquant.report.collect import collect
    from vitquant.report.html import render

    note = "static .pte: 6 XNNPACK subgraph(s); not lowered (portable kernels): cumsum x2"
    row = {"variant": "static", "backend": "executorch-xnnpack", "accuracy": 0.8131}
    (tmp_path / "edge").mkdir()
    (tmp_path / "edge" / "quantize.json").write_text(
        json.dumps({"command": "vitquant quantize m", "results": [row], "notes": [note, 3]})
    )
    html = render(collect(tmp_path))
    assert f"<li>{note}</li>" in html and "executorch-xnnpack" in html and "0.8131" in html
    assert "<li>3</li>" not in html  # only text remarks are listed
