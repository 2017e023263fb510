"""Servers under test in processes of their own, the way clients meet them in production.

A server module run with `python -m MODULE ARGS` prints one JSON line holding at least `port`
once it serves, and stops when its standard input closes (so it also stops when the benchmark
dies). `benchmarks.echo` is one.
"""

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class ServerProcess:
    """A server running in a child process."""

    process: asyncio.subprocess.Process
    port: int
    ready: dict[str, Any]
    """The JSON line the server printed when it started serving."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float | None:
        """User plus system CPU time the process has used so far (None where /proc is absent).

        Resolution is one clock tick (10 ms): compare totals over many calls, not single calls.
        """
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return None
        # After the command name: state is field 3, utime and stime are fields 14 and 15.
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


@asynccontextmanager
async def server_process(
    module: str, args: Sequence[str] = (), *, start_timeout: float = 30.0
) -> AsyncIterator[ServerProcess]:
    """Runs `python -m module args` from the repo root until the block ends.

    Raises RuntimeError when the server exits or stays silent before it serves.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), start_timeout)
        except TimeoutError:
            raise RuntimeError(f"{module} did not report its port in {start_timeout} s") from None
        if not line:
            code = await process.wait()
            raise RuntimeError(f"{module} exited with status {code} before serving")
        ready = json.loads(line)
        yield ServerProcess(process=process, port=int(ready["port"]), ready=ready)
    finally:
        await _stop(process)


@asynccontextmanager
async def server_processes(
    commands: Sequence[tuple[str, Sequence[str]]],
) -> AsyncIterator[list[ServerProcess]]:
    """Starts several servers at once (their start-up overlaps) and stops them all at the end."""
    async with AsyncExitStack() as stack:
        async with asyncio.TaskGroup() as group:
            starting = [
                group.create_task(stack.enter_async_context(server_process(module, args)))
                for module, args in commands
            ]
        yield [task.result() for task in starting]


async def _stop(process: asyncio.subprocess.Process, patience_s: float = 5.0) -> None:
    if process.returncode is not None:
        return
    if process.stdin is not None:
        process.stdin.close()
    try:
        await asyncio.wait_for(process.wait(), patience_s)
    except TimeoutError:
        process.kill()
        await process.wait()
