"""The PromptService client library: resolves and renders prompts from a local cache that the
registry keeps current by push, and that keeps serving when the registry is unreachable.

    async with PromptClient(channel, prompts=["greeting"]) as prompts:
        rendered = await prompts.render("greeting", {"name": "Ada"})  # the production label

- Versions are immutable, so a fetched version is cached by `(prompt, version)` for good (a
  bounded LRU), and rendered here with the registry's own sandboxed renderer: a warm render makes
  no RPC, and bad variables raise the same `InvalidArgument` the server would.
- Labels are watched: a background task holds a `WatchLabels` stream and keeps a
  `(prompt, label) -> version` map from its snapshot and events. A move invalidates the map at
  once (push, never a timer). When the stream fails, the task reconnects with capped, jittered
  backoff and resumes after the last event it saw, so no move is missed; a resume that the
  server rejects starts over with a fresh snapshot.
- While the watch is down, labels are resolved with `GetPromptVersion`; when the registry is
  unreachable (UNAVAILABLE, deadline exceeded) the last known good version of the label is
  served instead and counted in `genai_prompt_client_stale_serves_total{prompt,label}`. A label
  never resolved before raises `Unavailable`.

Every client has its own Prometheus `CollectorRegistry` unless given one (`metrics_registry`):
cache hits and misses, stale serves, watch connection, reconnects, last event sequence and
registry errors by code.
"""

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import grpc
import grpc.aio
from genai.common.v1 import chat_pb2, generation_pb2, routing_pb2
from genai.prompt.v1 import prompt_pb2, prompt_service_pb2, prompt_service_pb2_grpc
from google.protobuf import struct_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.common.errors import (
    DomainError,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from services.common.status import UNREACHABLE_CODES, remote_error
from services.prompt.core.registry import DEFAULT_LABEL, render_content
from services.prompt.core.templates import RenderedMessage
from services.prompt.wire import SERVICE_NAME, version_content

if TYPE_CHECKING:
    _Stub = prompt_service_pb2_grpc.PromptServiceAsyncStub
else:
    _Stub = prompt_service_pb2_grpc.PromptServiceStub

_logger = logging.getLogger(__name__)

pb = prompt_service_pb2

_RESUMABLE_CODES: Final = UNREACHABLE_CODES | {grpc.StatusCode.CANCELLED}
"""Watch failures after which resuming from the last sequence is still right."""

_ROLES: Final = {
    "system": chat_pb2.CHAT_ROLE_SYSTEM,
    "user": chat_pb2.CHAT_ROLE_USER,
    "assistant": chat_pb2.CHAT_ROLE_ASSISTANT,
}


@dataclass(frozen=True, slots=True)
class ResolvedVersion:
    """One version of a prompt, as resolved by the client.

    `proto` and `content` are shared with the cache: never modify them.
    """

    proto: prompt_pb2.PromptVersion
    content: Mapping[str, Any]
    """The version's JSON content document (what `render_content` reads)."""
    stale: bool = False
    """True when the registry was unreachable and this is the label's last known good
    version, which the label may no longer point to."""

    @property
    def prompt(self) -> str:
        """Name of the prompt."""
        return self.proto.prompt

    @property
    def number(self) -> int:
        """The version number."""
        return self.proto.version

    @property
    def content_hash(self) -> str:
        """Hex SHA-256 of the version's canonical content."""
        return self.proto.content_hash


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    """A version rendered locally: what `RenderPrompt` would return, plus staleness."""

    prompt: str
    version: int
    content_hash: str
    messages: tuple[RenderedMessage, ...]
    """The rendered messages of a chat prompt; empty for a text prompt."""
    source: ResolvedVersion
    """The rendered version (parameters, routing, output schema, processing)."""
    text: str | None = None
    """The rendered text template of a text prompt (sent to the model as raw `text`
    input); None for a chat prompt."""

    @property
    def is_text(self) -> bool:
        """Whether this is a text (completion) prompt rather than a chat prompt."""
        return self.text is not None

    @property
    def stale(self) -> bool:
        """True when the last known good version was rendered (registry unreachable)."""
        return self.source.stale

    @property
    def parameters(self) -> generation_pb2.SamplingParameters | None:
        """The version's sampling parameters, if set."""
        proto = self.source.proto
        return proto.parameters if proto.HasField("parameters") else None

    @property
    def routing(self) -> routing_pb2.RoutingPreferences | None:
        """The version's routing preferences, if set."""
        proto = self.source.proto
        return proto.routing if proto.HasField("routing") else None

    @property
    def output_schema(self) -> struct_pb2.Struct | None:
        """The version's output JSON Schema, if set."""
        proto = self.source.proto
        return proto.output_schema if proto.HasField("output_schema") else None

    @property
    def processing(self) -> prompt_pb2.ResponseProcessing | None:
        """The version's response processing, if set."""
        proto = self.source.proto
        return proto.processing if proto.HasField("processing") else None

    def chat_messages(self) -> list[chat_pb2.ChatMessage]:
        """The rendered messages as chat message protos."""
        return [chat_pb2.ChatMessage(role=_ROLES[m.role], content=m.content) for m in self.messages]

    def to_proto(self) -> pb.RenderPromptResponse:
        """The `RenderPromptResponse` the server would have sent."""
        response = pb.RenderPromptResponse(
            prompt=self.prompt,
            version=self.version,
            content_hash=self.content_hash,
            messages=self.chat_messages(),
            text=self.text or "",
        )
        for field in ("parameters", "routing", "output_schema", "processing"):
            if self.source.proto.HasField(field):
                getattr(response, field).CopyFrom(getattr(self.source.proto, field))
        return response


class PromptClientMetrics:
    """The client's Prometheus metrics, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.cache_hits = Counter(
            "genai_prompt_client_cache_hits",
            "Resolutions served from the cache without an RPC.",
            registry=registry,
        )
        self.cache_misses = Counter(
            "genai_prompt_client_cache_misses",
            "Resolutions that asked the registry (GetPromptVersion).",
            registry=registry,
        )
        self.stale_serves = Counter(
            "genai_prompt_client_stale_serves",
            "Resolutions that served a label's last known good version because the registry "
            "was unreachable.",
            ["prompt", "label"],
            registry=registry,
        )
        self.watch_connected = Gauge(
            "genai_prompt_client_watch_connected",
            "1 while the WatchLabels stream is live, else 0.",
            registry=registry,
        )
        self.watch_reconnects = Counter(
            "genai_prompt_client_watch_reconnects",
            "Times the WatchLabels stream was reopened after it failed or ended.",
            registry=registry,
        )
        self.last_event_sequence = Gauge(
            "genai_prompt_client_last_event_sequence",
            "Sequence of the last label event (or snapshot) the watch applied.",
            registry=registry,
        )
        self.registry_errors = Counter(
            "genai_prompt_client_registry_errors",
            "Failed calls to PromptService (GetPromptVersion and the watch), by status code.",
            ["code"],
            registry=registry,
        )


class PromptClient:
    """Resolves and renders prompts for one tenant (the channel's or `metadata`'s credentials)
    from a push-invalidated cache; see the module docstring.

    `prompts` limits the watch to those prompts (empty: every prompt of the tenant); labels of
    other prompts are always resolved with an RPC, and still fall back to their last known good
    version. The channel stays the caller's: `close()` does not close it. For quick reconnects
    after a registry restart, give the channel a short `grpc.max_reconnect_backoff_ms`.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        prompts: Sequence[str] = (),
        registry: CollectorRegistry | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        cache_size: int = 1024,
        rpc_timeout_s: float = 2.0,
        probe_interval_s: float = 1.0,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`rpc_timeout_s` bounds each `GetPromptVersion`; after one found the registry
        unreachable, labels with a last known good version are served from it without asking
        again for `probe_interval_s`. The watch reconnects after a delay that starts near
        `backoff_initial_s` and doubles up to `backoff_max_s` (each with jitter: 50-100%)."""
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self._channel = channel
        self._stub = _Stub(channel)
        self._prompts = tuple(prompts)
        self._watched = frozenset(self._prompts)
        self._metadata = tuple(metadata)
        self._cache_size = cache_size
        self._rpc_timeout_s = rpc_timeout_s
        self._probe_interval_s = probe_interval_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._clock = clock
        self._metrics = PromptClientMetrics(
            registry if registry is not None else CollectorRegistry(auto_describe=True)
        )

        self._versions: OrderedDict[tuple[str, int], ResolvedVersion] = OrderedDict()
        self._labels: dict[tuple[str, str], int] = {}
        """The watch's view: (prompt, label) -> version, for the watched prompts."""
        self._last_good: dict[tuple[str, str], ResolvedVersion] = {}
        """The newest version each label was resolved to: what is served when stale."""
        self._live = False
        self._sequence = 0
        self._resume = False
        """Whether the next watch may resume after `_sequence` (else: a fresh snapshot)."""
        self._next_probe = 0.0
        self._changed = asyncio.Event()
        self._inflight: dict[tuple[object, ...], asyncio.Task[ResolvedVersion]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._watch_task: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Starts watching labels in the background; returns at once (see `wait_connected`)."""
        if self._closed:
            raise RuntimeError("the client is closed")
        if self._watch_task is None:
            self._watch_task = asyncio.create_task(self._run_watch(), name="prompt-label-watch")

    async def close(self) -> None:
        """Stops the watch and every background fetch; the channel stays open."""
        self._closed = True
        tasks: list[asyncio.Task[Any]] = [*self._background, *self._inflight.values()]
        if self._watch_task is not None:
            tasks.append(self._watch_task)
            self._watch_task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._set_live(False)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------------------ state

    @property
    def watch_connected(self) -> bool:
        """Whether the label watch is live, so that label resolution is current."""
        return self._live

    @property
    def last_event_sequence(self) -> int:
        """Sequence of the last label event (or snapshot) applied; watches resume after it."""
        return self._sequence

    @property
    def metrics(self) -> PromptClientMetrics:
        """The client's Prometheus metrics."""
        return self._metrics

    @property
    def metrics_registry(self) -> CollectorRegistry:
        """The registry that holds the client's metrics (expose it to scrape them)."""
        return self._metrics.registry

    async def wait_connected(self) -> None:
        """Returns once the watch is live (bound it with `asyncio.timeout`)."""
        await self._wait_until(lambda: self._live)

    async def wait_for_sequence(self, sequence: int) -> None:
        """Returns once the watch has applied label event `sequence` (e.g. a
        `SetLabelResponse`'s), for reading one's own label moves."""
        await self._wait_until(lambda: self._sequence >= sequence)

    # ------------------------------------------------------------------------------ resolve

    async def resolve(
        self, prompt: str, *, label: str | None = None, version: int | None = None
    ) -> ResolvedVersion:
        """The version `label` points to, or version number `version` (neither: the
        `production` label).

        Raises the registry's errors (`NotFound`, `InvalidArgument`, ...), and `Unavailable`
        when the registry is unreachable and nothing is known to serve instead.
        """
        if version is not None:
            if label is not None:
                raise InvalidArgument(
                    violations=[FieldViolation("version", "set a version or a label, not both")]
                )
            if version < 1:
                raise InvalidArgument(
                    violations=[FieldViolation("version", "must be a version number (>= 1)")]
                )
            return await self._resolve_number(prompt, version)
        return await self._resolve_label(prompt, label or DEFAULT_LABEL)

    async def render(
        self,
        prompt: str,
        variables: Mapping[str, object],
        *,
        label: str | None = None,
        version: int | None = None,
    ) -> RenderedPrompt:
        """Resolves a version (as `resolve`) and renders it here with `variables`.

        Missing, unknown or mistyped variables raise `InvalidArgument` (reason
        VARIABLE_INVALID) naming every one of them, exactly as `RenderPrompt` would.
        """
        resolved = await self.resolve(prompt, label=label, version=version)
        rendered = render_content(resolved.content, variables)
        return RenderedPrompt(
            prompt=resolved.prompt,
            version=resolved.number,
            content_hash=resolved.content_hash,
            messages=tuple(rendered.messages),
            source=resolved,
            text=rendered.text,
        )

    async def _resolve_number(self, prompt: str, number: int) -> ResolvedVersion:
        cached = self._cached(prompt, number)
        if cached is not None:
            self._metrics.cache_hits.inc()
            return cached
        self._metrics.cache_misses.inc()
        return await self._fetch_version(prompt, number)

    async def _resolve_label(self, prompt: str, label: str) -> ResolvedVersion:
        key = (prompt, label)
        if self._live and self._watches(prompt):
            number = self._labels.get(key)
            if number is not None:
                found = self._cached(prompt, number)
                if found is not None:
                    self._metrics.cache_hits.inc()
                else:
                    self._metrics.cache_misses.inc()
                    try:
                        found = await self._fetch_version(prompt, number)
                    except Unavailable as error:
                        return self._serve_stale(key, error)
                if self._labels.get(key) == number:
                    self._last_good[key] = found
                return found
            # Unknown to the live watch: the RPC tells a just-created label from a missing one.
        elif key in self._last_good and self._clock() < self._next_probe:
            return self._serve_stale(key, None)
        self._metrics.cache_misses.inc()
        try:
            found = await self._fetch_label(prompt, label)
        except Unavailable as error:
            return self._serve_stale(key, error)
        except NotFound:
            self._last_good.pop(key, None)
            raise
        self._last_good[key] = found
        return found

    def _serve_stale(self, key: tuple[str, str], error: Unavailable | None) -> ResolvedVersion:
        good = self._last_good.get(key)
        if good is None:
            prompt, label = key
            raise Unavailable(
                f"the prompt registry is unreachable and {prompt}:{label} was never resolved",
                metadata={"service": SERVICE_NAME, "prompt": prompt, "label": label},
            ) from error
        self._metrics.stale_serves.labels(*key).inc()
        return replace(good, stale=True)

    def _watches(self, prompt: str) -> bool:
        return not self._watched or prompt in self._watched

    # ------------------------------------------------------------------------------ cache

    def _cached(self, prompt: str, number: int) -> ResolvedVersion | None:
        found = self._versions.get((prompt, number))
        if found is not None:
            self._versions.move_to_end((prompt, number))
        return found

    def _remember(self, version: prompt_pb2.PromptVersion) -> ResolvedVersion:
        key = (version.prompt, version.version)
        found = self._versions.get(key)
        if found is None:
            found = ResolvedVersion(proto=version, content=version_content(version))
            self._versions[key] = found
            while len(self._versions) > self._cache_size:
                self._versions.popitem(last=False)
        self._versions.move_to_end(key)
        return found

    async def _fetch_version(self, prompt: str, number: int) -> ResolvedVersion:
        request = pb.GetPromptVersionRequest(prompt=prompt, version=number)
        return await self._once(("version", prompt, number), lambda: self._get(request))

    async def _fetch_label(self, prompt: str, label: str) -> ResolvedVersion:
        request = pb.GetPromptVersionRequest(prompt=prompt, label=label)
        return await self._once(("label", prompt, label), lambda: self._get(request))

    async def _once(
        self, key: tuple[object, ...], fetch: Callable[[], Awaitable[ResolvedVersion]]
    ) -> ResolvedVersion:
        """Runs `fetch` once for every concurrent caller asking for `key`."""
        task = self._inflight.get(key)
        if task is None:

            async def run() -> ResolvedVersion:
                return await fetch()

            task = asyncio.create_task(run())
            self._inflight[key] = task

            def done(finished: asyncio.Task[ResolvedVersion]) -> None:
                if self._inflight.get(key) is finished:
                    del self._inflight[key]
                if not finished.cancelled():
                    finished.exception()  # retrieved: no "never retrieved" warning

            task.add_done_callback(done)
        return await asyncio.shield(task)

    async def _get(self, request: pb.GetPromptVersionRequest) -> ResolvedVersion:
        try:
            response = await self._stub.GetPromptVersion(
                request, timeout=self._rpc_timeout_s, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:
            self._metrics.registry_errors.labels(error.code().name).inc()
            if error.code() in UNREACHABLE_CODES:
                self._next_probe = self._clock() + self._probe_interval_s
            raise domain_error(error) from error
        self._next_probe = 0.0
        return self._remember(response.version)

    def _prefetch(self, key: tuple[str, str], number: int) -> None:
        """Fetches the version a label moved to, so the next resolution of it is warm."""
        if self._closed or self._cached(key[0], number) is not None:
            self._adopt(key, number)
            return

        async def fetch() -> None:
            try:
                await self._fetch_version(key[0], number)
            except DomainError as error:
                _logger.debug("prefetching %s@%d failed: %s", key[0], number, error)
                return
            self._adopt(key, number)

        task = asyncio.create_task(fetch())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _adopt(self, key: tuple[str, str], number: int) -> None:
        found = self._cached(key[0], number)
        if found is not None and self._labels.get(key) == number:
            self._last_good[key] = found

    # ------------------------------------------------------------------------------ watch

    async def _run_watch(self) -> None:
        failures = 0
        reconnect = False
        while True:
            if reconnect:
                self._metrics.watch_reconnects.inc()
            reconnect = True
            try:
                await self._watch_once()
                _logger.warning("the label watch ended; reconnecting")
            except grpc.aio.AioRpcError as error:
                self._metrics.registry_errors.labels(error.code().name).inc()
                if error.code() not in _RESUMABLE_CODES:
                    self._resume = False  # e.g. a rejected resume: start over from a snapshot
                log = _logger.warning if self._live or not failures else _logger.info
                log("the label watch failed (%s); reconnecting", error.code().name)
            except Exception:
                self._resume = False
                _logger.exception("the label watch failed; reconnecting with a snapshot")
            failures = 1 if self._live else failures + 1
            self._set_live(False)
            step = min(self._backoff_max_s, self._backoff_initial_s * 2 ** (failures - 1))
            await asyncio.sleep(step * random.uniform(0.5, 1.0))

    async def _watch_once(self) -> None:
        after = self._sequence if self._resume else 0
        call = self._stub.WatchLabels(
            pb.WatchLabelsRequest(prompts=self._prompts, after_sequence=after),
            metadata=self._metadata,
        )
        # A resumed watch sends no snapshot, and maybe nothing for long (the server sends its
        # initial metadata only with the first message): it is live once the channel is
        # connected, the events it missed coming first.
        confirm = asyncio.create_task(self._confirm_resumed(call)) if after else None
        try:
            async for response in call:
                if response.HasField("snapshot"):
                    self._apply_snapshot(response.snapshot)
                elif response.HasField("event"):
                    self._apply_event(response.event)
        finally:
            call.cancel()
            if confirm is not None:
                confirm.cancel()

    async def _confirm_resumed(self, call: grpc.aio.Call) -> None:
        state = self._channel.get_state(try_to_connect=True)
        while state != grpc.ChannelConnectivity.READY:
            await self._channel.wait_for_state_change(state)
            state = self._channel.get_state(try_to_connect=True)
        if not call.done():
            self._set_live(True)

    def _apply_snapshot(self, snapshot: pb.LabelSnapshot) -> None:
        self._labels = {(label.prompt, label.name): label.version for label in snapshot.labels}
        for key in list(self._last_good):
            if self._watches(key[0]) and key not in self._labels:
                del self._last_good[key]  # deleted while we were not watching
        for key, good in list(self._last_good.items()):
            number = self._labels.get(key)
            if number is not None and number != good.number:
                self._prefetch(key, number)
        self._advance(snapshot.sequence)
        self._set_live(True)

    def _apply_event(self, event: prompt_pb2.LabelEvent) -> None:
        key = (event.prompt, event.label)
        if event.kind == prompt_pb2.LABEL_EVENT_KIND_DELETED or not event.to_version:
            self._labels.pop(key, None)
            self._last_good.pop(key, None)
        else:
            self._labels[key] = event.to_version
            if key in self._last_good:
                self._prefetch(key, event.to_version)
        self._advance(max(self._sequence, event.sequence))

    def _advance(self, sequence: int) -> None:
        self._sequence = sequence
        self._resume = True
        self._metrics.last_event_sequence.set(sequence)
        self._notify()

    def _set_live(self, live: bool) -> None:
        if live and not self._live:
            self._next_probe = 0.0
            _logger.info("the label watch is live after sequence %d", self._sequence)
        self._live = live
        self._metrics.watch_connected.set(1 if live else 0)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()


# -------------------------------------------------------------------------- clients per tenant


class PromptClients:
    """A started `PromptClient` per tenant, made on first use by `factory(tenant)` (whose calls
    carry that tenant's credentials); at most `max_clients` are kept, the least recently used
    closed first. The gateway and the evaluation runs keep their tenants' clients here."""

    def __init__(self, factory: Callable[[str], PromptClient], *, max_clients: int = 256) -> None:
        self._factory = factory
        self._max_clients = max_clients
        self._clients: OrderedDict[str, PromptClient] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    async def get(self, tenant_id: str) -> PromptClient:
        """The tenant's client."""
        client = self._clients.get(tenant_id)
        if client is not None:
            self._clients.move_to_end(tenant_id)
            return client
        client = self._clients[tenant_id] = self._factory(tenant_id)
        await client.start()
        while len(self._clients) > self._max_clients:
            _, evicted = self._clients.popitem(last=False)
            task = asyncio.create_task(evicted.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return client

    async def close(self) -> None:
        """Closes every client."""
        clients, self._clients = list(self._clients.values()), OrderedDict()
        for client in clients:
            await client.close()
        for task in list(self._closing):
            await task


# ---------------------------------------------------------------------------------- errors


def domain_error(error: grpc.aio.AioRpcError) -> DomainError:
    """The domain exception for a failed PromptService call (see `remote_error`)."""
    return remote_error(error, service=SERVICE_NAME, what="the prompt registry")
