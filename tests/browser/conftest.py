"""The playground (web/) in headless Chromium, against the local stack that serves it.

The browser is Debian's ``chromium`` (``/usr/bin/chromium``; ``.ci/run`` installs it), driven
by the ``playwright`` package: Playwright's own browser download cannot be fetched here.
``IMAGEGEN_CHROMIUM`` names another executable.

Every page records what went wrong while it was open: console errors, uncaught exceptions,
failed requests and HTTP errors. A test fails on any of them unless it said which response
it expects (``PageWatch.expect``).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from tests.e2e.local_stack_harness import Harness

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO_ROOT / "out" / "screenshots"


def chromium_path() -> str:
    configured = os.environ.get("IMAGEGEN_CHROMIUM")
    found = configured or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail(
            "no chromium: `apt-get install -y chromium` (.ci/run does), or set IMAGEGEN_CHROMIUM"
        )
    return found


@pytest.fixture
def stack(harness: Harness) -> Harness:
    """This test's owner on the shared stack: the page uses its key, so the page and the
    harness's own requests are one caller (one job list)."""
    return harness


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        launched = playwright.chromium.launch(
            executable_path=chromium_path(), args=["--no-sandbox"]
        )
        yield launched
        launched.close()


@dataclass
class PageWatch:
    """What went wrong on a page; ``expect`` excuses responses a test provokes on purpose."""

    problems: list[str] = field(default_factory=list)
    expected: list[tuple[str, int]] = field(default_factory=list)

    def expect(self, method_and_path: str, status: int) -> None:
        self.expected.append((method_and_path, status))

    def on_console(self, message: Any) -> None:
        if message.type == "error" and not self._expected_failure_log(message.text):
            self.problems.append(f"console error: {message.text}")

    def on_page_error(self, error: Any) -> None:
        self.problems.append(f"uncaught exception: {error}")

    def on_request_failed(self, request: Any) -> None:
        self.problems.append(f"request failed: {request.method} {request.url}: {request.failure}")

    def on_response(self, response: Any) -> None:
        if response.status < 400:
            return
        path = re.sub(r"^https?://[^/]+", "", response.url).split("?")[0]
        for method_and_path, status in self.expected:
            method, pattern = method_and_path.split(" ", 1)
            if (
                response.request.method == method
                and re.fullmatch(pattern, path)
                and response.status == status
            ):
                return
        self.problems.append(f"HTTP {response.status}: {response.request.method} {response.url}")

    def _expected_failure_log(self, text: str) -> bool:
        # Chromium logs every 4xx answer of fetch() as "Failed to load resource"; an expected
        # one is checked by on_response instead.
        return bool(self.expected) and text.startswith("Failed to load resource")


@pytest.fixture
def watch() -> PageWatch:
    return PageWatch()


@pytest.fixture
def page(browser: Any, stack: Harness, watch: PageWatch) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    # The harness's key: the page and the harness's own requests are one caller (one job list).
    context.add_init_script(f"localStorage.setItem('imagegen.apiKey', {stack.api_key!r})")
    opened = context.new_page()
    opened.on("console", watch.on_console)
    opened.on("pageerror", watch.on_page_error)
    opened.on("requestfailed", watch.on_request_failed)
    opened.on("response", watch.on_response)
    opened.set_default_timeout(30_000)
    yield opened
    problems = list(watch.problems)  # closing aborts what is in flight: not the page's fault
    context.close()
    assert not problems, "\n".join(problems)
