"""Opening a page in headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium) and reading back what the browser rendered."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

# What the page shows once loaded: each figure's image as decoded by the browser, each
# table's body rows, the section ids, the resources it fetched (none when self-contained),
# and each timeline's bars as laid out (their widths) with their classes and scores.
_READ_PAGE = """
const figures = {};
for (const figure of document.querySelectorAll('figure')) {
  const image = figure.querySelector('img');
  figures[figure.id] = {complete: image.complete, width: image.naturalWidth,
                        height: image.naturalHeight,
                        shown: image.getBoundingClientRect().width};
}
const tables = {};
for (const table of document.querySelectorAll('table')) {
  tables[table.id] = Array.from(table.querySelectorAll('tbody tr'),
                                row => Array.from(row.cells, cell => cell.textContent));
}
return {title: document.title, figures: figures, tables: tables,
        sections: Array.from(document.querySelectorAll('section'), s => s.id),
        config: (document.querySelector('#config pre') || {}).textContent || '',
        fetched: performance.getEntriesByType('resource').map(entry => entry.name),
        scripts: document.scripts.length, images: document.images.length,
        timelines: Array.from(document.querySelectorAll('svg.timeline'), svg => ({
          video: svg.getAttribute('aria-label'),
          bars: Array.from(svg.querySelectorAll('rect.bar'),
                           bar => bar.getBoundingClientRect().width),
          labels: Array.from(svg.querySelectorAll('rect.bar'), bar => bar.dataset.label),
          scores: svg.querySelectorAll('text.score').length})),
        legend: document.querySelectorAll('.legend-item').length};
"""


def browser_or_skip() -> None:
    """Skips without Chromium, unless LOFIPIPE_REQUIRE_BROWSER=1 (CI), which fails."""
    if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists():
        return
    message = f"{CHROMIUM} or {CHROMEDRIVER} missing (make browser installs them)"
    if os.environ.get("LOFIPIPE_REQUIRE_BROWSER") == "1":
        pytest.fail(message)
    pytest.skip(message)


def render(page: Path, screenshot: Path | None = None) -> dict:
    """Loads `page` (a local file) in headless Chromium; returns what it rendered."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser_or_skip()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # No sandbox as root; no background traffic (this machine has no network).
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--window-size=1280,2000",
    ):
        options.add_argument(flag)
    with tempfile.TemporaryDirectory() as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            driver.set_page_load_timeout(60)
            driver.get(page.resolve().as_uri())
            seen = driver.execute_script(_READ_PAGE)
            if screenshot:
                driver.save_screenshot(str(screenshot))
        finally:
            driver.quit()
    return seen
