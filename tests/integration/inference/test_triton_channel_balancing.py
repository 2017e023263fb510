"""InferenceService's channels to Triton: one `host:port` goes to that server; a target naming
several (a headless Service as `dns:///name:port`, an `ipv4:` list) spreads requests round
robin over all of them, and a `dns:` channel is renewed after a while so that the name is
resolved again (Triton pods added by an autoscaler get calls), as the Kubernetes deployment
relies on (deploy/README.md)."""

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from services.inference.adapters.triton import TritonBackend, triton_channel
from services.inference.core.model import BackendSpec
from services.platform.runner import ChannelPool

METHOD = "/inference.GRPCInferenceService/ServerLive"


class _Counting(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self, name: str, served: Counter[str]) -> None:
        self.name = name
        self.served = served

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> "grpc.RpcMethodHandler[bytes, bytes] | None":
        if handler_call_details.method != METHOD:
            return None

        async def answer(request: bytes, context: object) -> bytes:
            self.served[self.name] += 1
            return b""

        return grpc.unary_unary_rpc_method_handler(answer)


@pytest.fixture
async def servers() -> AsyncIterator[tuple[list[int], Counter[str]]]:
    served: Counter[str] = Counter()
    started = []
    ports = []
    for name in ("a", "b"):
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([_Counting(name, served)])
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        started.append(server)
    yield ports, served
    for server in started:
        await server.stop(None)


async def _call(target: str, times: int) -> None:
    channel = triton_channel(target)
    try:
        live = channel.unary_unary(METHOD, None, None)
        for _ in range(times):
            await live(b"", timeout=5, wait_for_ready=True)
    finally:
        await channel.close(None)


async def test_a_list_of_tritons_is_balanced_round_robin(
    servers: tuple[list[int], Counter[str]],
) -> None:
    ports, served = servers
    await _call(f"ipv4:127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}", 20)
    assert served["a"] + served["b"] == 20
    assert min(served["a"], served["b"]) >= 8  # round robin, not the first address only


async def test_a_dns_name_is_balanced_over_its_addresses(
    servers: tuple[list[int], Counter[str]],
) -> None:
    ports, served = servers
    # localhost resolves to one address here; what matters is that the dns: scheme dials with
    # the balancing service config and reaches the server.
    await _call(f"dns:///localhost:{ports[0]}", 3)
    assert served["a"] == 3


async def test_one_host_and_port_is_that_server(servers: tuple[list[int], Counter[str]]) -> None:
    ports, served = servers
    await _call(f"127.0.0.1:{ports[1]}", 5)
    assert served == Counter({"b": 5})


async def test_a_dns_channel_is_renewed_and_the_old_one_drains(
    servers: tuple[list[int], Counter[str]],
) -> None:
    ports, served = servers
    now = [0.0]
    pool = ChannelPool(
        factory=triton_channel, refresh_seconds=60, drain_seconds=5, clock=lambda: now[0]
    )
    target = f"dns:///localhost:{ports[0]}"
    fixed = f"127.0.0.1:{ports[1]}"
    try:
        first, first_fixed = pool.get(target), pool.get(fixed)
        assert pool.get(target) is first
        live = first.unary_unary(METHOD, None, None)
        await live(b"", timeout=5, wait_for_ready=True)
        now[0] = 61.0
        second = pool.get(target)
        assert second is not first  # resolved again: pods added since are reachable
        assert pool.get(fixed) is first_fixed  # a fixed address has nothing to resolve
        assert pool.get(target) is second
        await second.unary_unary(METHOD, None, None)(b"", timeout=5, wait_for_ready=True)
        for _ in range(100):  # the retired channel closes once its calls are done
            if first.get_state() == grpc.ChannelConnectivity.SHUTDOWN:
                break
            await asyncio.sleep(0.02)
        assert first.get_state() == grpc.ChannelConnectivity.SHUTDOWN
        assert served["a"] == 2
    finally:
        await pool.close()


async def test_the_triton_backend_follows_a_renewed_channel() -> None:
    channels = [grpc.aio.insecure_channel("127.0.0.1:1"), grpc.aio.insecure_channel("127.0.0.1:2")]
    current = [channels[0]]
    backend = TritonBackend(channel_for=lambda endpoint: current[0])
    spec = BackendSpec(
        id="t", endpoint="dns:///triton-headless:8001", backend_model="ensemble", max_in_flight=8
    )
    stub, streamer = backend._stub(spec), backend._streamer(spec)
    assert backend._stub(spec) is stub
    assert backend._streamer(spec) is streamer
    current[0] = channels[1]
    assert backend._stub(spec) is not stub
    assert backend._streamer(spec) is not streamer
    for channel in channels:
        await channel.close(None)
