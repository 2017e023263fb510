"""The browser-test infrastructure itself (tests/support/browser.py): Debian's Chromium starts
headless under Playwright and loads a page from a real `genai serve` (no Triton); axe-core
passes a labelled form and fails an unlabelled input; sign_in fills and sends a stand-in of
the console's sign-in form; screenshots land in test-artifacts/console/ at each viewport
preset."""

from collections.abc import Iterator
from urllib.parse import parse_qs

import pytest
from playwright.sync_api import Page, Route

from benchmarks.browser import CHROMIUM
from tests.support.browser import (
    ARTIFACTS,
    VIEWPORTS,
    Viewport,
    assert_accessible,
    axe_violations,
    base_url,
    save_screenshot,
    sign_in,
)
from tests.support.serve import ServeProcess, genai_serve

pytestmark = pytest.mark.browser

LABELLED_FORM = """<!doctype html>
<html lang="en">
  <head><meta charset="utf-8"><title>Sign in</title></head>
  <body>
    <main>
      <h1>Sign in</h1>
      <form method="post" action="/console/session">
        <label for="key">API key</label>
        <input id="key" name="key" type="password" autocomplete="off">
        <button type="submit">Sign in</button>
      </form>
    </main>
  </body>
</html>"""

UNLABELLED_INPUT = LABELLED_FORM.replace('<label for="key">API key</label>', "")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A `genai serve` with no Triton behind it: its HTTP port answers without models."""
    with genai_serve(tmp_path_factory.mktemp("browser-smoke")) as serve:
        yield serve


def test_chromium_loads_a_page_of_genai_serve(page: Page, served: ServeProcess) -> None:
    response = page.goto(f"{base_url(served)}/v1/models")
    assert response is not None
    # No API key: the gateway refuses with a JSON error, which the browser shows as it came.
    assert response.status == 401, response.text()
    assert response.headers["content-type"].startswith("application/json")
    assert "HeadlessChrome" in page.evaluate("() => navigator.userAgent")
    assert page.context.browser is not None
    print(f"{CHROMIUM}: Chromium {page.context.browser.version}")


def test_axe_passes_a_labelled_form(page: Page) -> None:
    page.set_content(LABELLED_FORM)
    assert axe_violations(page) == []
    assert_accessible(page)


def test_axe_reports_an_unlabelled_input(page: Page) -> None:
    page.set_content(UNLABELLED_INPUT)
    violations = axe_violations(page)
    assert [v.id for v in violations] == ["label"], violations
    (label,) = violations
    assert label.impact == "critical"
    assert label.targets == ("#key",)
    assert label.help_url.startswith("https://dequeuniversity.com/rules/axe/")
    with pytest.raises(AssertionError, match=r"critical label: .* at #key"):
        assert_accessible(page)
    # Only the impacts asked for: a `label` violation is critical, not minor.
    assert axe_violations(page, impacts=("minor",)) == []


def test_sign_in_fills_the_api_key_and_presses_sign_in(page: Page) -> None:
    """Against a stand-in of the console's sign-in page (the real one is for the console's own
    tests): the form posts the key, and the answer leaves the sign-in page."""
    posted: list[str] = []

    def console(route: Route) -> None:
        request = route.request
        if request.method == "POST":
            posted.extend(parse_qs(request.post_data or "")["key"])
            route.fulfill(body="<title>Console</title>", content_type="text/html")
        else:
            route.fulfill(body=LABELLED_FORM, content_type="text/html")

    page.route("http://console.test/**", console)
    sign_in(page, "http://console.test", "sk-test-123")
    assert posted == ["sk-test-123"]
    assert page.url == "http://console.test/console/session"
    assert page.title() == "Console"


@pytest.mark.parametrize("viewport", VIEWPORTS, ids=str)
def test_full_page_screenshot_at_each_viewport(page: Page, viewport: Viewport) -> None:
    page.set_content(LABELLED_FORM)
    assert page.viewport_size == viewport.size
    path = save_screenshot(page, f"smoke/{viewport}")
    assert path.parent == ARTIFACTS
    assert path.name == f"smoke_{viewport}.png"
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # Full page: as wide as the viewport, at least as tall (device scale factor 1).
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width == viewport.width
    assert height >= viewport.height
