"""Benchmark `chain`: what the platform's server interceptor chain costs each RPC.

Every platform RPC passes tracing (OpenTelemetry, SDK provider without exporter, the default),
auth, error mapping and validation. This benchmark serves a service that does no work (see
`benchmarks.echo`) twice, in one run: `direct`, a bare grpc.aio server, and `platform`, the
platform's `start_server` with `default_interceptors`. Both differences and ratios are reported.

Each server runs in a process of its own and the client (this process) drives one at a time,
so while a round runs the client and that server each have one of a small machine's two cores,
as a service and its caller do in production; the idle server only waits. A server in the
client's event loop would instead share one core with the client and add the client's cost to
every figure. Rounds alternate between the variants (direct first in even rounds, platform
first in odd ones) so that the machine's noise falls on both alike.

Scenarios (all after an unmeasured warm-up round of each variant):
- unary, concurrency 1: latency of `Echo` calls made one after another;
- stream, concurrency 1: time to the first of the `Stream` call's 16 messages;
- stream, concurrency 16 and 64: streams and messages per second, and time to first message,
  with that many streams in flight (closed loop: each finished stream starts the next).

The servers' CPU time per call (from /proc, 10 ms ticks summed over all rounds) is reported
too: it is the chain's cost with the client's share and the scheduling noise taken out.
"""

import asyncio
import math
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import grpc
import grpc.aio
from google.protobuf.wrappers_pb2 import StringValue

from benchmarks.cli import benchmark_parser, shown, write_outputs
from benchmarks.echo import ECHO_METHOD, STREAM_METHOD, Variant
from benchmarks.serving import ServerProcess, server_processes
from benchmarks.stats import (
    BenchmarkResult,
    Comparison,
    LatencyPanel,
    LatencySummary,
    Measurement,
    Progress,
    RatePanel,
    comparison_table,
    environment,
    format_ratio,
    latency_table,
    percentile,
    plot_results,
    round_ratios,
    run_subtitle,
    starved_lines,
    with_load_at_end,
)
from services.common.grpc_types import UnaryStreamMultiCallable, UnaryUnaryMultiCallable

NAME = "chain"
DESCRIPTION = (
    "The per-RPC cost of the platform's server interceptor chain (tracing, auth, errors, "
    "validation) against a bare grpc.aio server, both serving a service that does no work."
)
VARIANTS = (Variant.DIRECT, Variant.PLATFORM)
"""Baseline first: every comparison is platform / direct."""


@dataclass(frozen=True)
class ChainConfig:
    """How much to measure. Counts and seconds are per variant, split evenly over the rounds."""

    unary_calls: int = 5000
    """Unary calls at concurrency 1."""
    streams: int = 1200
    """Streams at concurrency 1 (for the time to first message)."""
    stream_messages: int = 16
    """Messages in each stream."""
    concurrencies: tuple[int, ...] = (16, 64)
    """Streams in flight for the throughput scenarios."""
    load_seconds: float = 5.0
    """Measured seconds of streaming at each of `concurrencies`."""
    rounds: int = 10
    """Interleaved rounds of the concurrency-1 scenarios (alternating which variant goes
    first), after one unmeasured warm-up round of each variant."""
    load_rounds: int = 5
    """Interleaved rounds of each throughput scenario. Fewer and longer than `rounds`: a
    round's window must hold many stream lifetimes (about 0.2 s each at concurrency 64 here)
    so that streams ending in bursts do not make its count jump."""

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.unary_calls < self.rounds or self.streams < self.rounds:
            raise ValueError("each round needs at least one unary call and one stream")
        if self.load_rounds < 1 or self.load_seconds <= 0 or any(c < 1 for c in self.concurrencies):
            raise ValueError("load scenarios need rounds, a positive duration and concurrency")


DEFAULT = ChainConfig()
"""About a minute on a 2-core machine."""
QUICK = ChainConfig(unary_calls=600, streams=200, load_seconds=1.0, rounds=4, load_rounds=2)
"""About 10 seconds: to check that the benchmark works, not to quote its figures."""


@dataclass
class ChainRun:
    """A finished run: the result to write, and the raw samples to plot."""

    result: BenchmarkResult
    latency_panels: list[LatencyPanel]
    rate_panels: list[RatePanel]

    def plot(self, path: Path) -> None:
        plot_results(
            path,
            "Server interceptor chain: platform vs direct grpc.aio",
            self.latency_panels,
            self.rate_panels,
            subtitle=_subtitle(self.result),
        )


@dataclass
class _Round:
    """What one variant did in one round."""

    latencies_us: list[float]
    """Per counted call: a unary call's latency, or a stream's time to first message."""
    calls: int
    """Calls that count for the rates: those that ended within the measured window."""
    messages: int
    elapsed_s: float
    """The measured window."""
    served: int
    """Every call the server handled in the round (the ramp-up and ramp-down ones too)."""
    server_cpu_s: float | None = None
    """The server's CPU time over the whole round."""


@dataclass
class _Target:
    """One variant's server and the client's callables for it."""

    variant: Variant
    server: ServerProcess
    channel: grpc.aio.Channel
    echo: UnaryUnaryMultiCallable
    stream: UnaryStreamMultiCallable


@dataclass
class _Scenario:
    """The rounds of one scenario, by variant."""

    name: str
    concurrency: int
    latency_metric: str
    rounds: dict[Variant, list[_Round]] = field(default_factory=dict)


RoundRunner = Callable[[_Target, Callable[[int], None]], Awaitable[_Round]]
"""Runs one round against a target, reporting finished calls through the callback."""


async def run_chain(config: ChainConfig = DEFAULT, progress: Progress | None = None) -> ChainRun:
    """Starts both servers, measures every scenario, stops the servers, returns the run."""
    progress = progress or Progress(NAME)
    started_at = datetime.now(UTC)
    started = time.monotonic()
    env = environment()
    progress.stage("starting the direct and platform servers (one process each)")
    args = ["--stream-messages", str(config.stream_messages)]
    commands = [("benchmarks.echo", ["--variant", variant.value, *args]) for variant in VARIANTS]
    targets: list[_Target] = []
    try:
        async with server_processes(commands) as servers:
            try:
                for variant, server in zip(VARIANTS, servers, strict=True):
                    targets.append(await _connect(variant, server))
                    await _check(targets[-1], config.stream_messages)
                scenarios = await _measure(targets, config, progress)
            finally:
                for target in targets:
                    await target.channel.close(None)
    finally:
        progress.close()
    measurements = [
        _measurement(scenario, variant) for scenario in scenarios for variant in VARIANTS
    ]
    result = BenchmarkResult(
        benchmark=NAME,
        started_at=started_at,
        duration_s=time.monotonic() - started,
        baseline=Variant.DIRECT.value,
        candidate=Variant.PLATFORM.value,
        config=asdict(config),
        environment=with_load_at_end(env),
        measurements=measurements,
        comparisons=[c for scenario in scenarios for c in _comparisons(scenario)],
        notes=[
            "Servers in child processes, client in the benchmark process, plain channel "
            "(no client interceptors); rounds alternate the variants' order.",
            "overhead: platform - direct; for a rate, the time added per item "
            "(1/platform - 1/direct). platform/direct: over all rounds together. rounds: the "
            "ratio of each round alone, median (lowest-highest); the range is the run's noise.",
            "server CPU: user+system time of the server process per call it served (ramp-up "
            "and ramp-down calls too), from /proc (10 ms ticks, summed over all rounds).",
            "TTFM: time to first message, from the call to its first response message.",
        ],
    )
    return ChainRun(result, *_panels(scenarios))


async def _connect(variant: Variant, server: ServerProcess) -> _Target:
    channel = grpc.aio.insecure_channel(server.address)
    await asyncio.wait_for(channel.channel_ready(), 10.0)
    return _Target(
        variant=variant,
        server=server,
        channel=channel,
        echo=channel.unary_unary(
            ECHO_METHOD,
            request_serializer=StringValue.SerializeToString,
            response_deserializer=StringValue.FromString,
        ),
        stream=channel.unary_stream(
            STREAM_METHOD,
            request_serializer=StringValue.SerializeToString,
            response_deserializer=StringValue.FromString,
        ),
    )


async def _check(target: _Target, stream_messages: int) -> None:
    """Fails unless the server answers as the echo service should (nothing else is timed)."""
    reply = await target.echo(StringValue(value="check"))
    if reply.value != "check":
        raise RuntimeError(f"{target.variant} echoed {reply.value!r}")
    received = [message async for message in target.stream(StringValue(value="check"))]
    if len(received) != stream_messages:
        raise RuntimeError(f"{target.variant} streamed {len(received)}, not {stream_messages}")


async def _measure(
    targets: Sequence[_Target], config: ChainConfig, progress: Progress
) -> list[_Scenario]:
    rounds = config.rounds
    unary_per_round = config.unary_calls // rounds
    streams_per_round = config.streams // rounds
    load_per_round = config.load_seconds / config.load_rounds
    scenarios = [
        await _interleave(
            _Scenario("unary", 1, "latency"),
            targets,
            rounds,
            progress,
            run=lambda t, done: _unary(t, unary_per_round, done),
            warm=lambda t, done: _unary(t, unary_per_round, done),
            total=unary_per_round,
        ),
        await _interleave(
            _Scenario("stream", 1, "TTFM"),
            targets,
            rounds,
            progress,
            run=lambda t, done: _streams(t, streams_per_round, config.stream_messages, done),
            warm=lambda t, done: _streams(t, streams_per_round, config.stream_messages, done),
            total=streams_per_round,
        ),
    ]
    for concurrency in config.concurrencies:
        scenarios.append(
            await _interleave(
                _Scenario("stream", concurrency, "TTFM"),
                targets,
                config.load_rounds,
                progress,
                run=_loader(concurrency, load_per_round, config.stream_messages),
                warm=_loader(concurrency, load_per_round / 2, config.stream_messages),
            )
        )
    return scenarios


def _loader(concurrency: int, seconds: float, stream_messages: int) -> RoundRunner:
    def run(target: _Target, done: Callable[[int], None]) -> Awaitable[_Round]:
        return _load(target, concurrency, seconds, stream_messages, done)

    return run


async def _interleave(
    scenario: _Scenario,
    targets: Sequence[_Target],
    rounds: int,
    progress: Progress,
    *,
    run: RoundRunner,
    warm: RoundRunner,
    total: int = 0,
) -> _Scenario:
    label = f"{scenario.name} c={scenario.concurrency}"
    progress.stage(f"{label}: warm-up, then {rounds} rounds x {len(targets)} variants")
    for target in targets:
        progress.step(f"warm-up {target.variant}")
        await warm(target, progress.advance)
    scenario.rounds = {target.variant: [] for target in targets}
    for index in range(rounds):
        order = targets if index % 2 == 0 else list(reversed(targets))
        for target in order:
            progress.step(f"round {index + 1}/{rounds} {target.variant}", total)
            cpu_before = target.server.cpu_seconds()
            outcome = await run(target, progress.advance)
            cpu_after = target.server.cpu_seconds()
            if cpu_before is not None and cpu_after is not None:
                outcome.server_cpu_s = cpu_after - cpu_before
            scenario.rounds[target.variant].append(outcome)
    progress.note(_headline(scenario))
    return scenario


async def _unary(target: _Target, calls: int, done: Callable[[int], None]) -> _Round:
    request = StringValue(value="ping")
    latencies: list[float] = []
    started = time.perf_counter_ns()
    for _ in range(calls):
        sent = time.perf_counter_ns()
        await target.echo(request)
        latencies.append((time.perf_counter_ns() - sent) / 1000)
        done(1)
    elapsed = (time.perf_counter_ns() - started) / 1e9
    return _Round(latencies, calls=calls, messages=calls, elapsed_s=elapsed, served=calls)


async def _one_stream(target: _Target, request: StringValue, expected: int) -> tuple[float, int]:
    """Runs one stream to its end: time to its first message (µs), and its message count."""
    sent = time.perf_counter_ns()
    first = 0
    received = 0
    async for _ in target.stream(request):
        if received == 0:
            first = time.perf_counter_ns()
        received += 1
    if received != expected:
        raise RuntimeError(f"{target.variant} streamed {received} messages, not {expected}")
    return (first - sent) / 1000, received


async def _streams(
    target: _Target, streams: int, stream_messages: int, done: Callable[[int], None]
) -> _Round:
    request = StringValue(value="ping")
    latencies: list[float] = []
    messages = 0
    started = time.perf_counter_ns()
    for _ in range(streams):
        first, received = await _one_stream(target, request, stream_messages)
        latencies.append(first)
        messages += received
        done(1)
    elapsed = (time.perf_counter_ns() - started) / 1e9
    return _Round(latencies, calls=streams, messages=messages, elapsed_s=elapsed, served=streams)


async def _load(
    target: _Target,
    concurrency: int,
    seconds: float,
    stream_messages: int,
    done: Callable[[int], None],
) -> _Round:
    """Keeps `concurrency` streams in flight for a ramp-up and then a window of `seconds`.

    Only streams that end within the window count, and the rate is over the window alone: the
    ramp-up (a quarter of the window, when all streams start at once and end in bursts) and the
    ramp-down after the window (streams still in flight) count for nothing.
    """
    request = StringValue(value="ping")
    latencies: list[float] = []
    counted = [0, 0, 0]  # streams and messages in the window, streams in all
    window_start = time.perf_counter() + seconds / 4
    deadline = window_start + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            first, received = await _one_stream(target, request, stream_messages)
            counted[2] += 1
            if window_start <= time.perf_counter() <= deadline:
                latencies.append(first)
                counted[0] += 1
                counted[1] += received
                done(1)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return _Round(
        latencies, calls=counted[0], messages=counted[1], elapsed_s=seconds, served=counted[2]
    )


# ------------------------------------------------------------------------------------ results


def _per_s(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.nan


def _cpu_us_per_call(rounds: Sequence[_Round]) -> float:
    cpu = [r.server_cpu_s for r in rounds]
    calls = sum(r.served for r in rounds)
    if any(c is None for c in cpu) or not calls:
        return math.nan
    return math.fsum(c for c in cpu if c is not None) / calls * 1e6


def _round_figures(r: _Round) -> dict[str, float]:
    ordered = sorted(r.latencies_us)
    figures = {
        "calls": float(r.calls),
        "served": float(r.served),
        "elapsed_s": r.elapsed_s,
        "calls_per_s": _per_s(r.calls, r.elapsed_s),
        "messages_per_s": _per_s(r.messages, r.elapsed_s),
        "server_cpu_us_per_call": _cpu_us_per_call([r]),
    }
    if ordered:
        figures["p50_us"] = percentile(ordered, 50)
        figures["p99_us"] = percentile(ordered, 99)
    return figures


def _measurement(scenario: _Scenario, variant: Variant) -> Measurement:
    rounds = scenario.rounds[variant]
    latencies = [value for r in rounds for value in r.latencies_us]
    elapsed = math.fsum(r.elapsed_s for r in rounds)
    return Measurement(
        scenario=scenario.name,
        variant=variant.value,
        concurrency=scenario.concurrency,
        latency_metric=scenario.latency_metric,
        latency_us=LatencySummary.of(latencies) if latencies else None,
        rates={
            "calls_per_s": _per_s(sum(r.calls for r in rounds), elapsed),
            "messages_per_s": _per_s(sum(r.messages for r in rounds), elapsed),
            "server_cpu_us_per_call": _cpu_us_per_call(rounds),
        },
        rounds=[_round_figures(r) for r in rounds],
    )


def _comparisons(scenario: _Scenario) -> list[Comparison]:
    direct, platform = (scenario.rounds[v] for v in VARIANTS)
    name, concurrency = scenario.name, scenario.concurrency

    def figures(rounds: list[_Round], key: str) -> list[float]:
        return [_round_figures(r).get(key, math.nan) for r in rounds]

    def latency(p: float) -> Comparison:
        base, cand = (sorted(v for r in rs for v in r.latencies_us) for rs in (direct, platform))
        key = f"p{p:.0f}_us"
        return Comparison.of_latency(
            name,
            concurrency,
            f"{scenario.latency_metric} p{p:.0f}",
            percentile(base, p),
            percentile(cand, p),
            round_ratios(figures(direct, key), figures(platform, key)),
        )

    def rate(metric: str, item: str, key: str, counts: Callable[[_Round], int]) -> Comparison:
        base, cand = (
            _per_s(sum(counts(r) for r in rs), math.fsum(r.elapsed_s for r in rs))
            for rs in (direct, platform)
        )
        return Comparison.of_rate(
            name,
            concurrency,
            metric,
            item,
            base,
            cand,
            round_ratios(figures(direct, key), figures(platform, key)),
        )

    per_call = "stream" if name == "stream" else "call"
    comparisons = []
    if concurrency > 1:
        comparisons += [
            rate("rate", "stream", "calls_per_s", lambda r: r.calls),
            rate("rate", "msg", "messages_per_s", lambda r: r.messages),
        ]
    comparisons += [latency(50), latency(99)]
    comparisons.append(
        Comparison.of_latency(
            name,
            concurrency,
            f"server CPU/{per_call}",
            _cpu_us_per_call(direct),
            _cpu_us_per_call(platform),
            round_ratios(
                figures(direct, "server_cpu_us_per_call"),
                figures(platform, "server_cpu_us_per_call"),
            ),
        )
    )
    return comparisons


def _headline(scenario: _Scenario) -> str:
    """One line on the finished scenario, for the progress log."""
    direct, platform = (scenario.rounds[v] for v in VARIANTS)
    label = f"{scenario.name} c={scenario.concurrency}"
    if scenario.concurrency > 1:
        base, cand = (
            _per_s(sum(r.calls for r in rs), math.fsum(r.elapsed_s for r in rs))
            for rs in (direct, platform)
        )
        return (
            f"{label}: {base:,.0f} vs {cand:,.0f} streams/s "
            f"(platform/direct {format_ratio(cand / base if base else math.nan)})"
        )
    base, cand = (
        percentile(sorted(v for r in rs for v in r.latencies_us), 50) for rs in (direct, platform)
    )
    return (
        f"{label}: {scenario.latency_metric} p50 {base:.0f} vs {cand:.0f} µs "
        f"(platform/direct {format_ratio(cand / base)})"
    )


def _panels(scenarios: Sequence[_Scenario]) -> tuple[list[LatencyPanel], list[RatePanel]]:
    latency_panels = [
        LatencyPanel(
            title=(
                "unary Echo, concurrency 1"
                if s.name == "unary"
                else f"stream, concurrency {s.concurrency}: time to first message"
            ),
            series={
                v.value: [value for r in s.rounds[v] for value in r.latencies_us] for v in VARIANTS
            },
            xlabel="latency" if s.name == "unary" else "time to first message",
        )
        for s in scenarios
    ]
    loaded = [s for s in scenarios if s.concurrency > 1]
    rate_panels = []
    if loaded:
        rate_panels.append(
            RatePanel(
                title="streams per second (16 messages each)",
                unit="streams/s",
                groups={
                    f"concurrency {s.concurrency}": {
                        v.value: _per_s(
                            sum(r.calls for r in s.rounds[v]),
                            math.fsum(r.elapsed_s for r in s.rounds[v]),
                        )
                        for v in VARIANTS
                    }
                    for s in loaded
                },
            )
        )
    cpu = {
        f"{s.name} c={s.concurrency}": {v.value: _cpu_us_per_call(s.rounds[v]) for v in VARIANTS}
        for s in scenarios
    }
    if all(math.isfinite(value) for values in cpu.values() for value in values.values()):
        rate_panels.append(
            RatePanel(
                title="server CPU per call (a stream: all its messages)", unit="µs", groups=cpu
            )
        )
    return latency_panels, rate_panels


def _subtitle(result: BenchmarkResult) -> str:
    return (
        f"{run_subtitle(result.started_at, result.environment)}, "
        f"{result.config.get('rounds')} interleaved rounds"
    )


# ------------------------------------------------------------------------------------ command


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(NAME, DESCRIPTION)
    parser.add_argument(
        "--rounds", type=int, help="interleaved rounds at concurrency 1 (default 10; quick 4)"
    )
    parser.add_argument(
        "--load-rounds", type=int, help="interleaved rounds per concurrency (default 5; quick 2)"
    )
    parser.add_argument("--unary-calls", type=int, help="unary calls per variant")
    parser.add_argument("--streams", type=int, help="streams per variant at concurrency 1")
    parser.add_argument(
        "--load-seconds", type=float, help="seconds of streaming per variant and concurrency"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        action="append",
        help="streams in flight for a throughput scenario (repeatable; default 16 and 64)",
    )
    args = parser.parse_args(argv)
    config = QUICK if args.quick else DEFAULT
    overrides = {
        "rounds": args.rounds,
        "load_rounds": args.load_rounds,
        "unary_calls": args.unary_calls,
        "streams": args.streams,
        "load_seconds": args.load_seconds,
        "concurrencies": tuple(args.concurrency) if args.concurrency else None,
    }
    try:
        config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as error:
        parser.error(str(error))

    run = asyncio.run(run_chain(config))
    json_path, png_path = write_outputs(run.result, args.out, run.plot)
    print(report(run.result))
    print(f"\nwrote {shown(json_path)}\n      {shown(png_path)}")
    return 0


def report(result: BenchmarkResult) -> str:
    """The printed summary: both variants' latencies, then the comparison."""
    return "\n".join(
        [
            f"benchmark {result.benchmark}: {_subtitle(result)}, {result.duration_s:.0f} s",
            "",
            latency_table(result.measurements),
            "",
            comparison_table(result),
            "",
            *(f"- {note}" for note in result.notes),
            *starved_lines(result.environment),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
