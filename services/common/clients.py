"""Channels for calling other services: traced, kept alive, with the servers' message limits,
balanced over replicas and retrying what is safe to retry.

Services reach each other through generated stubs over these channels:

    channel = create_channel("10.0.0.1:50051,10.0.0.2:50051", tracer_provider=provider)
    stub = prompt_service_pb2_grpc.PromptServiceStub(channel)

What a user writes as a target (`channel_target` turns it into a gRPC target and service
config): `host:port` is one address, dialled as gRPC always has (pick_first over what the name
resolves to); a comma-separated list of IP literals (`10.0.0.1:50051,10.0.0.2:50051`,
`[fd00::1]:50051,[fd00::2]:50051`) becomes gRPC's `ipv4:`/`ipv6:` target with every address;
`dns:///name:port` dials every A/AAAA record of the name, re-resolved as connections come and go
(a Kubernetes headless Service); any other explicit gRPC scheme (`ipv4:`, `unix:`, `xds:`, ...)
is passed through. Host names in a list are refused, not resolved once: frozen addresses would
go stale when a replica moves, and resolving blocks; one name for every replica is `dns:///`.
A target that can name several addresses (a list, `dns:`, `ipv4:`/`ipv6:` with several) is
balanced with `round_robin` and client-side health checking: a replica whose `grpc.health.v1`
status for the overall server (`""`) is not SERVING, as `RunningServer.stop` reports first,
gets no new calls. Every channel, one address included (a restarted server), retries the
contract's idempotent RPCs (`IDEMPOTENT_RPCS`) on UNAVAILABLE: up to 4 attempts with jittered
exponential backoff from 0.1 s to 1 s, throttled when most calls fail. gRPC retries only before
response headers arrive, so a stream that has sent a message is never replayed, and never
retries the rest (`NON_IDEMPOTENT_RPCS`): a Complete or SetLabel whose reply was lost may have
happened.
"""

import argparse
import asyncio
import ipaddress
import json
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
    # On by default in grpcio; the retry policy of the service config needs it.
    ("grpc.enable_retries", 1),
    # A replica that went away is dialled again 0.25 s later, then backing off to at most
    # 5 s (gRPC's default grows to 120 s): a restarted pod gets its share of calls back, and
    # a single-address channel reconnects, within seconds.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 5_000),
)

DEFAULT_TARGET: Final = "127.0.0.1:50051"
"""Where the command line's commands find the platform unless told otherwise (`--target`,
$GENAI_TARGET): the gateway of `genai serve` on this machine."""
TARGET_ENV: Final = "GENAI_TARGET"
"""The environment variable the command line's `--target` defaults to."""

IDEMPOTENT_RPCS: Final[Mapping[str, frozenset[str]]] = {
    "genai.prompt.v1.PromptService": frozenset(
        {
            "GetPrompt",
            "ListPrompts",
            "GetPromptVersion",
            "ListPromptVersions",
            "DiffPromptVersions",
            "ListLabelHistory",
            "RenderPrompt",
            "WatchLabels",  # opening changes nothing; a stream with a message is never retried
        }
    ),
    "genai.experiment.v1.ExperimentService": frozenset(
        {
            "GetExperiment",
            "ListExperiments",
            "GetExperimentResults",
            "AssignVariant",  # sticky: the first assignment is stored and returned again
            "StartExperiment",  # "Starting a running one is a no-op."
            "StopExperiment",  # "Stopping a stopped one is a no-op."
        }
    ),
    "genai.evaluation.v1.EvaluationService": frozenset(
        {
            "GetDataset",
            "ListDatasets",
            "ListExamples",
            "GetEvaluationRun",
            "ListEvaluationRuns",
            "GetEvaluationReport",
            "CompareEvaluationReports",
            "ListQualityAlerts",
        }
    ),
    "genai.router.v1.RouterService": frozenset(
        {"ListModels", "GetModel", "Route", "GetBackendHealth"}
    ),
    "genai.inference.v1.InferenceService": frozenset({"Embed", "ListModels", "GetModelStatus"}),
    "genai.gateway.v1.GatewayService": frozenset(
        {"ListRequestLogs", "ListApiKeys", "ListAuditEvents", "GetServerInfo"}
    ),
}
"""RPCs whose repetition cannot change what happened: reads, sticky assignment, documented
no-ops. Channels retry them on UNAVAILABLE. Every RPC of the contract is here or in
`NON_IDEMPOTENT_RPCS` (a test checks), so a new RPC is classified before it ships."""

NON_IDEMPOTENT_RPCS: Final[Mapping[str, frozenset[str]]] = {
    "genai.prompt.v1.PromptService": frozenset(
        {
            "CreatePrompt",
            # Idempotent only while nobody else pushes: a retry after another push would add
            # a copy of the older content as a new version.
            "CreatePromptVersion",
            "UpdatePrompt",
            "SetLabel",  # with expected_version, a retry of a committed move fails ABORTED
            "DeleteLabel",
            "RollbackLabel",  # a retry rolls back twice
        }
    ),
    "genai.experiment.v1.ExperimentService": frozenset(
        {
            "CreateExperiment",
            "SetVariantWeights",
            "RecordExposure",
            "RecordOutcome",
        }
    ),
    "genai.evaluation.v1.EvaluationService": frozenset(
        {"CreateDataset", "AddExamples", "StartEvaluationRun", "CancelEvaluationRun"}
    ),
    "genai.router.v1.RouterService": frozenset({"ReportOutcome"}),  # statistics count each
    "genai.inference.v1.InferenceService": frozenset({"Generate", "GenerateStream"}),
    "genai.gateway.v1.GatewayService": frozenset(
        {
            "Complete",
            "StreamComplete",
            "RecordFeedback",
            "CreateTenant",
            "UpdateTenantQuota",
            "CreateApiKey",
            "RevokeApiKey",
            "RotateApiKey",  # a retry without the same request_id rotates twice
        }
    ),
}
"""RPCs that channels never retry: generations (costly, accounted, sampled), writes and
counters. Those with a `request_id` idempotency key are safe to retry by a caller that sets
one, which a channel cannot know."""

RETRY_POLICY: Final[Mapping[str, Any]] = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
"""How idempotent RPCs are retried (gRFC A6): the first try and up to 3 retries, each after a
random delay of up to 0.1, 0.2 and 0.4 s, all within the call's deadline."""

RETRY_THROTTLING: Final[Mapping[str, Any]] = {"maxTokens": 100, "tokenRatio": 0.1}
"""gRFC A6 throttling, per channel: each failure takes one of 100 tokens, each success gives
back 0.1, and retries pause while 50 or fewer are left, so that an outage of every replica is
not multiplied by the retries."""

_BALANCED_SCHEMES: Final = frozenset({"dns"})
"""Schemes whose one name can stand for several addresses."""
_ADDRESS_SCHEMES: Final = frozenset({"ipv4", "ipv6"})
"""Schemes that list addresses (balanced when they list several)."""
_OPAQUE_SCHEMES: Final = frozenset({"dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock"})
"""Schemes gRPC accepts without `//` (`unix:path`); `localhost:50051` is a host, not one."""
_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(//)?")


class InvalidTargetError(ValueError):
    """A target that `channel_target` cannot dial; the message says what to write instead."""


@dataclass(frozen=True)
class ClientTlsConfig:
    """Client TLS from PEM files: `root_ca` verifies the server (None: the system roots);
    `certificate_chain` and `private_key` together authenticate this client (mTLS).

    `server_name` is the name the servers' certificates are checked against, and the calls'
    `:authority` (empty: the target's host). A list of IP addresses has no such name, so TLS
    over one needs it."""

    root_ca: Path | None = None
    certificate_chain: Path | None = None
    private_key: Path | None = None
    server_name: str = ""


@dataclass(frozen=True)
class ChannelTarget:
    """What a channel dials, made by `channel_target` from what a user wrote."""

    target: str
    """The gRPC target: `host:port`, `ipv4:10.0.0.1:50051,10.0.0.2:50051`, `dns:///name:port`."""
    balanced: bool
    """Whether it can stand for several addresses, and so uses round_robin with health checks."""
    listed: bool
    """Whether it lists IP addresses (TLS over it needs `ClientTlsConfig.server_name`)."""
    service_config: Mapping[str, Any]
    """The gRPC service config (as JSON would hold it) of a channel to it."""

    def service_config_json(self) -> str:
        """`service_config` as the JSON the `grpc.service_config` channel option takes."""
        return json.dumps(self.service_config, separators=(",", ":"), sort_keys=True)


def channel_target(text: str, *, health_service: str = "") -> ChannelTarget:
    """Turns what a user wrote (see the module's docstring) into a gRPC target and its service
    config; raises `InvalidTargetError`, naming the problem, for what cannot be dialled.

    `health_service` is the `grpc.health.v1` service name whose status decides whether a
    balanced channel sends calls to a replica. The default, the overall server `""`, is right
    for a channel shared by the stubs of several services (`ChannelPool` shares one channel per
    target) and is registered on every server; name the one service only on a channel
    dedicated to it, and only where every replica registers it (an unknown name makes every
    replica unhealthy).
    """
    stripped = text.strip()
    if not stripped:
        raise InvalidTargetError(
            "empty target: write HOST:PORT, IP:PORT,IP:PORT or dns:///NAME:PORT"
        )
    scheme = _explicit_scheme(stripped)
    if scheme is not None:
        if scheme == "dns":
            _check_dns(stripped)
        addresses = stripped.split(":", 1)[1].split(",") if scheme in _ADDRESS_SCHEMES else []
        listed = len(addresses) > 1
        return _target(stripped, scheme in _BALANCED_SCHEMES or listed, listed, health_service)
    if "," not in stripped:
        return _target(stripped, False, False, health_service)
    families = {_ip_address(entry.strip(), stripped) for entry in stripped.split(",")}
    if len(families) > 1:
        raise InvalidTargetError(
            f"{stripped!r} mixes IPv4 and IPv6 addresses, which one gRPC target cannot list: "
            "use one family, or dns:///NAME:PORT for a name with both"
        )
    [family] = families
    listing = ",".join(entry.strip() for entry in stripped.split(","))
    return _target(f"{family}:{listing}", True, True, health_service)


def retry_method_config() -> dict[str, Any]:
    """The service config's `methodConfig` entry that retries every RPC of `IDEMPOTENT_RPCS`."""
    names = [
        {"service": service, "method": method}
        for service, methods in sorted(IDEMPOTENT_RPCS.items())
        for method in sorted(methods)
    ]
    return {"name": names, "retryPolicy": dict(RETRY_POLICY)}


def create_channel(
    target: str,
    *,
    tls: ClientTlsConfig | None = None,
    tracer_provider: TracerProvider | None = None,
    options: ChannelOptions = (),
    metadata: Sequence[tuple[str, str]] = (),
    health_service: str = "",
) -> grpc.aio.Channel:
    """Returns a channel to `target` with OpenTelemetry client interceptors, balanced and
    retrying as the module's docstring says.

    `target` is anything `channel_target` accepts (`InvalidTargetError` otherwise), and
    `health_service` is passed to it. `options` are added to (and override) `CHANNEL_OPTIONS`
    and the service config; `metadata` goes with every call (credentials, say). Reading the
    TLS files blocks, so create channels at start-up, in the composition root.
    """
    dialled = channel_target(target, health_service=health_service)
    if tls is not None and dialled.listed and not tls.server_name:
        raise InvalidTargetError(
            f"{target!r} lists IP addresses, which no certificate name matches: set the TLS "
            "server name (the name the servers' certificates carry), or use dns:///NAME:PORT"
        )
    authority = (("grpc.default_authority", tls.server_name),) if tls and tls.server_name else ()
    merged = list(
        dict(
            [
                *CHANNEL_OPTIONS,
                ("grpc.service_config", dialled.service_config_json()),
                *authority,
                *options,
            ]
        ).items()
    )
    interceptors: list[Any] = [*(_DefaultMetadata(metadata).all() if metadata else ())]
    interceptors += [
        *aio_client_interceptors(tracer_provider=tracer_provider),  # type: ignore[no-untyped-call]
        # Innermost, next to the real call; see the class.
        _CancelUnaryCallWithChain(),
        _CancelStreamUnaryCallWithChain(),
    ]
    if tls is None:
        return grpc.aio.insecure_channel(dialled.target, options=merged, interceptors=interceptors)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(tls.root_ca),
        private_key=_read(tls.private_key),
        certificate_chain=_read(tls.certificate_chain),
    )
    return grpc.aio.secure_channel(
        dialled.target, credentials, options=merged, interceptors=interceptors
    )


def add_target_option(
    parser: argparse.ArgumentParser, *, default: str, what: str = "platform"
) -> None:
    """Adds `--target` to a command line: checked by `channel_target` as it is parsed (a usage
    error otherwise), defaulting to $GENAI_TARGET, else `default`."""
    parser.add_argument(
        "--target",
        type=_target_argument,
        default=os.environ.get(TARGET_ENV) or default,
        metavar="TARGET",
        help=f"{what} address: HOST:PORT; several IP:PORT separated by commas, or "
        "dns:///NAME:PORT for every address of a name, to balance round robin over replicas "
        f"(default: ${TARGET_ENV}, else {default})",
    )


def api_key_metadata(api_key: str) -> tuple[tuple[str, str], ...]:
    """The metadata that authenticates calls with `api_key` (none for an empty key)."""
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def _explicit_scheme(text: str) -> str | None:
    """The gRPC scheme `text` names (`dns`, `ipv4`, ...), or None for `host:port` forms."""
    match = _SCHEME.match(text)
    if match is None:
        return None
    scheme = match.group(1).lower()
    if match.group(2) or scheme in _OPAQUE_SCHEMES:
        return scheme
    return None


def _check_dns(text: str) -> None:
    """A `dns:` target must end in `:PORT`: gRPC would otherwise dial port 443."""
    name = text.split(":", 1)[1]
    if name.startswith("//"):  # dns://[authority]/name:port
        name = name[2:].partition("/")[2]
    host, separator, port = name.rpartition(":")
    if not separator or not host or not port.isdigit() or host.endswith(":"):
        raise InvalidTargetError(f"{text!r} names no port: write dns:///NAME:PORT")


def _ip_address(entry: str, text: str) -> str:
    """The family (`ipv4` or `ipv6`) of one `IP:PORT` entry of a list."""
    host, separator, port = entry.rpartition(":")
    if not entry or not separator or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidTargetError(f"{entry!r} in {text!r} is not IP:PORT with a port 1-65535")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise InvalidTargetError(
            f"{entry!r} in {text!r}: a list of targets takes IP addresses only "
            "(10.0.0.1:50051,10.0.0.2:50051 or [fd00::1]:50051,...); for a host name that "
            "resolves to every replica write dns:///NAME:PORT"
        ) from None
    if address.version == 6 and not bracketed:
        raise InvalidTargetError(f"{entry!r} in {text!r}: write IPv6 addresses as [ADDRESS]:PORT")
    return f"ipv{address.version}"


def _target(target: str, balanced: bool, listed: bool, health_service: str) -> ChannelTarget:
    config: dict[str, Any] = {
        "methodConfig": [retry_method_config()],
        "retryThrottling": dict(RETRY_THROTTLING),
    }
    if balanced:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
        config["healthCheckConfig"] = {"serviceName": health_service}
    return ChannelTarget(target=target, balanced=balanced, listed=listed, service_config=config)


def _target_argument(text: str) -> str:
    try:
        channel_target(text)
    except InvalidTargetError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


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
