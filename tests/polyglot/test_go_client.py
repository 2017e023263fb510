"""The platform from Go: tests/polyglot/go/genaiclient, built with Debian's Go 1.19 and
grpc-go 1.33 in GOPATH mode against the stubs in generated/go, then run against the server,
and against two replicas with the platform's service config (round_robin, retries).

GOPATH mode needs the code at `$GOPATH/src/<import path>`: a temporary GOPATH holds a symlink
`src/github.com/genai-platform/genai` -> the repo root, and /usr/share/gocode (Debian's Go
sources) comes second. The build cache persists in ~/.cache/genai-go-build, so only the first
build is slow. There is no skip when Go is missing: CI installs it (scripts/setup go).
"""

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.polyglot.expect import assert_client_saw_the_platform
from tests.polyglot.replicas import assert_calls_balanced_and_retried, info_replicas, run_client
from tests.support.serve import ROOT, ServeProcess

pytestmark = pytest.mark.polyglot

REPO_IMPORT_PATH = "github.com/genai-platform/genai"
CLIENT_DIR = Path(__file__).resolve().parent / "go" / "genaiclient"
CLIENT_IMPORT_PATH = f"{REPO_IMPORT_PATH}/{CLIENT_DIR.relative_to(ROOT).as_posix()}"
DEBIAN_GOCODE = "/usr/share/gocode"
SETUP_HINT = "run scripts/setup go (Debian golang-go and the grpc-go/protobuf sources)"
SERVICE_CONFIG = Path(__file__).resolve().parent / "service_config.json"


def go_build_cache() -> Path:
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "genai-go-build"


@dataclass
class GoWorkspace:
    """A GOPATH-mode workspace for the client. Nothing runs until a test asks, so a missing
    toolchain fails that test (rather than erroring in a fixture)."""

    gopath: Path
    _binary: Path | None = field(default=None, init=False)

    def go(self) -> str:
        go = shutil.which("go")
        if go is None:
            pytest.fail(f"`go` not found on PATH: {SETUP_HINT}")
        if not Path(DEBIAN_GOCODE, "src", "google.golang.org", "grpc").is_dir():
            pytest.fail(f"{DEBIAN_GOCODE}/src/google.golang.org/grpc not found: {SETUP_HINT}")
        return go

    def env(self) -> dict[str, str]:
        link = self.gopath / "src" / REPO_IMPORT_PATH
        if not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(ROOT, target_is_directory=True)
        return {
            **os.environ,
            "GOPATH": f"{self.gopath}{os.pathsep}{DEBIAN_GOCODE}",
            "GO111MODULE": "off",
            "GOPROXY": "off",
            "GOFLAGS": "",
            "GOCACHE": str(go_build_cache()),
            # A pure-Go build: no C compiler needed (scripts/setup installs none).
            "CGO_ENABLED": "0",
        }

    def run(self, *args: str, timeout: float = 600) -> "subprocess.CompletedProcess[str]":
        return subprocess.run(
            [self.go(), *args],
            cwd=self.gopath,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def binary(self) -> Path:
        """The built client (built once per module)."""
        if self._binary is None:
            output = self.gopath / "bin" / "genaiclient"
            result = self.run("build", "-o", str(output), CLIENT_IMPORT_PATH)
            assert result.returncode == 0, f"go build failed:\n{result.stdout}{result.stderr}"
            self._binary = output
        return self._binary


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> GoWorkspace:
    return GoWorkspace(gopath=tmp_path_factory.mktemp("gopath"))


def test_go_client_is_gofmt_clean_and_passes_vet(workspace: GoWorkspace) -> None:
    goroot = workspace.run("env", "GOROOT").stdout.strip()
    gofmt = subprocess.run(
        [str(Path(goroot, "bin", "gofmt")), "-l", str(CLIENT_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gofmt.returncode == 0, gofmt.stderr
    assert gofmt.stdout == "", f"not gofmt-formatted:\n{gofmt.stdout}"

    vet = workspace.run("vet", CLIENT_IMPORT_PATH)
    assert vet.returncode == 0, f"go vet failed:\n{vet.stdout}{vet.stderr}"


def test_go_client_talks_to_the_platform(workspace: GoWorkspace, server: ServeProcess) -> None:
    result = subprocess.run(
        [str(workspace.binary()), server.address, server.api_key],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    if "protobuf tag not enough fields" in output:
        pytest.fail(
            "the Go client ran against github.com/golang/protobuf 1.3: install "
            f"golang-github-golang-protobuf-1-5-dev ({SETUP_HINT})\n{output}"
        )
    assert result.returncode == 0, output
    assert_client_saw_the_platform(result.stdout)


async def test_go_client_balances_over_replicas_and_retries(workspace: GoWorkspace) -> None:
    """round_robin over a list of two addresses reaches both; the UNAVAILABLE that replica b
    answers first is retried (GetServerInfo is idempotent), so every call succeeds."""
    binary = workspace.binary()
    command = [str(binary), "-service-config", str(SERVICE_CONFIG), "replicas"]
    async with info_replicas("a", "b") as (target, replicas):
        replicas[1].failures = 1
        stdout = await run_client(
            [*command, target, "12"], env={**os.environ, "GRPC_GO_RETRY": "on"}
        )

    assert_calls_balanced_and_retried(stdout, replicas, calls=12, failed=1)
