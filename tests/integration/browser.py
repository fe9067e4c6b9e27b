"""Real headless Chromium for the web page tests: the system's browser
(Debian's `chromium`), driven by Python playwright; never a downloaded
browser. Tests skip with the reason when either is missing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

try:
    from playwright.async_api import Browser, async_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    async_playwright = None  # type: ignore[assignment]

# Screenshots for people to look at (git-ignored; CI may keep them).
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
# Bounds on waits for something to appear: generous, never asserted on.
WAIT_MS = 20_000


def chromium_path() -> str | None:
    explicit = os.environ.get("COFFEECHAT_CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(name="browser")
async def browser_fixture() -> AsyncIterator[Any]:
    if async_playwright is None:
        pytest.skip("Python playwright is not installed (pip install playwright; no browser download needed)")
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium installed (apt-get install chromium, or set COFFEECHAT_CHROMIUM)")
    async with async_playwright() as p:
        b: Browser = await p.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            await b.close()


async def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
