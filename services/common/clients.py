"""Channels for calling other services: traced, kept alive, with the servers' message limits.

Services reach each other through generated stubs over these channels:

    channel = create_channel("localhost:50051", tracer_provider=provider)
    stub = prompt_service_pb2_grpc.PromptServiceStub(channel)
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
import grpc.aio
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.trace import TracerProvider

from services.common.grpc_types import (
    StreamStreamClientInterceptor,
    StreamUnaryClientInterceptor,
    UnaryStreamClientInterceptor,
    UnaryUnaryClientInterceptor,
)
from services.common.server import MAX_MESSAGE_BYTES

ChannelOptions = Sequence[tuple[str, Any]]

CHANNEL_OPTIONS: Final[ChannelOptions] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Detect a dead peer within about 40 s, also on idle connections and during long token
    # streams that are silent while a model thinks. Servers permit pings every 10 s.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)


@dataclass(frozen=True)
class ClientTlsConfig:
    """Client TLS from PEM files: `root_ca` verifies the server (None: the system roots);
    `certificate_chain` and `private_key` together authenticate this client (mTLS)."""

    root_ca: Path | None = None
    certificate_chain: Path | None = None
    private_key: Path | None = None


def create_channel(
    target: str,
    *,
    tls: ClientTlsConfig | None = None,
    tracer_provider: TracerProvider | None = None,
    options: ChannelOptions = (),
    metadata: Sequence[tuple[str, str]] = (),
) -> grpc.aio.Channel:
    """Returns a channel to `target` (`"host:port"`) with OpenTelemetry client interceptors.

    `options` are added to (and override) `CHANNEL_OPTIONS`; `metadata` goes with every call
    (credentials, say). Reading the TLS files blocks, so create channels at start-up, in the
    composition root.
    """
    merged = list(dict([*CHANNEL_OPTIONS, *options]).items())
    interceptors: list[Any] = [*(_DefaultMetadata(metadata).all() if metadata else ())]
    interceptors += [
        *aio_client_interceptors(tracer_provider=tracer_provider),  # type: ignore[no-untyped-call]
        # Innermost, next to the real call; see the class.
        _CancelUnaryCallWithChain(),
        _CancelStreamUnaryCallWithChain(),
    ]
    if tls is None:
        return grpc.aio.insecure_channel(target, options=merged, interceptors=interceptors)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(tls.root_ca),
        private_key=_read(tls.private_key),
        certificate_chain=_read(tls.certificate_chain),
    )
    return grpc.aio.secure_channel(target, credentials, options=merged, interceptors=interceptors)


def api_key_metadata(api_key: str) -> tuple[tuple[str, str], ...]:
    """The metadata that authenticates calls with `api_key` (none for an empty key)."""
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


class _DefaultMetadata:
    """Adds fixed metadata to every call of a channel (the call's own metadata wins)."""

    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._metadata = tuple(metadata)

    def details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        own = tuple(details.metadata or ())
        names = {key for key, _ in own}
        merged = grpc.aio.Metadata(
            *own, *((key, value) for key, value in self._metadata if key not in names)
        )
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, merged, details.credentials, details.wait_for_ready
        )

    def all(self) -> tuple[Any, ...]:
        outer = self

        class UnaryUnary(UnaryUnaryClientInterceptor):
            async def intercept_unary_unary(
                self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any
            ) -> Any:
                return await continuation(outer.details(details), request)

        class UnaryStream(UnaryStreamClientInterceptor):
            async def intercept_unary_stream(
                self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any
            ) -> Any:
                return await continuation(outer.details(details), request)

        class StreamUnary(StreamUnaryClientInterceptor):
            async def intercept_stream_unary(
                self, continuation: Any, details: grpc.aio.ClientCallDetails, requests: Any
            ) -> Any:
                return await continuation(outer.details(details), requests)

        class StreamStream(StreamStreamClientInterceptor):
            async def intercept_stream_stream(
                self, continuation: Any, details: grpc.aio.ClientCallDetails, requests: Any
            ) -> Any:
                return await continuation(outer.details(details), requests)

        return UnaryUnary(), UnaryStream(), StreamUnary(), StreamStream()


class _CancelUnaryCallWithChain(UnaryUnaryClientInterceptor):
    """Cancels the RPC when the interceptor chain is cancelled.

    OpenTelemetry's unary-response client interceptors wait for the whole RPC inside grpc's
    interceptor task. `call.cancel()`, or cancelling the task that awaits the call, then cancels
    only that task, and the server would go on working for a caller that is gone. Placed
    innermost, this interceptor sees the real call and cancels it together with the task.
    """

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        call = await continuation(client_call_details, request)
        _cancel_with_current_task(call)
        return call


class _CancelStreamUnaryCallWithChain(StreamUnaryClientInterceptor):
    """`_CancelUnaryCallWithChain` for client-streaming calls."""

    async def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        call = await continuation(client_call_details, request_iterator)
        _cancel_with_current_task(call)
        return call


def _cancel_with_current_task(call: grpc.aio.Call) -> None:
    task = asyncio.current_task()
    if task is not None:
        task.add_done_callback(lambda done: call.cancel() if done.cancelled() else None)


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None
