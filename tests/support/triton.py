"""Real Triton Inference Server for tests: start one on free ports, talk to the facade models.

`triton_server(...)` is a plain context manager (it runs the async start/stop on its own event
loop), so module- or session-scoped fixtures can share one server; `running_triton(...)` is the
same inside an async test. Both fail the test with the end of Triton's log when it cannot
start, and always stop the server.
"""

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from numpy.typing import NDArray
from tritonclient.utils import InferenceServerException

from services.inference.adapters.tritonserver import (
    TritonServer,
    TritonServerError,
    find_distribution,
)

ROOT = Path(__file__).resolve().parents[2]
CPU_REPOSITORY = ROOT / "triton_models" / "cpu"
STARTUP_TIMEOUT = 180.0


def triton_installed() -> bool:
    """Whether the nvidia-pytriton wheel (and so tritonserver) is installed."""
    try:
        find_distribution()
    except TritonServerError:
        return False
    return True


requires_triton = pytest.mark.usefixtures("tritonserver_installed")
"""Fails a test, saying how to fix it, when tritonserver is not installed (never skips: the
set-up installs it everywhere); the fixture is in tests/conftest.py."""


async def _start(
    log_dir: Path,
    models: Sequence[str] | None,
    repository: Path,
    start_options: Mapping[str, Any],
) -> TritonServer:
    server = TritonServer()
    try:
        await server.start(
            repository,
            models=models,
            log_file=log_dir / "tritonserver.log",
            startup_timeout=STARTUP_TIMEOUT,
            **start_options,
        )
    except TritonServerError as error:
        pytest.fail(f"Triton did not start:\n{error}", pytrace=False)
    return server


@contextmanager
def triton_server(
    log_dir: Path,
    models: Sequence[str] | None,
    *,
    repository: Path = CPU_REPOSITORY,
    **start_options: Any,
) -> Iterator[TritonServer]:
    """A started Triton (free ports, log in `log_dir`), stopped on exit. For sync and
    module-scoped fixtures: call it outside a running event loop."""
    server = asyncio.run(_start(log_dir, models, repository, start_options))
    try:
        yield server
    finally:
        asyncio.run(server.stop())


@asynccontextmanager
async def running_triton(
    log_dir: Path,
    models: Sequence[str] | None,
    *,
    repository: Path = CPU_REPOSITORY,
    **start_options: Any,
) -> AsyncIterator[TritonServer]:
    """`triton_server` for async tests."""
    server = await _start(log_dir, models, repository, start_options)
    try:
        yield server
    finally:
        await server.stop()


# --------------------------------------------------------------------------------------------
# The generation facade through tritonclient.grpc.aio
# --------------------------------------------------------------------------------------------


def _tensor(name: str, datatype: str, values: NDArray[Any]) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(values.shape), datatype)
    tensor.set_data_from_numpy(values)
    return tensor


def text_tensor(name: str, texts: Sequence[str], shape: Sequence[int]) -> grpcclient.InferInput:
    """A BYTES tensor of UTF-8 texts."""
    values = np.array([t.encode() for t in texts], dtype=np.object_).reshape(shape)
    return _tensor(name, "BYTES", values)


def generation_inputs(
    prompt: str,
    max_tokens: int,
    *,
    stream: bool = True,
    stop_words: Sequence[str] = (),
    end_id: int | None = None,
    temperature: float | None = None,
    exclude_input_in_output: bool | None = True,
) -> list[grpcclient.InferInput]:
    """Facade inputs of one request, shape [1, 1] (word lists [1, n])."""
    inputs = [
        text_tensor("text_input", [prompt], [1, 1]),
        _tensor("max_tokens", "INT32", np.array([[max_tokens]], dtype=np.int32)),
        _tensor("stream", "BOOL", np.array([[stream]], dtype=np.bool_)),
    ]
    if stop_words:
        inputs.append(text_tensor("stop_words", stop_words, [1, len(stop_words)]))
    if end_id is not None:
        inputs.append(_tensor("end_id", "INT32", np.array([[end_id]], dtype=np.int32)))
    if temperature is not None:
        inputs.append(_tensor("temperature", "FP32", np.array([[temperature]], dtype=np.float32)))
    if exclude_input_in_output is not None:
        inputs.append(
            _tensor(
                "exclude_input_in_output", "BOOL", np.array([[exclude_input_in_output]], np.bool_)
            )
        )
    return inputs


@dataclass(frozen=True)
class Chunk:
    """One facade response."""

    text: str
    num_input_tokens: int
    num_output_tokens: int
    finish_reason: str
    final: bool


def parse_chunk(result: grpcclient.InferResult) -> Chunk:
    """A facade response as a `Chunk`."""

    def first(name: str) -> Any:
        values = result.as_numpy(name)
        assert values is not None, f"response lacks {name}"
        return values.reshape(-1)[0]

    final = result.get_response().parameters["triton_final_response"].bool_param
    return Chunk(
        text=first("text_output").decode(),
        num_input_tokens=int(first("num_input_tokens")),
        num_output_tokens=int(first("num_output_tokens")),
        finish_reason=first("finish_reason").decode(),
        final=bool(final),
    )


async def stream_generation(
    client: aioclient.InferenceServerClient,
    inputs: Sequence[grpcclient.InferInput],
    *,
    model: str = "zero_llm",
    parameters: Mapping[str, int | str | bool] | None = None,
    time_limit: float = 60.0,
) -> list[Chunk]:
    """One request on its own `stream_infer` stream; every response, read until Triton ends
    the stream. Raises the in-band error as `InferenceServerException`.

    The stream is never cancelled once the final response arrived: with Triton 2.51 a cancel
    that races the end of a finished stream leaves the stream's state behind, and the model
    then never unloads (shutdown hangs until `--exit-timeout-secs`)."""

    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {"model_name": model, "inputs": list(inputs), "parameters": dict(parameters or {})}

    chunks: list[Chunk] = []
    errors: list[InferenceServerException] = []
    stream = client.stream_infer(requests())
    ended = False
    try:
        async with asyncio.timeout(time_limit):
            async for result, error in stream:
                if error is not None:
                    errors.append(error)
                else:
                    chunks.append(parse_chunk(result))
        ended = True
    finally:
        if not ended:
            stream.cancel()
    if errors:
        assert not chunks or not chunks[-1].final, "an error followed the final response"
        raise errors[0]
    return chunks


def metric_value(metrics_url: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The value of one Prometheus sample from Triton's metrics endpoint (blocking); raises
    `KeyError` when it is absent."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    wanted = dict(labels or {})
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        found = dict(
            pair.split("=", 1) for pair in label_text.rstrip("}").split(",") if "=" in pair
        )
        if all(found.get(k, "").strip('"') == v for k, v in wanted.items()):
            return float(value)
    raise KeyError(f"{name}{wanted} is not among Triton's metrics")
