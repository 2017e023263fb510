"""Runs `genai serve` as a real child process, the way a user or an operator starts it."""

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.settings import inference_without_triton, router_without_triton

ROOT = Path(__file__).resolve().parents[2]

NO_TRITON = {
    "GENAI_INFERENCE__TRITON__LAUNCH": "false",
    "GENAI_INFERENCE__MODELS": json.dumps(inference_without_triton()["models"]),
    "GENAI_ROUTER__CATALOG_FILE": router_without_triton()["catalog_file"],
}
"""Environment for a `genai serve` whose InferenceService points at no running Triton."""


@dataclass(frozen=True)
class ServeProcess:
    """A running `genai serve` and what its ready file said."""

    process: "subprocess.Popen[str]"
    address: str
    port: int
    services: tuple[str, ...]
    api_key: str = ""
    """The development tenant's admin key that `genai serve` printed (auth `api_key`)."""
    metrics_port: int | None = None
    """Port of the Prometheus endpoint (with `--workers`: the merged one of every worker)."""
    workers: tuple[int, ...] = ()
    """With `--workers N` (N > 1): the pids of the worker processes, by worker index."""
    http_port: int | None = None
    """Port of the OpenAI-compatible HTTP API (`http://127.0.0.1:PORT/v1`), when it serves
    one: a free port, since `--port 0` makes the default HTTP port 0 too."""


@contextmanager
def genai_serve(
    workdir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    log_file: Path | None = None,
) -> Iterator[ServeProcess]:
    """Starts `genai serve --port 0 ARGS` with `env` added to the environment, waits until it
    is serving, and kills it on exit unless the caller already stopped it. Fails with the
    process output if it never serves. Without `env`, no Triton is launched (`NO_TRITON`).
    Its output is a pipe the caller reads at the end (`process.communicate()`), or goes to
    `log_file`: for a server that lives long enough to fill a pipe nobody reads meanwhile."""
    ready = workdir / "genai-ready.json"
    output = log_file.open("w") if log_file is not None else None
    command: Sequence[str] = [
        sys.executable,
        "-m",
        "services.cli",
        "serve",
        "--port",
        "0",
        "--ready-file",
        str(ready),
        *args,
    ]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=output if output is not None else subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(NO_TRITON if env is None else env)},
    )
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                said = process.communicate()[0] if log_file is None else log_file.read_text()
                raise AssertionError(f"genai serve did not become ready:\n{said}")
            time.sleep(0.05)
        described = json.loads(ready.read_text())
        yield ServeProcess(
            process=process,
            address=described["address"],
            port=described["port"],
            services=tuple(described["services"]),
            api_key=(
                Path(described["api_key_file"]).read_text().strip()
                if described.get("api_key_file")
                else ""
            ),
            metrics_port=described.get("metrics_port"),
            workers=tuple(described.get("workers", ())),
            http_port=described.get("http_port"),
        )
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        if output is not None:
            output.close()
