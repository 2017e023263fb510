"""Headless Chromium for the console's browser tests: Debian's `chromium` (apt, installed by
`scripts/setup browser`) driven through Playwright's sync API, never a browser build that
Playwright downloads; axe-core (npm, `node_modules/axe-core`) for accessibility checks;
full-page screenshots kept in `test-artifacts/console/` at the repo root; the console's sign-in.

    with launch_chromium() as browser, new_page(browser, TABLET) as page:
        sign_in(page, base_url(serve), serve.api_key)
        assert_accessible(page)
        save_screenshot(page, "models-tablet")
"""

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from playwright.sync_api import Browser, Page, ViewportSize, sync_playwright

from benchmarks.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.serve import ROOT, ServeProcess

AXE_JS: Final = ROOT / "node_modules" / "axe-core" / "axe.min.js"
"""axe-core, a devDependency in package.json (`scripts/setup node` installs it)."""

ARTIFACTS: Final = ROOT / "test-artifacts" / "console"
"""Where screenshots go; `test-artifacts/` ignores itself (it holds a `.gitignore` of `*`)."""

DEFAULT_TIMEOUT_MS: Final = 15_000
"""Playwright's timeout for each action and navigation (its own default is 30 s)."""


@dataclass(frozen=True)
class Viewport:
    """A named browser window size, in CSS pixels."""

    name: str
    width: int
    height: int

    @property
    def size(self) -> ViewportSize:
        return {"width": self.width, "height": self.height}

    def __str__(self) -> str:
        return f"{self.name}-{self.width}x{self.height}"


LAPTOP: Final = Viewport("laptop", 1366, 768)
TABLET: Final = Viewport("tablet", 820, 1180)
VIEWPORTS: Final = (LAPTOP, TABLET)
"""The presets the console is checked at, e.g. `@pytest.mark.parametrize("viewport", VIEWPORTS,
ids=str)` over the `page` fixture of tests/browser."""


def base_url(serve: ServeProcess) -> str:
    """`http://127.0.0.1:PORT` of a `genai serve`'s HTTP port (the console is under
    `/console`, the OpenAI-compatible API under `/v1`)."""
    assert serve.http_port, "genai serve did not say its HTTP port"
    return f"http://127.0.0.1:{serve.http_port}"


def chromium_missing() -> str | None:
    """Why the browser cannot start (a sentence naming the fix), or None when it can."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing: run scripts/setup browser (apt package chromium)"
    if not AXE_JS.is_file():
        return f"{AXE_JS.relative_to(ROOT)} is missing: run scripts/setup node"
    return None


@contextmanager
def launch_chromium(*, slow_mo_ms: float = 0) -> Iterator[Browser]:
    """Starts Playwright and a headless CHROMIUM with CHROMIUM_ARGS; closes both on exit."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=list(CHROMIUM_ARGS),
            slow_mo=slow_mo_ms,
            timeout=60_000,
        )
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def new_page(browser: Browser, viewport: Viewport = LAPTOP) -> Iterator[Page]:
    """A page in a context of its own (fresh cookies and storage) at `viewport`, its actions
    and navigations timing out after DEFAULT_TIMEOUT_MS; the context is closed on exit."""
    context = browser.new_context(viewport=viewport.size, locale="en-US", timezone_id="UTC")
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    context.set_default_navigation_timeout(DEFAULT_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def sign_in(page: Page, base: str, api_key: str, *, expect_success: bool = True) -> None:
    """Signs in to the console at `base` (`http://HOST:PORT`, see base_url) the way a person
    does: opens `/console/sign-in`, fills the field labelled "API key" and presses the button
    named "Sign in". With `expect_success`, waits until the browser has left the sign-in page;
    without, returns once the form is sent (to check a refused key's message)."""
    page.goto(f"{base}/console/sign-in")
    page.get_by_label("API key", exact=True).fill(api_key)
    page.get_by_role("button", name="Sign in", exact=True).click()
    if expect_success:
        page.wait_for_url(lambda url: "/console/sign-in" not in url)
    else:
        page.wait_for_load_state()


# ----------------------------------------------------------------------------------- axe-core


@dataclass(frozen=True)
class AxeViolation:
    """One axe-core rule that the page breaks, and where."""

    id: str
    """The rule, e.g. `label` or `color-contrast`."""
    impact: str
    """minor, moderate, serious or critical."""
    help: str
    help_url: str
    targets: tuple[str, ...]
    """A CSS selector for each offending element (frames and shadow roots joined by ` >>> `)."""

    def __str__(self) -> str:
        return (
            f"{self.impact} {self.id}: {self.help} ({self.help_url}) at {', '.join(self.targets)}"
        )


_RUN_AXE: Final = """async (impacts) => {
    const results = await axe.run(document, { resultTypes: ["violations"] });
    return results.violations
        .filter((v) => impacts.includes(v.impact))
        .map((v) => ({
            id: v.id,
            impact: v.impact,
            help: v.help,
            help_url: v.helpUrl,
            targets: v.nodes.map((n) => n.target.map((t) => [].concat(t).join(" >>> ")).join(" >>> ")),
        }));
}"""


def axe_violations(
    page: Page, impacts: Sequence[str] = ("serious", "critical")
) -> list[AxeViolation]:
    """Runs axe-core (its default rules: WCAG 2.x A/AA and best practices) on the page as it is
    now and returns the violations whose impact is one of `impacts`. axe is injected into
    every frame that lacks it, through the DevTools protocol, which the page's
    Content-Security-Policy does not govern."""
    source = AXE_JS.read_text(encoding="utf-8")
    for frame in page.frames:
        if not frame.evaluate("() => typeof window.axe === 'object'"):
            frame.evaluate(f"() => {{\n{source}\n}}")
    found: list[dict[str, Any]] = page.evaluate(_RUN_AXE, list(impacts))
    return [
        AxeViolation(
            id=v["id"],
            impact=v["impact"],
            help=v["help"],
            help_url=v["help_url"],
            targets=tuple(v["targets"]),
        )
        for v in found
    ]


def assert_accessible(page: Page, impacts: Sequence[str] = ("serious", "critical")) -> None:
    """Fails, listing each one, when axe_violations finds violations of `impacts`."""
    violations = axe_violations(page, impacts)
    assert not violations, f"axe-core found {len(violations)} violation(s) on {page.url}:\n" + (
        "\n".join(f"  {v}" for v in violations)
    )


# -------------------------------------------------------------------------------- screenshots


def artifacts_dir() -> Path:
    """ARTIFACTS, created, with `test-artifacts/.gitignore` keeping it out of git."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    ignore = ARTIFACTS.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# Test output (tests/support/browser.py): never committed.\n*\n")
    return ARTIFACTS


def save_screenshot(page: Page, name: str) -> Path:
    """Saves a full-page PNG of the page as `test-artifacts/console/NAME.png` (characters other
    than letters, digits, `.`, `_` and `-` in NAME become `_`), prints where, returns the path."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "screenshot"
    path = artifacts_dir() / f"{safe}.png"
    page.screenshot(path=path, full_page=True)
    print(f"screenshot: {path}")
    return path
