"""The dashboard in a real browser: `hashbench dashboard` served, Debian's chromium driven by Playwright.

Needs /usr/bin/chromium. When it is missing and the tests run as root with apt-get available, the
session installs it (`apt-get install -y chromium`); otherwise the test is skipped with the reason.
Never `playwright install` (it downloads its own browser build).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import test_dashboard_fixture as F
from test_dashboard_server import served

CHROMIUM = Path("/usr/bin/chromium")
CHART = '[data-testid="stPlotlyChart"] .js-plotly-plot .main-svg'
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium, installed with apt-get when possible; skip (with why) when not."""
    pytest.importorskip("playwright.sync_api", reason="Playwright for Python missing: pip install -e '.[dev]'")
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and cannot be installed here (needs root and apt-get): "
                    "run `apt-get install -y chromium`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "install", "-y", "chromium"], env=env, capture_output=True, text=True,
                          timeout=900)
    if done.returncode != 0 or not CHROMIUM.exists():  # the package lists may be stale: refresh once
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=300)
        done = subprocess.run(["apt-get", "install", "-y", "chromium"], env=env, capture_output=True,
                              text=True, timeout=900)
    if done.returncode != 0 or not CHROMIUM.exists():
        pytest.skip(f"`apt-get install -y chromium` failed: {done.stderr.strip()[-300:]}")
    return CHROMIUM


@pytest.mark.timeout(240)
def test_dashboard_in_chromium(chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    fx = F.build(tmp_path / "fixture")
    t0 = time.monotonic()
    with served(fx.leaderboard, tmp_path, {"HASHBENCH_DATA": str(fx.data_home)}) as server, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(server.url)
            page.wait_for_selector('[data-testid="stDataFrame"]', timeout=60_000)  # the leaderboard table
            page.screenshot(path=str(tmp_path / "leaderboard.png"), full_page=True)
            page.get_by_text("Across code lengths", exact=True).click()
            page.wait_for_selector(CHART, timeout=60_000)
            page.wait_for_function(
                "() => document.querySelectorAll('[data-testid=\"stPlotlyChart\"] .js-plotly-plot').length >= 2",
                timeout=60_000)
            elapsed = time.monotonic() - t0
            traces = page.evaluate("() => document.querySelector('[data-testid=\"stPlotlyChart\"] "
                                   ".js-plotly-plot').data.length")
            drawn = page.locator('[data-testid="stPlotlyChart"]').first.locator(".scatterlayer .trace").count()
            page.screenshot(path=str(tmp_path / "across_code_lengths.png"), full_page=True)
            body = page.inner_text("body")
            deploy = page.get_by_text("Deploy", exact=True).count()
        finally:
            browser.close()
    n_lines = len(F.METHODS) * len(F.DATASETS)  # one line per method in each dataset panel
    assert traces == n_lines and drawn == n_lines
    assert "Traceback" not in body and "broken.parquet" in body  # the corrupt file is named, not fatal
    assert deploy == 0  # client.toolbarMode=minimal: no "Deploy" button
    assert (tmp_path / "across_code_lengths.png").stat().st_size > 10_000
    print(f"\nbrowser test: server start to {n_lines}-trace chart in {elapsed:.1f} s; "
          f"screenshots in {tmp_path}")
