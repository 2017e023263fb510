"""The platform and Triton as the `inference` benchmark runs them: `genai serve` in a process of
its own, and the CPU time each process (or process group) spends, from /proc.

`genai serve` is started the way an operator starts it (`python -m services.cli serve --port 0
--ready-file F`, settings from `GENAI_*` variables) and stopped with SIGTERM, which drains it.
"""

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from benchmarks.serving import ROOT, ServerProcess

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PROC = Path("/proc")


class ServeError(RuntimeError):
    """`genai serve` exited or stayed silent before it served; the message has its log's end."""


@asynccontextmanager
async def genai_serve(
    services: Sequence[str],
    env: Mapping[str, str],
    *,
    log_file: Path,
    start_timeout: float = 60.0,
    arguments: Sequence[str] = (),
) -> AsyncIterator[ServerProcess]:
    """Runs `genai serve --service S... --port 0 [ARGUMENTS]` from the repo root, with `env`
    added to this process's environment and its output in `log_file`, until the block ends
    (then SIGTERM).

    Yields once the ready file names its port; raises `ServeError` when it does not serve.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    ready_file = log_file.with_suffix(".ready.json")
    ready_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "services.cli", "serve", "--port", "0"]
    for service in services:
        command += ["--service", service]
    command += ["--ready-file", str(ready_file), *arguments]
    with log_file.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **env},
        )
    try:
        ready = await wait_ready(process, ready_file, log_file, start_timeout)
        yield ServerProcess(process=process, port=int(ready["port"]), ready=ready)
    finally:
        await terminate(process)


async def wait_ready(
    process: asyncio.subprocess.Process, ready_file: Path, log_file: Path, patience_s: float
) -> dict[str, Any]:
    """What a `genai serve --ready-file` wrote once it serves; `ServeError` with the end of
    its log when it exits or stays silent for `patience_s` seconds first."""
    deadline = time.monotonic() + patience_s
    while True:
        if process.returncode is not None:
            raise ServeError(
                f"genai serve exited with status {process.returncode} before serving:\n"
                f"{_tail(log_file)}"
            )
        with contextlib.suppress(OSError, ValueError):  # absent, or being written
            ready: dict[str, Any] = json.loads(await asyncio.to_thread(ready_file.read_text))
            if "port" in ready:
                return ready
        if time.monotonic() > deadline:
            raise ServeError(
                f"genai serve did not serve within {patience_s:.0f} s:\n{_tail(log_file)}"
            )
        await asyncio.sleep(0.05)


async def terminate(process: asyncio.subprocess.Process, patience_s: float = 10.0) -> None:
    """SIGTERM (a `genai serve` drains), then SIGKILL after `patience_s` seconds."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), patience_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def development_key(server: ServerProcess) -> str:
    """The development key (the `default` tenant's platform-admin key) of a `genai serve`
    with API keys on: its ready file names the file that holds it (the secret is only there).
    Raises RuntimeError when the ready file names none (auth mode `none`, or the development
    key turned off)."""
    key_file = str(server.ready.get("api_key_file") or "")
    key = (await asyncio.to_thread(Path(key_file).read_text)).strip() if key_file else ""
    if not key:
        raise RuntimeError("genai serve reported no development key (is auth mode api_key?)")
    return key


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ------------------------------------------------------------------------------------ CPU time


def parse_stat(text: str) -> tuple[int, float]:
    """The process group and the user plus system CPU seconds in a `/proc/PID/stat` line.

    The command name (field 2) is in parentheses and may hold spaces, so the fields are counted
    after its closing parenthesis: there, pgrp is the 3rd and utime, stime the 12th and 13th.
    """
    fields = text.rpartition(")")[2].split()
    if len(fields) < 13:
        raise ValueError(f"not a /proc/PID/stat line: {text[:80]!r}")
    return int(fields[2]), (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def group_cpu_seconds(pgid: int, proc: Path = _PROC) -> float | None:
    """CPU seconds used so far by the live processes of process group `pgid` (e.g. Triton and
    its Python-backend stubs); None where /proc is absent. 10 ms resolution per process."""
    if not proc.is_dir():
        return None
    total = 0.0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            group, seconds = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read
        if group == pgid:
            total += seconds
    return total
