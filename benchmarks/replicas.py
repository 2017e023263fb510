"""Benchmark `replicas`: the platform as a company runs it, several replicas of each service over
one PostgreSQL and one Redis, in front of two Tritons, with processes SIGKILLed under load.

Topology, every process on this machine (`genai serve` as an operator starts it, API keys on,
one internal token shared by the deployment):
- two gateway processes (GatewayService with RouterService and InferenceService in process),
  quotas in Redis, tenants and the request log in PostgreSQL;
- two PromptService processes on one PostgreSQL schema (the gateways reach them as one
  `round_robin` target of both addresses);
- one ExperimentService and one EvaluationService process (evaluation reaching the gateways);
- migrated first by the migration Job's command (`genai migrate`), which also makes the run's
  platform-admin key.

The processes take their command lines and variables from the Kubernetes manifests
(deploy/kubernetes/overlays/cpu), replacing only what names the cluster
(`benchmarks.deployment.LOCAL_VALUES`), so the two cannot drift apart.
- two Tritons serving `zero` paced like a GPU decoding (`tokens` tokens, `interval` apart).

Phases:
1. **Propagation**, on a quiet platform: label moves through one PromptService replica until a
   `PromptClient` watching the other has them (both ways), against the floor of a bare
   PostgreSQL NOTIFY round trip measured in the same run; API-key revocations and quota
   changes made through one gateway until the other gateway applies them.
2. **Faults**: a client balancing `round_robin` over both gateways keeps `concurrency` streams
   in flight for `duration` seconds while label moves go on through random PromptService
   replicas and a watcher follows each replica. One gateway, then one Triton, then one
   PromptService process is SIGKILLed and restarted `pause` seconds later.
3. **Scale**: streams/s through one gateway against both, alternated, at the same
   concurrency.

The report ends with a PASS/FAIL line per target of issue #12; the JSON and PNG hold the
timeline, the delays and every count.
"""

import asyncio
import contextlib
import math
import os
import random
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import grpc
import grpc.aio
from genai.common.v1 import chat_pb2, generation_pb2, routing_pb2
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from genai.prompt.v1 import prompt_pb2, prompt_service_pb2, prompt_service_pb2_grpc

from benchmarks.cli import ROOT, benchmark_parser, shown, write_outputs
from benchmarks.deployment import (
    EVALUATION_DEPLOYMENT,
    EXPERIMENT_DEPLOYMENT,
    GATEWAY_DEPLOYMENT,
    MIGRATION_JOB,
    MODEL,
    POSTGRES_URL,
    PROMPT_DEPLOYMENT,
    REDIS_URL,
    LocalValues,
    Replica,
    Shared,
    Tritons,
    check_probes,
    hosted,
    migrate,
    paced_repository,
    process_env,
    zero_catalog,
)
from benchmarks.inference import (
    RUN_ROOT,
)
from benchmarks.replicas_report import (
    DEFAULT,
    NAME,
    QUICK,
    STREAM_DEADLINE_S,
    Fault,
    Phase,
    ReplicasConfig,
    ReplicasRun,
    StreamRecord,
    report,
    targets,
)
from benchmarks.stats import (
    Progress,
    environment,
    with_load_at_end,
)

if TYPE_CHECKING:
    GatewayStub = gateway_service_pb2_grpc.GatewayServiceAsyncStub
    PromptStub = prompt_service_pb2_grpc.PromptServiceAsyncStub
else:
    GatewayStub = gateway_service_pb2_grpc.GatewayServiceStub
    PromptStub = prompt_service_pb2_grpc.PromptServiceStub

DESCRIPTION: Final = (
    "Two gateways, two PromptServices, an ExperimentService, an EvaluationService and two Tritons over one "
    "PostgreSQL and one Redis: propagation delays, then SIGKILLs under load, then 2 vs 1 "
    "gateway throughput."
)
TENANT: Final = "bench"
PROBE_TENANT: Final = "bench-probe"
PROMPT: Final = "chat"
MOVED_PROMPTS: Final = tuple(f"bench-moves-{i}" for i in range(4))
MESSAGE: Final = "Stream through a platform that loses a process now and then"


# ------------------------------------------------------------------------------------ clients


def channel(target: str, key: str) -> grpc.aio.Channel:
    from services.common.clients import api_key_metadata, create_channel

    return create_channel(target, metadata=api_key_metadata(key))


def stream_request(tokens: int, request_id: str = "") -> gateway_service_pb2.StreamCompleteRequest:
    request = gateway_service_pb2.StreamCompleteRequest(
        prompt=PROMPT,
        routing=routing_pb2.RoutingPreferences(model=MODEL),
        parameters=generation_pb2.SamplingParameters(max_tokens=tokens),
        request_id=request_id,
    )
    request.variables.update({"message": MESSAGE})
    return request


async def stream_once(
    stub: GatewayStub, tokens: int, record: StreamRecord, clock: Callable[[], float]
) -> None:
    """One StreamComplete, its outcome written into `record`."""
    from services.common.status import error_details

    call = stub.StreamComplete(stream_request(tokens, record.request_id), timeout=STREAM_DEADLINE_S)
    try:
        async for message in call:
            kind = message.WhichOneof("event")
            if kind == "delta":
                record.received_tokens += message.delta.text.count("tok")
            elif kind == "final":
                usage = message.final.usage
                record.final = True
                record.usage_tokens = usage.input_tokens + usage.output_tokens
                record.gateway = message.final.backend_id
        record.code = "OK" if record.final else "NO_FINAL"
    except grpc.aio.AioRpcError as error:
        parsed = error_details(error)
        record.code = error.code().name
        record.reason = parsed.reason or ""
        record.retry_info = parsed.retry_after is not None
        metadata = parsed.metadata
        if "input_tokens" in metadata:
            record.usage_tokens = int(metadata["input_tokens"]) + int(
                metadata.get("output_tokens", 0)
            )
    finally:
        record.ended = clock()


async def admin_setup(gateway: str, prompt: str, admin_key: str) -> tuple[str, str]:
    """The bench tenant and the probe tenant, a key of each, their prompts, and the moved
    prompts (two versions each, `production` at 1). Returns both keys."""
    from services.prompt.cli import seed_prompts

    keys = []
    async with channel(gateway, admin_key) as admin_channel:
        admin = GatewayStub(admin_channel)
        for tenant in (TENANT, PROBE_TENANT):
            await admin.CreateTenant(
                gateway_service_pb2.CreateTenantRequest(
                    tenant=gateway_pb2.Tenant(id=tenant, display_name=f"scripts/bench {NAME}")
                ),
                timeout=30,
            )
            created = await admin.CreateApiKey(
                gateway_service_pb2.CreateApiKeyRequest(
                    tenant_id=tenant, role=gateway_pb2.ROLE_TENANT_ADMIN
                ),
                timeout=30,
            )
            keys.append(created.secret)
    for key in keys:
        async with channel(prompt, key) as seeding:
            report = await seed_prompts(seeding, ROOT / "prompts")
            if report.failures:
                raise RuntimeError("pushing the sample prompts failed:\n" + "\n".join(report.lines))
    async with channel(prompt, keys[0]) as prompt_channel:
        stub = PromptStub(prompt_channel)
        for name in MOVED_PROMPTS:
            await stub.CreatePrompt(
                prompt_service_pb2.CreatePromptRequest(prompt=prompt_pb2.Prompt(name=name))
            )
            for number in (1, 2):
                message = chat_pb2.ChatMessage(role=chat_pb2.CHAT_ROLE_USER, content=f"v{number}")
                await stub.CreatePromptVersion(
                    prompt_service_pb2.CreatePromptVersionRequest(
                        prompt=name, version=prompt_pb2.PromptVersion(messages=[message])
                    )
                )
            await stub.SetLabel(
                prompt_service_pb2.SetLabelRequest(prompt=name, label="production", version=1)
            )
    return keys[0], keys[1]


# ------------------------------------------------------------------------------------ phase 1


async def notify_floor(samples: int) -> list[float]:
    """Milliseconds from `pg_notify` (committed) to a LISTEN connection's callback: the floor
    under any pushed label move, on this machine, now."""
    import asyncpg
    from sqlalchemy.engine import make_url

    dsn = make_url(POSTGRES_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    listener = await asyncpg.connect(dsn)
    sender = await asyncpg.connect(dsn)
    arrived: asyncio.Queue[float] = asyncio.Queue()
    channel_name = f"genai_bench_floor_{uuid.uuid4().hex[:8]}"
    try:
        await listener.add_listener(
            channel_name, lambda *_: arrived.put_nowait(time.perf_counter())
        )
        delays = []
        for _ in range(samples):
            sent = time.perf_counter()
            await sender.execute("SELECT pg_notify($1, 'x')", channel_name)
            delays.append((await asyncio.wait_for(arrived.get(), 5) - sent) * 1e3)
            await asyncio.sleep(0.01)
        return delays
    finally:
        await listener.close()
        await sender.close()


async def label_propagation(
    replicas: Sequence[Replica], key: str, moves: int, interval_s: float
) -> tuple[dict[str, list[float]], list[float]]:
    """Milliseconds from a SetLabel through one replica to a `PromptClient` watching the
    other having the move, each way; and how long the SetLabel calls themselves took (the
    commit, before anything can be pushed)."""
    from services.prompt.client import PromptClient

    delays: dict[str, list[float]] = {}
    writes: list[float] = []
    for source, watched in ((0, 1), (1, 0)):
        async with (
            channel(replicas[source].address, key) as writing,
            channel(replicas[watched].address, key) as watching,
        ):
            stub = PromptStub(writing)
            client = PromptClient(watching, prompts=list(MOVED_PROMPTS))
            await client.start()
            try:
                await asyncio.wait_for(client.wait_connected(), 10)
                found = []
                for move in range(moves):
                    sent = time.perf_counter()
                    reply = await stub.SetLabel(
                        prompt_service_pb2.SetLabelRequest(
                            prompt=MOVED_PROMPTS[move % len(MOVED_PROMPTS)],
                            label="production",
                            version=2 - move % 2,
                        ),
                        timeout=10,
                    )
                    writes.append((time.perf_counter() - sent) * 1e3)
                    await asyncio.wait_for(client.wait_for_sequence(reply.event.sequence), 10)
                    found.append((time.perf_counter() - sent) * 1e3)
                    await asyncio.sleep(interval_s)
            finally:
                await client.close()
        delays[f"{replicas[source].name} -> {replicas[watched].name}"] = found
    return delays, writes


async def _until(check: Callable[[], Awaitable[bool]], patience_s: float = 10.0) -> float:
    """Milliseconds until `check()` holds (asked every 5 ms); NaN when it never does."""
    started = time.perf_counter()
    while time.perf_counter() - started < patience_s:
        if await check():
            return (time.perf_counter() - started) * 1e3
        await asyncio.sleep(0.005)
    return math.nan


LISTING: Final = gateway_service_pb2.ListRequestLogsRequest(page_size=1)
"""A cheap call that needs a valid key."""


async def revocations(gateways: Sequence[Replica], admin_key: str, trials: int) -> list[float]:
    """Milliseconds from RevokeApiKey on one gateway until the other refuses the key, which
    it had verified (and cached) just before."""
    delays = []
    async with channel(gateways[0].address, admin_key) as admin_channel:
        admin = GatewayStub(admin_channel)
        for _ in range(trials):
            created = await admin.CreateApiKey(
                gateway_service_pb2.CreateApiKeyRequest(tenant_id=TENANT), timeout=10
            )
            async with channel(gateways[1].address, created.secret) as other_channel:
                other = GatewayStub(other_channel)
                await other.ListRequestLogs(LISTING, timeout=10)

                async def refused(other: GatewayStub = other) -> bool:
                    try:
                        await other.ListRequestLogs(LISTING, timeout=10)
                    except grpc.aio.AioRpcError as error:
                        return error.code() == grpc.StatusCode.UNAUTHENTICATED
                    return False

                await admin.RevokeApiKey(
                    gateway_service_pb2.RevokeApiKeyRequest(id=created.key.id), timeout=10
                )
                delays.append(await _until(refused))
    return delays


async def quota_changes(
    gateways: Sequence[Replica], admin_key: str, probe_key: str, trials: int
) -> list[float]:
    """Milliseconds from UpdateTenantQuota on one gateway (1 request a minute, with one made
    already) until the other refuses the tenant's next request; then the limit is lifted."""
    delays = []
    async with (
        channel(gateways[0].address, admin_key) as admin_channel,
        channel(gateways[1].address, probe_key) as probe_channel,
    ):
        admin, probe = GatewayStub(admin_channel), GatewayStub(probe_channel)

        async def request_refused() -> bool:
            try:
                async for _ in probe.StreamComplete(stream_request(1), timeout=10):
                    pass
            except grpc.aio.AioRpcError as error:
                return error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            return False

        async def request_served() -> bool:
            return not await request_refused()

        def update(requests_per_minute: int) -> Awaitable[Any]:
            return admin.UpdateTenantQuota(
                gateway_service_pb2.UpdateTenantQuotaRequest(
                    tenant_id=PROBE_TENANT,
                    quota=gateway_pb2.TenantQuota(requests_per_minute=requests_per_minute),
                ),
                timeout=10,
            )

        for _ in range(trials):
            await update(0)
            await _until(request_served)  # the other gateway knows the quota is lifted
            await update(1)
            delays.append(await _until(request_refused))
        await update(0)
    return delays


# ------------------------------------------------------------------------------------ phase 2


class Watcher:
    """A WatchLabels stream on one PromptService replica, resumed after the last event it
    received whenever the replica goes away and comes back (as `PromptClient` does)."""

    def __init__(self, replica: Replica, key: str, phase: Phase, clock: Callable[[], float]):
        self.replica = replica
        self.key = key
        self.phase = phase
        self.clock = clock
        self.events = phase.watched.setdefault(replica.name, [])
        self.snapshot = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        """Follows the replica; from a broken stream until the first message of the next
        one the watcher is away (`Phase.down`), and moves made meanwhile arrive late
        through no fault of the push."""
        last, lost_at = 0, math.nan
        while True:
            try:
                async with channel(self.replica.address, self.key) as watching:
                    request = prompt_service_pb2.WatchLabelsRequest(after_sequence=last)
                    async for message in PromptStub(watching).WatchLabels(request):
                        if not math.isnan(lost_at):
                            away = self.phase.down.setdefault(self.replica.name, [])
                            away.append((lost_at, self.clock()))
                            lost_at = math.nan
                        if message.HasField("snapshot"):
                            last = message.snapshot.sequence
                            self.phase.watch_from[self.replica.name] = last
                            self.snapshot.set()
                        else:
                            last = message.event.sequence
                            self.events.append((last, self.clock()))
            except grpc.aio.AioRpcError:
                if math.isnan(lost_at):
                    lost_at = self.clock()
                await asyncio.sleep(0.1)  # the replica is down: try again

    async def caught_up(self, sequence: int, patience_s: float) -> bool:
        deadline = time.monotonic() + patience_s
        while time.monotonic() < deadline:
            if self.events and self.events[-1][0] >= sequence:
                return True
            await asyncio.sleep(0.05)
        return False

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def mover(
    replicas: Sequence[Replica],
    key: str,
    phase: Phase,
    interval_s: float,
    stop: asyncio.Event,
    clock: Callable[[], float],
) -> None:
    """Moves `production` of the moved prompts through a random replica every `interval_s`,
    recording each committed move; a replica that is down makes that move fail (and it is not
    recorded: the registry's own table says what committed)."""
    rng = random.Random(7)
    channels = {r.name: channel(r.address, key) for r in replicas}
    try:
        move = 0
        while not stop.is_set():
            replica = rng.choice(list(replicas))
            sent = clock()
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await PromptStub(channels[replica.name]).SetLabel(
                    prompt_service_pb2.SetLabelRequest(
                        prompt=MOVED_PROMPTS[move % len(MOVED_PROMPTS)],
                        label="production",
                        version=2 - move % 2,
                    ),
                    timeout=5,
                )
                phase.moves.append((sent, replica.name, reply.event.sequence))
            move += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
    finally:
        for opened in channels.values():
            await opened.close(None)


async def load(
    target: str,
    key: str,
    config: ReplicasConfig,
    seconds: float,
    records: list[StreamRecord],
    clock: Callable[[], float],
    progress: Progress | None = None,
) -> None:
    """`concurrency` closed-loop streams through `target` for `seconds`."""
    async with channel(target, key) as balanced:
        stub = GatewayStub(balanced)
        deadline = clock() + seconds

        async def worker() -> None:
            while clock() < deadline:
                record = StreamRecord(request_id=uuid.uuid4().hex, started=clock())
                records.append(record)
                await stream_once(stub, config.tokens, record, clock)
                if progress is not None:
                    progress.advance()

        await asyncio.gather(*(worker() for _ in range(config.concurrency)))


async def faults(
    phase: Phase,
    gateways: Sequence[Replica],
    tritons: Tritons,
    prompts: Sequence[Replica],
    config: ReplicasConfig,
    clock: Callable[[], float],
    progress: Progress,
) -> None:
    """Kills a gateway, a Triton and a PromptService process, a fifth of the phase apart,
    each restarted `pause_s` later."""
    schedule: list[tuple[str, Callable[[], None], Callable[[], Awaitable[None]]]] = [
        (gateways[0].name, gateways[0].kill, gateways[0].start),
        ("triton-0", lambda: tritons.kill(0), lambda: tritons.restart(0)),
        (prompts[0].name, prompts[0].kill, prompts[0].start),
    ]
    for index, (name, kill, restart) in enumerate(schedule, start=1):
        await asyncio.sleep(max(0.0, index * config.duration_s / 5 - clock()))
        fault = Fault(name, clock())
        phase.faults.append(fault)
        kill()
        progress.note(f"SIGKILL {name} at {fault.killed_at:.1f} s")
        await asyncio.sleep(config.pause_s)
        await restart()
        fault.restarted_at = clock()
        progress.note(f"{name} serving again at {fault.restarted_at:.1f} s")


# ------------------------------------------------------------------------------------ run


async def run_replicas(config: ReplicasConfig, progress: Progress | None = None) -> ReplicasRun:
    """Sets the deployment up, runs the three phases, reads the databases, tears it down."""
    progress = progress or Progress(NAME)
    started_at = datetime.now(UTC)
    started = time.monotonic()
    run_dir = RUN_ROOT / f"bench-{NAME}-{started_at:%Y%m%dT%H%M%SZ}-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    env_before = environment()
    shared = Shared.new()
    replicas: list[Replica] = []
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as folder:
        data = Path(folder)
        tritons = Tritons(paced_repository(data, config.token_interval_us), run_dir)
        try:
            progress.stage("creating the PostgreSQL schema; starting two Tritons (paced zero)")
            await shared.create()
            await tritons.start()
            catalog = data / "catalog.yaml"
            catalog.write_text(zero_catalog([tritons.address(0), tritons.address(1)]))
            # The topology and variables of deploy/kubernetes/overlays/cpu (benchmarks.deployment).
            prompts = [
                Replica(f"prompt-{i}", hosted(PROMPT_DEPLOYMENT), {}, run_dir) for i in range(2)
            ]
            experiment = Replica("experiment", hosted(EXPERIMENT_DEPLOYMENT), {}, run_dir)
            evaluation = Replica("evaluation", hosted(EVALUATION_DEPLOYMENT), {}, run_dir)
            gateways = [
                Replica(f"gateway-{i}", hosted(GATEWAY_DEPLOYMENT), {}, run_dir) for i in range(2)
            ]
            workloads = {
                PROMPT_DEPLOYMENT: prompts,
                EXPERIMENT_DEPLOYMENT: [experiment],
                EVALUATION_DEPLOYMENT: [evaluation],
                GATEWAY_DEPLOYMENT: gateways,
            }
            addresses = {w: [r.address for r in rs] for w, rs in workloads.items()}
            local = LocalValues(
                shared, tritons, catalog, data, config.lease_s, secrets.token_urlsafe(32)
            )
            for workload, members in workloads.items():
                for replica in members:
                    replica.env = process_env(workload, local, addresses)
            replicas = [*prompts, experiment, evaluation, *gateways]
            progress.stage("migrating (the migration Job's genai migrate)")
            admin_key = await migrate(process_env(MIGRATION_JOB, local, addresses), run_dir)
            progress.stage(f"starting {len(replicas)} platform processes (genai serve)")
            await asyncio.gather(*(r.start() for r in replicas))
            await check_probes(workloads)  # what the manifests' probes ask, every process
            key, probe_key = await admin_setup(gateways[0].address, prompts[0].address, admin_key)

            progress.stage("phase 1: propagation (quiet)")
            floor = await notify_floor(max(20, config.propagation_moves))
            propagation, writes = await label_propagation(
                prompts, key, config.propagation_moves, config.move_interval_s / 2
            )
            revoked = await revocations(gateways, key, config.invalidation_trials)
            quotas = await quota_changes(gateways, admin_key, probe_key, config.invalidation_trials)

            progress.stage(
                f"phase 2: {config.concurrency} streams for {config.duration_s:g} s over both "
                "gateways; SIGKILL a gateway, a Triton, a PromptService"
            )
            phase = await fault_phase(config, gateways, tritons, prompts, key, progress)

            progress.stage("reading the request log, the label events and Redis")
            logged, logged_tokens, events = await read_database(shared.schema)
            usage, reclaimed, left = await read_redis(shared.prefix, config)

            progress.stage("phase 3: one gateway against both")
            scale, scale_busy = await scale_phase(config, gateways, key, progress)
        finally:
            for replica in reversed(replicas):
                await replica.stop()
            await tritons.stop()
            with contextlib.suppress(Exception):
                await shared.drop()
            progress.close()
    env_after = with_load_at_end(env_before)
    run = ReplicasRun(
        config=config,
        started_at=started_at,
        duration_s=time.monotonic() - started,
        environment=env_after,
        run_dir=run_dir,
        floor_ms=floor,
        propagation_ms=propagation,
        label_write_ms=writes,
        revocation_ms=revoked,
        quota_ms=quotas,
        phase=phase,
        logged=logged,
        logged_tokens=logged_tokens,
        events=events,
        redis_usage_tokens=usage,
        redis_reclaimed=reclaimed,
        in_flight_left=left,
        scale=scale,
        scale_busy=scale_busy,
    )
    run.checks = targets(run)
    return run


async def fault_phase(
    config: ReplicasConfig,
    gateways: Sequence[Replica],
    tritons: Tritons,
    prompts: Sequence[Replica],
    key: str,
    progress: Progress,
) -> Phase:
    phase = Phase()
    origin = time.monotonic()

    def clock() -> float:
        return time.monotonic() - origin

    watchers = [Watcher(replica, key, phase, clock) for replica in prompts]
    for watcher in watchers:
        await asyncio.wait_for(watcher.snapshot.wait(), 10)
    stop_moving = asyncio.Event()
    moving = asyncio.create_task(
        mover(prompts, key, phase, config.move_interval_s, stop_moving, clock)
    )
    target = ",".join(g.address for g in gateways)
    try:
        progress.step("streams")
        await asyncio.gather(
            load(target, key, config, config.duration_s, phase.streams, clock, progress),
            faults(phase, gateways, tritons, prompts, config, clock, progress),
        )
    finally:
        stop_moving.set()
        await moving
    last = max((sequence for _, _, sequence in phase.moves), default=0)
    for watcher in watchers:
        if not await watcher.caught_up(last, 30):
            progress.note(f"the watcher of {watcher.replica.name} never reached event {last}")
    await asyncio.sleep(1.0)  # anything stray or repeated would arrive by now
    for watcher in watchers:
        await watcher.close()
    return phase


async def read_database(schema: str) -> tuple[dict[str, int], dict[str, int], list[int]]:
    """The bench tenant's request-log rows per request id, their tokens, and its label events."""
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(
        POSTGRES_URL, connect_args={"server_settings": {"search_path": schema}}
    )
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.text(
                        "SELECT request_id, count(*), sum(input_tokens + output_tokens) "
                        "FROM gateway_request_log WHERE tenant_id = :tenant GROUP BY request_id"
                    ),
                    {"tenant": TENANT},
                )
            ).all()
            events = (
                await conn.execute(
                    sa.text(
                        "SELECT sequence FROM label_events WHERE tenant_id = :tenant "
                        "ORDER BY sequence"
                    ),
                    {"tenant": TENANT},
                )
            ).scalars()
            sequences = [int(s) for s in events]
    finally:
        await engine.dispose()
    return (
        {str(r[0]): int(r[1]) for r in rows},
        {str(r[0]): int(r[2]) for r in rows},
        sequences,
    )


async def read_redis(prefix: str, config: ReplicasConfig) -> tuple[int, tuple[int, int], int]:
    """Settled tokens of the bench tenant, what sweeps settled for dead gateways, and the
    reservations still unsettled once sweeps have had their lease to act."""
    from services.gateway.adapters.redis_quota import RedisQuotaLimiter

    limiter = RedisQuotaLimiter(REDIS_URL, key_prefix=prefix)
    try:
        deadline = time.monotonic() + 4 * config.lease_s + 10
        left = await limiter.in_flight(TENANT)
        while left and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            left = await limiter.in_flight(TENANT)
        usage = await limiter.usage(TENANT)
        reclaimed = await limiter.reclaimed(TENANT)
    finally:
        await limiter.aclose()
    return usage.tokens, (reclaimed.requests, reclaimed.tokens), left


def busy_cores() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat (all cores)."""
    with open("/proc/stat") as stat:
        fields = [float(value) for value in stat.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


async def scale_phase(
    config: ReplicasConfig, gateways: Sequence[Replica], key: str, progress: Progress
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Streams/s through the first gateway alone and through both, alternated twice, and
    the share of the machine's CPU that was busy meanwhile."""
    rates: dict[str, list[float]] = {"one": [], "two": []}
    busy: dict[str, list[float]] = {"one": [], "two": []}
    origin = time.monotonic()

    def clock() -> float:
        return time.monotonic() - origin

    for order in (("one", "two"), ("two", "one")):
        for variant in order:
            target = gateways[0].address
            if variant == "two":
                target = ",".join(g.address for g in gateways)
            records: list[StreamRecord] = []
            progress.step(f"{variant} gateway{'s' if variant == 'two' else ''}")
            began, (busy_before, total_before) = clock(), busy_cores()
            await load(target, key, config, config.scale_seconds, records, clock)
            ended, (busy_after, total_after) = clock(), busy_cores()
            done = [r for r in records if r.final]
            rates[variant].append(len(done) / (ended - began))
            busy[variant].append((busy_after - busy_before) / max(total_after - total_before, 1e-9))
    return rates, busy


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(NAME, DESCRIPTION)
    for action in parser._actions:
        if "--quick" in action.option_strings:
            action.help = (
                "a short run (about 2 minutes, half of it start-up) to check that it works"
            )
    parser.add_argument(
        "--seconds",
        type=float,
        help=f"seconds of the fault phase (default {DEFAULT.duration_s:g}; quick "
        f"{QUICK.duration_s:g})",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        help=f"streams in flight (default {DEFAULT.concurrency}; quick {QUICK.concurrency})",
    )
    args = parser.parse_args(argv)
    config = QUICK if args.quick else DEFAULT
    overrides = {"duration_s": args.seconds, "concurrency": args.concurrency}
    try:
        config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as error:
        parser.error(str(error))
    run = asyncio.run(run_replicas(config))
    json_path, png_path = write_outputs(run.result, args.out, run.plot, run.started_at)
    print(report(run))
    print(f"\nwrote {shown(json_path)}\n      {shown(png_path)}\nlogs  {shown(run.run_dir)}")
    failed = [c for c in run.checks if c.passed is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
