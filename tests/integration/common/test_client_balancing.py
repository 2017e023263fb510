"""Channels over replicas: round robin over every address, no calls to a replica that is not
SERVING, retries of idempotent RPCs (and of nothing else) when a replica fails or is killed,
DNS targets, the `genai` command line, and the platform's own channels to its dependencies.

The replicas are real grpc.aio servers in this process on port 0 (`start_server`, so with the
standard health service), serving the real contract's GatewayService and PromptService with
behaviour the tests steer: each answers with its own name and counts every attempt it sees.
"""

import asyncio
import itertools
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import grpc
import grpc.aio
import pytest
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from genai.prompt.v1 import prompt_service_pb2, prompt_service_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services import cli
from services.common.auth import AnonymousAuthenticator
from services.common.clients import TARGET_ENV, ClientTlsConfig, create_channel
from services.common.grpc_types import ServerInterceptor, ServicerContext
from services.common.interceptors import default_interceptors
from services.common.server import RunningServer, ServiceRegistration, TlsConfig, start_server
from services.common.validation import Validators
from services.platform.runner import start_platform
from services.platform.settings import PlatformSettings
from services.prompt import server as prompt_server
from services.prompt.config import PromptSettings
from tests.support.settings import inference_without_triton, router_without_triton
from tests.support.tls import make_certificates

if TYPE_CHECKING:
    GatewayStub = gateway_service_pb2_grpc.GatewayServiceAsyncStub
    PromptStub = prompt_service_pb2_grpc.PromptServiceAsyncStub
else:
    GatewayStub = gateway_service_pb2_grpc.GatewayServiceStub
    PromptStub = prompt_service_pb2_grpc.PromptServiceStub

INFO = gateway_service_pb2.GetServerInfoRequest()
TENANT = gateway_service_pb2.CreateTenantRequest(tenant=gateway_pb2.Tenant(id="acme"))
WATCH = prompt_service_pb2.WatchLabelsRequest()
PROMPT_SERVICE = "genai.prompt.v1.PromptService"


@dataclass
class Replica:
    """One server and the behaviour the test gives it; `attempts` counts every RPC attempt
    that reached it, by method name."""

    name: str
    server: RunningServer | None = None
    attempts: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    """How many of the next attempts of each method fail UNAVAILABLE before any response."""
    holding: bool = False
    """Whether calls wait (for `release`, or until the server is killed) before answering."""
    release: asyncio.Event = field(default_factory=asyncio.Event)
    cut_watches: bool = False
    """Whether WatchLabels fails UNAVAILABLE after its first message (headers sent)."""
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def address(self) -> str:
        assert self.server is not None
        return self.server.address

    async def attempt(self, method: str, context: ServicerContext) -> None:
        """Counts an attempt, then fails, holds or returns as the test asked."""
        self.attempts[method] += 1
        async with self._arrived:
            self._arrived.notify_all()
        if self.failures[method] > 0:
            self.failures[method] -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} fails {method}")
        if self.holding:
            await self.release.wait()

    async def wait_for(self, method: str, attempts: int) -> None:
        """Returns once `attempts` attempts of `method` have reached this replica."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: self.attempts[method] >= attempts)

    async def set_serving(self, serving: bool) -> None:
        """Sets the health status that balanced channels watch."""
        assert self.server is not None
        await self.server.set_serving(serving)


class _Gateway(gateway_service_pb2_grpc.GatewayServiceServicer):
    def __init__(self, replica: Replica) -> None:
        self._replica = replica

    async def GetServerInfo(
        self, request: gateway_service_pb2.GetServerInfoRequest, context: ServicerContext
    ) -> gateway_service_pb2.GetServerInfoResponse:
        await self._replica.attempt("GetServerInfo", context)
        return gateway_service_pb2.GetServerInfoResponse(version=self._replica.name)

    async def CreateTenant(
        self, request: gateway_service_pb2.CreateTenantRequest, context: ServicerContext
    ) -> gateway_service_pb2.CreateTenantResponse:
        await self._replica.attempt("CreateTenant", context)
        return gateway_service_pb2.CreateTenantResponse(tenant=request.tenant)


class _Prompts(prompt_service_pb2_grpc.PromptServiceServicer):
    def __init__(self, replica: Replica) -> None:
        self._replica = replica

    async def WatchLabels(
        self, request: prompt_service_pb2.WatchLabelsRequest, context: ServicerContext
    ) -> AsyncIterator[prompt_service_pb2.WatchLabelsResponse]:
        await self._replica.attempt("WatchLabels", context)
        yield prompt_service_pb2.WatchLabelsResponse(
            snapshot=prompt_service_pb2.LabelSnapshot(sequence=7)
        )
        if self._replica.cut_watches:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self._replica.name} went away")


def _registrations(replica: Replica) -> list[ServiceRegistration]:
    gateway = _Gateway(replica)  # type: ignore[abstract]  # the other RPCs are not called
    prompts = _Prompts(replica)  # type: ignore[abstract]

    def add_gateway(server: grpc.aio.Server) -> None:
        gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(gateway, server)

    def add_prompts(server: grpc.aio.Server) -> None:
        prompt_service_pb2_grpc.add_PromptServiceServicer_to_server(prompts, server)

    return [
        ServiceRegistration(name="genai.gateway.v1.GatewayService", add_to_server=add_gateway),
        ServiceRegistration(name=PROMPT_SERVICE, add_to_server=add_prompts),
    ]


class StartReplicas(Protocol):
    def __call__(self, *names: str) -> Awaitable[list[Replica]]: ...


@pytest.fixture
async def replicas() -> AsyncIterator[StartReplicas]:
    """Starts one replica per name; stops those still running at the end."""
    started: list[Replica] = []

    async def start(*names: str) -> list[Replica]:
        made = [Replica(name) for name in names]
        for replica in made:
            replica.server = await start_server(
                bind="127.0.0.1:0", registrations=_registrations(replica), interceptors=[], grace=0
            )
            started.append(replica)
        return made

    yield start
    for replica in started:
        replica.release.set()
        assert replica.server is not None
        await replica.server.stop(0)


async def _answers(stub: GatewayStub, calls: int) -> list[str]:
    """The replica names that answered `calls` GetServerInfo calls, made one after another."""
    return [(await stub.GetServerInfo(INFO, timeout=5)).version for _ in range(calls)]


async def _until(stub: GatewayStub, done: Callable[[list[str]], bool], limit: int = 100) -> None:
    """Calls GetServerInfo until `done(answers so far)`: connections and health updates reach
    the client's balancer asynchronously. Fails after `limit` calls."""
    answers: list[str] = []
    while not done(answers):
        assert len(answers) < limit, f"still not there after {limit} calls: {answers}"
        answers += await _answers(stub, 1)


def _both_answered(answers: list[str]) -> bool:
    return {"a", "b"} <= set(answers)


async def test_calls_over_two_addresses_go_round_robin_to_both(replicas: StartReplicas) -> None:
    a, b = await replicas("a", "b")
    async with create_channel(f"{a.address},{b.address}") as channel:
        stub = GatewayStub(channel)
        await _until(stub, _both_answered)  # both connections up

        answers = await _answers(stub, 20)

    # Round robin: strictly alternating, 10 each (pick_first would send all 20 to one).
    assert Counter(answers) == {"a": 10, "b": 10}
    assert all(first != second for first, second in itertools.pairwise(answers))


async def test_a_replica_that_is_not_serving_gets_no_new_calls(replicas: StartReplicas) -> None:
    a, b = await replicas("a", "b")
    async with create_channel(f"{a.address},{b.address}") as channel:
        stub = GatewayStub(channel)
        await _until(stub, _both_answered)

        await a.set_serving(False)
        await _until(stub, lambda answers: answers[-5:] == ["b"] * 5)
        before = a.attempts["GetServerInfo"]
        answers = await _answers(stub, 20)
        assert answers == ["b"] * 20
        assert a.attempts["GetServerInfo"] == before

        await a.set_serving(True)
        await _until(stub, lambda answers: "a" in answers)  # back in the rotation


async def test_idempotent_calls_survive_a_killed_replica_and_the_rest_are_not_retried(
    replicas: StartReplicas,
) -> None:
    a, b = await replicas("a", "b")
    async with create_channel(f"{a.address},{b.address}") as channel:
        stub = GatewayStub(channel)
        await _until(stub, _both_answered)
        a.holding = True  # a answers nothing from now on: its calls are in flight at the kill

        # A CreateTenant in flight on a (b answers the ones it gets at once).
        cut_tenant: asyncio.Future[Any] | None = None
        for _ in range(4):
            call = asyncio.ensure_future(stub.CreateTenant(TENANT, timeout=10))
            arrived = asyncio.ensure_future(a.wait_for("CreateTenant", 1))
            await asyncio.wait({call, arrived}, return_when=asyncio.FIRST_COMPLETED)
            if arrived.done():
                cut_tenant = call
                break
            arrived.cancel()
            await call  # answered by b
        assert cut_tenant is not None, "no CreateTenant reached replica a"
        tenants_on_b = b.attempts["CreateTenant"]

        # Six GetServerInfo calls: round robin puts three on a, where they wait.
        info_on_a, info_on_b = a.attempts["GetServerInfo"], b.attempts["GetServerInfo"]
        infos = [asyncio.ensure_future(stub.GetServerInfo(INFO, timeout=10)) for _ in range(6)]
        await a.wait_for("GetServerInfo", info_on_a + 3)

        assert a.server is not None
        await a.server.stop(0)  # killed: its in-flight calls fail UNAVAILABLE

        # Every idempotent call succeeds: the three cut on a were retried on b.
        assert [(await info).version for info in infos] == ["b"] * 6
        assert a.attempts["GetServerInfo"] == info_on_a + 3
        assert b.attempts["GetServerInfo"] == info_on_b + 6
        # The non-idempotent call fails and was attempted once: it may have happened on a.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await cut_tenant
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (a.attempts["CreateTenant"], b.attempts["CreateTenant"]) == (1, tenants_on_b)
        # And new calls go to the survivor.
        assert await _answers(stub, 6) == ["b"] * 6


async def test_one_address_retries_idempotent_rpcs_until_response_headers_only(
    replicas: StartReplicas,
) -> None:
    [a] = await replicas("a")
    async with create_channel(a.address) as channel:
        gateway, prompts = GatewayStub(channel), PromptStub(channel)

        a.failures["GetServerInfo"] = 2
        assert (await gateway.GetServerInfo(INFO, timeout=5)).version == "a"
        assert a.attempts["GetServerInfo"] == 3

        a.failures["CreateTenant"] = 1
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.CreateTenant(TENANT, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert a.attempts["CreateTenant"] == 1

        # A stream that fails before its first message is retried like a unary call ...
        a.failures["WatchLabels"] = 1
        watch = prompts.WatchLabels(WATCH, timeout=5)
        first = await watch.read()
        assert isinstance(first, prompt_service_pb2.WatchLabelsResponse)
        assert first.snapshot.sequence == 7
        watch.cancel()
        assert a.attempts["WatchLabels"] == 2
        # ... but once a message has arrived, its failure is the caller's to handle.
        a.cut_watches = True
        watch = prompts.WatchLabels(WATCH, timeout=5)
        received = [response async for response in _until_error(watch)]
        assert len(received) == 1
        assert await watch.code() == grpc.StatusCode.UNAVAILABLE
        assert a.attempts["WatchLabels"] == 3

    # Without retries the same failure reaches the caller: the retry policy did the work.
    async with create_channel(a.address, options=[("grpc.enable_retries", 0)]) as channel:
        a.failures["GetServerInfo"] = 1
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await GatewayStub(channel).GetServerInfo(INFO, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def _until_error(call: Any) -> AsyncIterator[Any]:
    """The messages of a response stream until it ends, with or without an error."""
    try:
        async for message in call:
            yield message
    except grpc.aio.AioRpcError:
        return


async def test_a_dns_target_dials_the_addresses_of_the_name(replicas: StartReplicas) -> None:
    [a] = await replicas("a")
    port = a.address.rpartition(":")[2]
    async with create_channel(f"dns:///localhost:{port}") as channel:
        assert await _answers(GatewayStub(channel), 3) == ["a"] * 3


async def test_tls_over_a_list_checks_the_certificates_name(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)  # for DNS:localhost
    tls = TlsConfig(
        certificate_chain=certificates / "server.crt", private_key=certificates / "server.key"
    )
    counts: list[Counter[str]] = [Counter(), Counter()]
    servers = [
        await start_server(
            bind="127.0.0.1:0",
            registrations=[],
            interceptors=[_CountCalls(count)],
            tls=tls,
            grace=0,
        )
        for count in counts
    ]
    client_tls = ClientTlsConfig(root_ca=certificates / "server.crt", server_name="localhost")
    try:
        async with create_channel(",".join(s.address for s in servers), tls=client_tls) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(50):  # until both connections are up and have answered
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                if all(count["/grpc.health.v1.Health/Check"] for count in counts):
                    break
    finally:
        for server in servers:
            await server.stop(0)
    assert all(count["/grpc.health.v1.Health/Check"] for count in counts), counts


async def test_genai_info_takes_a_list_of_targets(
    replicas: StartReplicas,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = await replicas("a", "b")
    monkeypatch.setenv(TARGET_ENV, f"{a.address},{b.address}")

    # The command runs its own event loop: in a thread, while this loop serves the replicas.
    versions = []
    for arguments in (["info"], ["info", "--target", f"{b.address},{a.address}"]):
        assert await asyncio.to_thread(cli.main, arguments) == 0
        versions.append(json.loads(capsys.readouterr().out)["version"])
    assert set(versions) <= {"a", "b"}


class _CountCalls(ServerInterceptor):
    def __init__(self, counts: Counter[str]) -> None:
        self._counts = counts

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        self._counts[details.method] += 1
        return await continuation(details)


async def test_the_platforms_channels_spread_calls_over_every_listed_replica(
    tmp_path: Path,
) -> None:
    """A gateway whose `gateway.targets.prompt` lists two PromptService servers calls both:
    `ChannelPool` makes its channels with `create_channel`. No Triton: only calls that end at
    PromptService."""
    counts: list[Counter[str]] = [Counter(), Counter()]
    settings = PromptSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'prompts.db'}")
    registrations = [prompt_server.registration(settings=settings) for _ in counts]
    servers: list[RunningServer] = []
    try:
        for registration, count in zip(registrations, counts, strict=True):
            assert registration.start is not None
            await registration.start()
            chain = default_interceptors(
                authenticator=AnonymousAuthenticator(), validators=Validators()
            )
            servers.append(
                await start_server(
                    bind="127.0.0.1:0",
                    registrations=[registration],
                    interceptors=[_CountCalls(count), *chain],
                    grace=0,
                )
            )
        gateway = await start_platform(
            PlatformSettings.model_validate(
                {
                    "auth": {"mode": "none"},
                    "server": {"port": 0},
                    "services": ("gateway", "router", "inference"),
                    "inference": inference_without_triton(),
                    "router": router_without_triton(),
                    "gateway": {
                        "targets": {"prompt": ",".join(server.address for server in servers)}
                    },
                }
            )
        )
        try:
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                stub = GatewayStub(channel)
                for _ in range(10):  # each checks PromptService's health
                    info = await stub.GetServerInfo(INFO, timeout=10)
                    [prompt] = [d for d in info.dependencies if d.service == PROMPT_SERVICE]
                    assert prompt.status == "SERVING"
                for number in range(8):  # each asks PromptService for the prompt
                    request = gateway_service_pb2.CompleteRequest(prompt=f"missing-{number}")
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await stub.Complete(request, timeout=10)
                    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            await gateway.stop(grace=0)
    finally:
        for server in servers:
            await server.stop(0)
        for registration in registrations:
            assert registration.stop is not None
            await registration.stop()

    checks = [count["/grpc.health.v1.Health/Check"] for count in counts]
    fetches = [count[f"/{PROMPT_SERVICE}/GetPromptVersion"] for count in counts]
    assert sum(checks) == 10
    assert sum(fetches) == 8
    # Both replicas got calls (pick_first would send every one to one of them), and both are
    # health-checked by the gateway's channel itself.
    assert min(checks) > 0, counts
    assert min(fetches) > 0, counts
    assert all(count["/grpc.health.v1.Health/Watch"] >= 1 for count in counts), counts
