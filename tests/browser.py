"""Open an HTML file in headless Debian Chromium (selenium + chromedriver) and inspect it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,2000",
)


def inspect_page(html: Path, screenshot: Path) -> dict:
    """Load ``html``; return image counts and console errors; write a PNG screenshot."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and shutil.which(CHROMEDRIVER)):
        raise RuntimeError(
            "Debian's chromium and chromium-driver are needed (apt-get install chromium "
            "chromium-driver); .ci/run installs them."
        )
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="vitquant-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.get(Path(html).resolve().as_uri())
        driver.execute_script(
            "return Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))"
        )
        counts = driver.execute_script(
            "const imgs = Array.from(document.images);"
            "return {total: imgs.length,"
            " decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,"
            " title: document.title};"
        )
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return {**counts, "console_errors": errors}
