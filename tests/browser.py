"""Headless Chromium for the tests that open HTML pages: Debian's `chromium`, driven by Playwright
(which downloads no browser here). Console errors and page errors of every page are collected."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


needs_chromium = pytest.mark.skipif(
    chromium() is None, reason="Debian's chromium is not installed (make test installs it)"
)


@contextlib.contextmanager
def browser_pages():
    """Yield (new_page, errors): `new_page(width, height)` opens a page; `errors` collects what
    any page logs as a console error or throws. Screenshots go to `ARTIFACTS`."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])

        def new_page(width: int = 1100, height: int = 800):
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            return page

        try:
            yield new_page, errors
        finally:
            browser.close()
