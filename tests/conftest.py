"""Fixtures for every test tier."""

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Points XDG_DATA_HOME (where services keep their default SQLite files, e.g. the prompt
    registry) at a directory of this test session, for in-process servers and the `genai`
    processes tests start alike: tests never touch the user's data."""
    previous = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    yield
    if previous is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = previous


@pytest.fixture
def tritonserver_installed() -> None:
    """Fails (never skips) a test that needs tritonserver when the nvidia-pytriton wheel is
    missing: `scripts/setup` installs it on every machine."""
    from tests.support.triton import triton_installed

    if not triton_installed():
        pytest.fail("tritonserver is missing (nvidia-pytriton): run scripts/setup python")
