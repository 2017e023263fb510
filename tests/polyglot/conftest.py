"""One real `genai serve` (all six services, API keys on, the sample prompts seeded) with a
Triton serving the zero-compute model, for every polyglot test: grpcurl, Node and Go clients
all talk to the same process, as they would in production."""

from collections.abc import Iterator

import pytest

from tests.support.serve import ServeProcess, genai_serve
from tests.support.settings import ZERO_ONLY


@pytest.fixture(scope="session")
def polyglot_server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with genai_serve(tmp_path_factory.mktemp("polyglot-serve"), env=ZERO_ONLY, timeout=180) as s:
        yield s


@pytest.fixture
def server(polyglot_server_process: ServeProcess) -> ServeProcess:
    """The shared server, checked to be still running before each test that uses it."""
    process = polyglot_server_process.process
    if process.poll() is not None:
        output = process.stdout.read() if process.stdout else ""
        pytest.fail(f"the shared genai serve exited with {process.returncode}:\n{output}")
    return polyglot_server_process
