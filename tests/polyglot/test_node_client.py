"""The platform from Node: tests/polyglot/node/client.ts, a Connect v2 client over gRPC built
on the protoc-gen-es stubs in generated/ts, type-checked with tsc and run with tsx; and
tests/polyglot/node/replicas.ts, a @grpc/grpc-js client balancing over replicas."""

import subprocess
from pathlib import Path

import pytest

from tests.polyglot.expect import assert_client_saw_the_platform
from tests.polyglot.replicas import assert_calls_balanced_and_retried, info_replicas, run_client
from tests.support.serve import ROOT, ServeProcess

pytestmark = pytest.mark.polyglot

NODE_BIN = ROOT / "node_modules" / ".bin"
CLIENT = ROOT / "tests" / "polyglot" / "node" / "client.ts"
REPLICAS_CLIENT = ROOT / "tests" / "polyglot" / "node" / "replicas.ts"


def node_tool(name: str) -> Path:
    tool = NODE_BIN / name
    if not tool.exists():
        pytest.fail(f"{tool} not found: run scripts/setup node")
    return tool


def test_node_client_type_checks() -> None:
    """The root tsconfig.json covers generated/ts and tests/polyglot/node: the client compiles
    strictly against the generated stubs."""
    result = subprocess.run(
        [str(node_tool("tsc")), "-p", "tsconfig.json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_node_client_talks_to_the_platform(server: ServeProcess) -> None:
    result = subprocess.run(
        [str(node_tool("tsx")), str(CLIENT), server.address, server.api_key],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert_client_saw_the_platform(result.stdout)


async def test_node_client_balances_over_replicas_and_retries() -> None:
    """round_robin over a list of two addresses reaches both; the UNAVAILABLE that replica b
    answers first is retried (GetServerInfo is idempotent), so every call succeeds."""
    tsx = node_tool("tsx")
    async with info_replicas("a", "b") as (target, replicas):
        replicas[1].failures = 1
        stdout = await run_client([str(tsx), str(REPLICAS_CLIENT), target, "12"])

    assert_calls_balanced_and_retried(stdout, replicas, calls=12, failed=1)
