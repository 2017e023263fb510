"""A peer of the `inference` benchmark: `transformers serve`, transformers' own OpenAI-compatible
server, on the same prepared weights, with continuous batching (`--continuous-batching`).

`transformers_serve(model_dir, ...)` starts it in a process group of its own (offline:
`HF_HUB_OFFLINE=1`, the model directory preloaded as its only model) and waits for `/health`;
`TransformersServe.stream(messages, max_tokens)` streams one greedy chat completion and returns
its time to first content, total time, output tokens (from the final `usage` chunk, else the
chunks that carried text) and text. The server stops when the block ends.
"""

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.processes import group_cpu_seconds

STARTUP_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class ServedStream:
    """One finished chat completion stream."""

    ttft_s: float
    total_s: float
    output_tokens: int
    input_tokens: int
    text: str
    finish_reason: str


class TransformersServe:
    """A running `transformers serve`."""

    def __init__(self, process: asyncio.subprocess.Process, base_url: str, model: str) -> None:
        self.process = process
        self.base_url = base_url
        self.model = model
        self._client = httpx.AsyncClient(
            base_url=base_url, timeout=httpx.Timeout(600.0), limits=httpx.Limits(max_connections=64)
        )

    def cpu_seconds(self) -> float | None:
        """CPU seconds the server's process group has used so far."""
        return group_cpu_seconds(self.process.pid)

    async def stream(self, messages: Sequence[Mapping[str, str]], max_tokens: int) -> ServedStream:
        body = {
            "model": self.model,
            "messages": [dict(m) for m in messages],
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        started = time.perf_counter()
        ttft = None
        chunks = 0
        parts: list[str] = []
        usage: Mapping[str, int] = {}
        finish = ""
        async with self._client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")[:500]
                raise RuntimeError(f"transformers serve answered {response.status_code}: {detail}")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if event.get("usage"):
                    usage = event["usage"]
                for choice in event.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content") or ""
                    if content:
                        if ttft is None:
                            ttft = time.perf_counter() - started
                        chunks += 1
                        parts.append(content)
                    finish = choice.get("finish_reason") or finish
        total = time.perf_counter() - started
        return ServedStream(
            ttft_s=total if ttft is None else ttft,
            total_s=total,
            output_tokens=int(usage.get("completion_tokens") or chunks),
            input_tokens=int(usage.get("prompt_tokens") or 0),
            text="".join(parts),
            finish_reason=finish,
        )

    async def close(self) -> None:
        await self._client.aclose()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def transformers_serve(
    model_dir: Path,
    *,
    continuous_batching: bool = True,
    log_file: Path | None = None,
) -> AsyncIterator[TransformersServe]:
    """Runs `transformers serve MODEL_DIR [--continuous-batching]` until the block ends."""
    executable = Path(sys.executable).with_name("transformers")
    port = _free_port()
    command = [str(executable), "serve", str(model_dir), "--host", "127.0.0.1"]
    command += ["--port", str(port)]
    command.append("--continuous-batching" if continuous_batching else "--no-continuous-batching")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = log_file.open("ab") if log_file is not None else None
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log or asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.STDOUT if log else asyncio.subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # its own process group: CPU time counted, stopped as one
    )
    server = TransformersServe(process, f"http://127.0.0.1:{port}", str(model_dir))
    try:
        await _wait_healthy(server)
        yield server
    finally:
        await server.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        if log is not None:
            log.close()


async def _wait_healthy(server: TransformersServe) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    async with httpx.AsyncClient(base_url=server.base_url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.returncode is not None:
                raise RuntimeError(
                    f"transformers serve exited with status {server.process.returncode} "
                    "before it served"
                )
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/health")).status_code == 200:
                    return
            await asyncio.sleep(0.5)
    raise RuntimeError(f"transformers serve was not healthy within {STARTUP_TIMEOUT_S:.0f} s")
