"""Debian's Chromium driven by Playwright (never ``playwright install``: no browser is downloaded),
with every console error and uncaught exception of a page collected, and screenshots saved under
``tests/artifacts/``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Watched:
    """A page and what went wrong on it: console errors and uncaught exceptions."""

    page: Page
    errors: list[str] = field(default_factory=list)
    #: Confirmations the test expects (a page's "Delete?"): accepted; any other dialog is an error.
    confirms: list[str] = field(default_factory=list)

    def unexpected(self, *allowed: str) -> list[str]:
        """The errors none of the ``allowed`` patterns (regular expressions) matches."""
        return [e for e in self.errors if not any(re.search(pattern, e) for pattern in allowed)]

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@contextmanager
def watched_page(browser: Browser, **context_options: object) -> Iterator[Watched]:
    """A page in a fresh context (its own storage), its console errors and page errors collected."""
    context = browser.new_context(**context_options)  # type: ignore[arg-type]
    page = context.new_page()
    watched = Watched(page)

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            watched.errors.append(f"{message.text} ({message.location.get('url', '')})")

    page.on("console", console)
    page.on("pageerror", lambda error: watched.errors.append(f"uncaught: {error}"))

    def dialog(box: Dialog) -> None:
        if box.type == "confirm" and any(re.search(p, box.message) for p in watched.confirms):
            box.accept()
        else:
            watched.errors.append(f"dialog: {box.type} {box.message}")
            box.dismiss()

    page.on("dialog", dialog)
    try:
        yield watched
    finally:
        context.close()
