"""Benchmark `router`: what one routing decision costs with a 20-model catalog.

Two measurements, interleaved in rounds:
- `decision`: `Router.route` in process (the capability filter, the policy, power-of-two-choices
  and the reasons), each decision followed by its outcome report so in-flight counts stay flat;
  the issue's target is p99 under 200 µs;
- over gRPC, RouterService's `Route` against `GetModel` on the same server (`rpc-route` vs
  `rpc-get-model`): what routing adds to a trivial RPC of the same service.
The catalog is synthetic (20 models, 1 to 3 replicas, varied prices, tiers, contexts and
capabilities) with live statistics warmed from reported outcomes; requests cycle through every
policy and a filtered one (JSON output, a cost ceiling, a quality floor).
"""

import asyncio
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Final

import grpc
from genai.common.v1 import money_pb2, routing_pb2
from genai.router.v1 import router_service_pb2, router_service_pb2_grpc

from benchmarks.cli import benchmark_parser, shown, write_outputs
from benchmarks.stats import (
    BenchmarkResult,
    Comparison,
    LatencyPanel,
    LatencySummary,
    Measurement,
    Progress,
    comparison_table,
    environment,
    latency_table,
    percentile,
    plot_results,
    round_ratios,
    run_subtitle,
    starved_lines,
    with_load_at_end,
)
from services.common.server import ServiceRegistration, start_server
from services.router.core.catalog import BackendEntry, BackendKind, Capability, Catalog, ModelEntry
from services.router.core.live import Outcome
from services.router.core.router import Policy, Report, Router, RouteRequest
from services.router.servicer import SERVICE_NAME, RouterServicer

NAME: Final = "router"
DESCRIPTION: Final = "routing decision cost with a 20-model catalog, in process and over gRPC"
TARGET_P99_US: Final = 200.0


@dataclass(frozen=True)
class RouterConfig:
    """How much to measure."""

    models: int = 20
    rounds: int = 10
    decisions: int = 20_000
    """In-process decisions, split over the rounds."""
    calls: int = 4_000
    """RPCs per path, split over the rounds."""


QUICK = RouterConfig(rounds=2, decisions=2_000, calls=400)


def catalog(models: int, seed: int = 11) -> Catalog:
    """A varied synthetic catalog of `models` models."""
    rng = random.Random(seed)
    entries = []
    for index in range(models):
        tier = 1 + index % 10
        caps = {Capability.CHAT, Capability.STREAMING}
        if tier >= 4:
            caps.add(Capability.JSON_OUTPUT)
        entries.append(
            ModelEntry(
                name=f"model-{index:02d}",
                display_name=f"Model {index}",
                capabilities=frozenset(caps),
                languages=("en",),
                max_context_tokens=rng.choice([2048, 8192, 32768, 131072]),
                max_output_tokens=2048,
                input_price=Decimal(str(round(0.05 * tier * rng.uniform(0.5, 2), 4))),
                output_price=Decimal(str(round(0.2 * tier * rng.uniform(0.5, 2), 4))),
                quality_tier=tier,
                first_token_target_s=rng.uniform(0.05, 0.8),
                per_token_target_s=rng.uniform(0.005, 0.05),
                weight=rng.choice([0, 1, 2]),
                backends=tuple(
                    BackendEntry(
                        f"replica-{r}", BackendKind.TRITON, f"10.0.{index}.{r}:8001", "ensemble"
                    )
                    for r in range(rng.randint(1, 3))
                ),
            )
        )
    return Catalog(currency="USD", models=tuple(entries))


REQUESTS: Final = (
    RouteRequest(800, 256, Policy.COST),
    RouteRequest(800, 256, Policy.LATENCY),
    RouteRequest(800, 256, Policy.QUALITY),
    RouteRequest(800, 256, Policy.WEIGHTED, unit_id="user-17"),
    RouteRequest(
        1500,
        512,
        Policy.COST,
        required=frozenset({Capability.JSON_OUTPUT}),
        min_quality_tier=5,
        max_cost=Decimal("0.05"),
    ),
)


def warmed_router(entries: Catalog, seed: int = 5) -> Router:
    """A router whose backends already have latency statistics."""
    rng = random.Random(seed)
    router = Router(entries, rng=random.Random(seed))
    for model in entries.models:
        for backend in model.backends:
            for _ in range(50):
                first = rng.uniform(0.02, 0.6)
                router.report(
                    Report(
                        model.name,
                        backend.id,
                        Outcome.SUCCESS,
                        first_token_s=first,
                        total_s=first + rng.uniform(0.5, 5),
                        output_tokens=200,
                    )
                )
    return router


def decide(router: Router, count: int, done: Callable[[int], None]) -> list[float]:
    """`count` decisions (each reported), their latencies in µs."""
    timings = []
    for index in range(count):
        request = REQUESTS[index % len(REQUESTS)]
        started = time.perf_counter_ns()
        decision = router.route(request)
        timings.append((time.perf_counter_ns() - started) / 1000)
        best = decision.candidates[0]
        router.report(
            Report(best.model.name, best.backend.id, Outcome.CANCELLED, decision.decision_id)
        )
        if index % 1000 == 999:
            done(1000)
    return timings


def _proto_request(request: RouteRequest) -> router_service_pb2.RouteRequest:
    preferences = routing_pb2.RoutingPreferences(
        policy=getattr(routing_pb2, f"ROUTING_POLICY_{(request.policy or Policy.COST).name}"),
        required_capabilities=[
            getattr(routing_pb2, f"CAPABILITY_{c.name}") for c in sorted(request.required)
        ],
        min_quality_tier=request.min_quality_tier,
    )
    if request.max_cost is not None:
        units = int(request.max_cost)
        preferences.max_cost.CopyFrom(
            money_pb2.Money(
                currency_code="USD", units=units, nanos=int((request.max_cost - units) * 10**9)
            )
        )
    return router_service_pb2.RouteRequest(
        preferences=preferences,
        input_tokens=request.input_tokens,
        max_output_tokens=request.max_output_tokens,
        unit_id=request.unit_id,
    )


async def run_router(
    config: RouterConfig, progress: Progress
) -> tuple[BenchmarkResult, dict[str, list[float]]]:
    """Measures every path; returns the result and the raw latencies by path (µs)."""
    started_at = datetime.now(UTC)
    started = time.monotonic()
    env = environment()
    entries = catalog(config.models)
    router = warmed_router(entries)
    samples: dict[str, list[list[float]]] = {"decision": [], "rpc-get-model": [], "rpc-route": []}

    progress.stage(f"decision: {config.decisions:,} in-process decisions in {config.rounds} rounds")
    decide(router, 1000, lambda _: None)  # warm-up
    for _ in range(config.rounds):
        samples["decision"].append(
            decide(router, config.decisions // config.rounds, progress.advance)
        )

    progress.stage(f"rpc: {config.calls:,} Route and GetModel calls each in {config.rounds} rounds")
    server = await start_server(
        bind="127.0.0.1:0",
        registrations=[_registration(RouterServicer(warmed_router(entries)))],
        interceptors=(),
        grace=0,
    )
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = router_service_pb2_grpc.RouterServiceStub(channel)
            protos = [_proto_request(r) for r in REQUESTS]
            get = router_service_pb2.GetModelRequest(name="model-07")

            async def route_calls(count: int) -> list[float]:
                timings = []
                for index in range(count):
                    call_started = time.perf_counter_ns()
                    await stub.Route(protos[index % len(protos)])
                    timings.append((time.perf_counter_ns() - call_started) / 1000)
                return timings

            async def get_calls(count: int) -> list[float]:
                timings = []
                for _ in range(count):
                    call_started = time.perf_counter_ns()
                    await stub.GetModel(get)
                    timings.append((time.perf_counter_ns() - call_started) / 1000)
                return timings

            await route_calls(200)
            await get_calls(200)
            per_round = config.calls // config.rounds
            for index in range(config.rounds):
                order = [("rpc-get-model", get_calls), ("rpc-route", route_calls)]
                for name, calls in order if index % 2 == 0 else order[::-1]:
                    samples[name].append(await calls(per_round))
                    progress.advance(per_round)
    finally:
        await server.stop(0)

    measurements = [
        Measurement(
            scenario=NAME,
            variant=name,
            concurrency=1,
            latency_metric="decision" if name == "decision" else "call",
            latency_us=LatencySummary.of(v for r in rounds for v in r),
            rounds=[
                {"p50_us": percentile(sorted(r), 50), "p99_us": percentile(sorted(r), 99)}
                for r in rounds
            ],
        )
        for name, rounds in samples.items()
    ]

    def p(name: str, q: float) -> float:
        return percentile(sorted(v for r in samples[name] for v in r), q)

    def rounds_p(name: str, q: float) -> list[float]:
        return [percentile(sorted(r), q) for r in samples[name]]

    comparisons = [
        Comparison.of_latency(
            NAME,
            1,
            f"Route vs GetModel p{q:.0f}",
            p("rpc-get-model", q),
            p("rpc-route", q),
            round_ratios(rounds_p("rpc-get-model", q), rounds_p("rpc-route", q)),
        )
        for q in (50, 99)
    ]
    result = BenchmarkResult(
        benchmark=NAME,
        started_at=started_at,
        duration_s=time.monotonic() - started,
        baseline="rpc-get-model",
        candidate="rpc-route",
        config=asdict(config),
        environment=with_load_at_end(env),
        measurements=measurements,
        comparisons=comparisons,
        notes=[
            f"catalog: {config.models} synthetic models, "
            f"{sum(len(m.backends) for m in entries.models)} backends, live statistics warmed.",
            "decision: Router.route in process; rpc-*: RouterService over loopback gRPC, "
            "one call at a time, no interceptors on the server.",
        ],
    )
    flat = {name: [v for r in rounds for v in r] for name, rounds in samples.items()}
    return result, flat


def _registration(servicer: RouterServicer) -> ServiceRegistration:
    return ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: router_service_pb2_grpc.add_RouterServiceServicer_to_server(
            servicer, server
        ),
    )


def report(result: BenchmarkResult) -> str:
    """The printed summary with the target line."""
    decision = next(m for m in result.measurements if m.variant == "decision")
    assert decision.latency_us is not None
    p99 = decision.latency_us.p99
    verdict = "PASS" if p99 < TARGET_P99_US else "FAIL"
    return "\n".join(
        [
            f"benchmark {NAME}: {_subtitle(result)}, {result.duration_s:.0f} s",
            "",
            latency_table(result.measurements),
            "",
            comparison_table(result),
            "",
            *(f"- {note}" for note in result.notes),
            "",
            "targets:",
            f"  {verdict}  decision p99: {p99:,.1f} µs (target < {TARGET_P99_US:.0f} µs); "
            f"p50 {decision.latency_us.p50:,.1f} µs",
            *starved_lines(result.environment),
        ]
    )


def _subtitle(result: BenchmarkResult) -> str:
    return (
        f"{run_subtitle(result.started_at, result.environment)}, "
        f"{result.config.get('rounds')} interleaved rounds"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(NAME, DESCRIPTION)
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 10)")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else RouterConfig()
    if args.rounds:
        config = replace(config, rounds=args.rounds)
    progress = Progress(NAME)
    result, flat = asyncio.run(run_router(config, progress))

    def plot(path: Path) -> None:
        plot_results(
            path,
            f"{NAME}: routing decision cost, {config.models}-model catalog",
            [
                LatencyPanel(
                    "in-process decision (Router.route)",
                    {"decision": flat["decision"]},
                    xlabel="decision",
                ),
                LatencyPanel(
                    "over gRPC: Route vs GetModel",
                    {k: flat[k] for k in ("rpc-get-model", "rpc-route")},
                    xlabel="call",
                ),
            ],
            subtitle=_subtitle(result),
        )

    json_path, png_path = write_outputs(result, args.out, plot)
    print(report(result))
    print(f"\nwrote {shown(json_path)}\n      {shown(png_path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
