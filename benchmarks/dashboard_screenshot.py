#!/usr/bin/env python
"""Screenshot one view of the dashboard in a real browser (Debian's chromium driven by Playwright).

    python benchmarks/dashboard_screenshot.py --leaderboard runs/compare/leaderboard --view Compare \
        --out compare.png [--env HASHBENCH_DATA=/path/to/stores]

Serves ``hashbench dashboard --leaderboard LB`` on a free loopback port, opens it in headless chromium
(``/usr/bin/chromium``: ``apt-get install -y chromium``; never ``playwright install``), selects the view in
the sidebar, waits until its plotly charts have drawn and saves a full-page PNG. Prints the page's text
(``--text``) so that what the browser showed can be described without opening the image.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

CHROMIUM = "/usr/bin/chromium"
CHART = '[data-testid="stPlotlyChart"] .js-plotly-plot .main-svg'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the dashboard exited with {proc.returncode} before it served {url}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the dashboard did not answer at {url} within {seconds:.0f} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--leaderboard", required=True)
    p.add_argument("--view", default="Compare", help="sidebar view label (e.g. Leaderboard, Compare)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment of the server")
    p.add_argument("--text", action="store_true", help="also print the page's visible text")
    args = p.parse_args(argv)
    if not os.path.exists(CHROMIUM):
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    env = {**os.environ, **dict(kv.split("=", 1) for kv in args.env)}
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "hashbench", "dashboard", "--leaderboard", args.leaderboard,
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        _wait_healthy(url, proc, 90)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(url)
            page.wait_for_selector('[data-testid="stSidebar"]', timeout=60_000)
            page.locator('[data-testid="stSidebar"] label').filter(has_text=args.view).first.click()
            page.wait_for_selector(CHART, timeout=60_000)
            time.sleep(3)  # let every chart of the view finish drawing
            page.screenshot(path=args.out, full_page=True)
            if args.text:
                print(page.locator('[data-testid="stMain"]').inner_text())
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
