"""Headless Chromium as the console's benchmark and browser tests start it: Debian's `chromium`
(apt; `scripts/setup browser` installs it), driven by Playwright, never a browser build that
Playwright downloads."""

import os
from pathlib import Path
from typing import Final

CHROMIUM: Final = Path(os.environ.get("GENAI_TEST_CHROMIUM", "/usr/bin/chromium"))
"""The browser binary: Debian's `chromium` unless GENAI_TEST_CHROMIUM names another one."""

CHROMIUM_ARGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    # These machines reach no internet: without the flags below Chromium keeps trying to reach
    # Google (QUIC probes, component and variations updates, sync, first-run setup).
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Shared memory from /tmp rather than a possibly small /dev/shm (containers). Debian's
    # launcher means to add it when /dev/shm is small, but its check breaks when /dev/shm has
    # several mounts.
    "--disable-dev-shm-usage",
)
"""Flags Chromium starts with (Playwright adds its own automation flags)."""
