"""Fixtures for the console's browser tests (marked `browser`): one headless Debian Chromium per
module, a fresh page (own cookies) per test at the `viewport` fixture's size, and a full-page
screenshot in test-artifacts/console/ of every page whose test failed.

    @pytest.mark.parametrize("viewport", VIEWPORTS, ids=str)
    def test_models_page(page: Page, viewport: Viewport) -> None: ...
"""

import signal
from collections.abc import Generator, Iterator

import pytest
from playwright.sync_api import Browser, Page

from services.inference.adapters.tritonserver import pick_free_ports
from tests.support.browser import LAPTOP, Viewport, chromium_missing, launch_chromium, new_page
from tests.support.browser import save_screenshot as _save_screenshot
from tests.support.serve import ServeProcess, genai_serve
from tests.support.triton import triton_installed

_CALL_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keeps each test's call-phase report on the item, for `page` to see whether it failed."""
    report = yield
    if report.when == "call":
        item.stash[_CALL_REPORT] = report
    return report


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium for the module. Fails (never skips) when Chromium or axe-core is
    missing: `scripts/setup` installs both on every machine."""
    missing = chromium_missing()
    if missing:
        pytest.fail(missing)
    with launch_chromium() as started:
        yield started


@pytest.fixture
def viewport() -> Viewport:
    """The page's window size: LAPTOP unless a test parametrizes `viewport`."""
    return LAPTOP


@pytest.fixture
def page(browser: Browser, viewport: Viewport, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A page of its own context at `viewport`; when its test fails, a full-page screenshot
    named after the test goes to test-artifacts/console/."""
    with new_page(browser, viewport) as opened:
        yield opened
        report = request.node.stash.get(_CALL_REPORT, None)
        if report is not None and report.failed and not opened.is_closed():
            _save_screenshot(opened, f"FAILED-{request.node.nodeid}")


@pytest.fixture(scope="session")
def console_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One real `genai serve` for every browser test: Triton with the CPU repository (SmolLM2,
    Gemma 3, MiniLM), the sample prompts seeded, API keys on, the console on its HTTP port.
    Tests that change what others see make names of their own (prompts, tenants)."""
    if not triton_installed():
        pytest.fail("tritonserver is missing (nvidia-pytriton): run scripts/setup python")
    (triton_metrics_port,) = pick_free_ports(1)
    env = {
        "GENAI_INFERENCE__TRITON__GRPC_PORT": "0",
        "GENAI_INFERENCE__TRITON__HTTP_PORT": "0",
        "GENAI_INFERENCE__TRITON__METRICS_PORT": str(triton_metrics_port),
    }
    workdir = tmp_path_factory.mktemp("console-serve")
    log = workdir / "genai-serve.log"  # a file: a pipe unread for minutes could fill and block
    with genai_serve(workdir, env=env, timeout=300, log_file=log) as serve:
        yield serve
        serve.process.send_signal(signal.SIGTERM)  # genai serve stops the Triton it started
        serve.process.wait(timeout=60)
        assert serve.process.returncode == 0, log.read_text()[-5000:]
