"""What the `replicas` benchmark measured, and what it makes of it: the run's settings and raw
records, the checks against issue #12's targets, the JSON, the PNG and the printed report."""

import itertools
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from benchmarks.inference import TargetCheck, check_at_least, check_at_most
from benchmarks.stats import (
    BenchmarkResult,
    LatencySummary,
    Measurement,
    format_number,
    format_table,
    percentile,
    run_subtitle,
    starved_lines,
)

NAME: Final = "replicas"
STREAM_DEADLINE_S: Final = 30.0
HANG_SLACK_S: Final = 2.0
"""A call that ends this long after its deadline counts as a hang."""
PROPAGATION_P50_MS: Final = 50.0
PROPAGATION_P99_MS: Final = 200.0
INVALIDATION_MS: Final = 1000.0
SUCCESS_SHARE: Final = 0.99


@dataclass(frozen=True)
class ReplicasConfig:
    """What one run does."""

    duration_s: float = 60.0
    """Seconds of load in the fault phase."""
    concurrency: int = 32
    tokens: int = 64
    token_interval_us: int = 2000
    pause_s: float = 5.0
    """Seconds a killed process stays down."""
    move_interval_s: float = 0.1
    propagation_moves: int = 100
    """Label moves per direction in the propagation phase."""
    invalidation_trials: int = 10
    """Revocations and quota changes each, in the propagation phase."""
    scale_seconds: float = 10.0
    """Seconds per measurement of the scale phase (2 of each)."""
    lease_s: float = 3.0
    """The quota lease: how soon a dead gateway's reservations are settled by the other."""

    def __post_init__(self) -> None:
        if self.duration_s < 5 * self.pause_s / 2 or self.concurrency < 1 or self.tokens < 1:
            raise ValueError("the fault phase needs room for three kills and restarts")


DEFAULT: Final = ReplicasConfig()
QUICK: Final = ReplicasConfig(
    duration_s=24.0,
    concurrency=16,
    pause_s=3.0,
    propagation_moves=20,
    invalidation_trials=3,
    scale_seconds=3.0,
)


# ------------------------------------------------------------------------------------ results


@dataclass
class StreamRecord:
    """One StreamComplete of the fault or scale phase, as the client saw it."""

    request_id: str
    started: float
    """Seconds since the phase began."""
    ended: float = math.nan
    code: str = ""
    """`OK` when a final arrived, else the status code's name."""
    reason: str = ""
    """The error's `ErrorInfo` reason, when it had one."""
    retry_info: bool = False
    final: bool = False
    gateway: str = ""
    usage_tokens: int = 0
    """Input plus output tokens, from the final or a STREAM_INTERRUPTED error's metadata."""
    received_tokens: int = 0
    """Output tokens the client received (the zero model's `tokN` words)."""


@dataclass
class Fault:
    """One SIGKILL and restart of the fault phase."""

    target: str
    killed_at: float
    restarted_at: float = math.nan
    """When the restarted process served again (seconds since the phase began)."""


@dataclass
class Phase:
    """The fault phase's raw material."""

    streams: list[StreamRecord] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    moves: list[tuple[float, str, int]] = field(default_factory=list)
    """(sent at, replica, event sequence) of each committed label move."""
    watched: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    """Replica -> (sequence, arrival) of every event its watcher received, in order."""
    watch_from: dict[str, int] = field(default_factory=dict)
    """Replica -> the sequence its watcher's first snapshot included."""
    down: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """Replica -> the (from, to) times its watcher was away: from its stream breaking to the
    first message of the next one."""


@dataclass
class ReplicasRun:
    """Everything one run measured."""

    config: ReplicasConfig
    started_at: datetime
    duration_s: float
    environment: dict[str, Any]
    run_dir: Path
    floor_ms: list[float]
    propagation_ms: dict[str, list[float]]
    label_write_ms: list[float]
    """How long the SetLabel calls of the propagation phase took (their commit)."""
    revocation_ms: list[float]
    quota_ms: list[float]
    phase: Phase
    logged: dict[str, int]
    """Request id -> rows in the request log (the bench tenant's)."""
    logged_tokens: dict[str, int]
    """Request id -> input plus output tokens in its request-log row."""
    events: list[int]
    """Every label event of the bench tenant, by sequence, from the registry's table."""
    redis_usage_tokens: int
    redis_reclaimed: tuple[int, int]
    """(requests, tokens) that sweeps settled for the killed gateway."""
    in_flight_left: int
    scale: dict[str, list[float]]
    """`one` / `two` -> streams/s of each measurement."""
    scale_busy: dict[str, list[float]]
    """`one` / `two` -> the share of the machine's CPU busy during each measurement."""
    checks: list[TargetCheck] = field(default_factory=list)

    @property
    def result(self) -> BenchmarkResult:
        return replicas_result(self)

    def plot(self, path: Path) -> None:
        plot_run(self, path)


# ------------------------------------------------------------------------------------ analysis


def _p(values: Sequence[float], p: float) -> float:
    finite = sorted(v for v in values if math.isfinite(v))
    return percentile(finite, p) if finite else math.nan


def in_flight_at(record: StreamRecord, faults: Sequence[Fault]) -> Fault | None:
    """The fault whose kill cut `record` (it was in flight when the process died)."""
    for fault in faults:
        if record.started < fault.killed_at < record.ended:
            return fault
    return None


def cross_replica_delays(phase: Phase) -> list[float]:
    """Milliseconds from each committed move (sent through one replica) to its arrival at the
    other replica's watcher, leaving out moves made while that watcher was away (its replica
    down, or the watcher not yet back)."""
    arrivals = {name: dict(events) for name, events in phase.watched.items()}
    delays = []
    for sent, via, sequence in phase.moves:
        for name, arrived in arrivals.items():
            if name == via or sequence not in arrived:
                continue
            outages = phase.down.get(name, [])
            if any(start - 1 <= sent <= end + 1 for start, end in outages):
                continue
            delays.append((arrived[sequence] - sent) * 1e3)
    return delays


@dataclass(frozen=True)
class WatcherCheck:
    replica: str
    expected: int
    received: int
    missing: int
    repeated: int
    out_of_order: int


def watcher_checks(phase: Phase, events: Sequence[int]) -> list[WatcherCheck]:
    """Each watcher against the registry's events after its first snapshot."""
    checks = []
    for name, received in phase.watched.items():
        start = phase.watch_from.get(name, 0)
        expected = [s for s in events if s > start]
        sequences = [s for s, _ in received]
        counts = Counter(sequences)
        checks.append(
            WatcherCheck(
                replica=name,
                expected=len(expected),
                received=len(sequences),
                missing=len(set(expected) - set(sequences)),
                repeated=sum(c - 1 for c in counts.values() if c > 1),
                out_of_order=sum(1 for a, b in itertools.pairwise(sequences) if b <= a),
            )
        )
    return checks


def targets(run: ReplicasRun) -> list[TargetCheck]:
    phase = run.phase
    streams = phase.streams
    finals = [r for r in streams if r.final]
    lost = sum(1 for r in finals if run.logged.get(r.request_id, 0) == 0)
    duplicated = sum(1 for r in finals if run.logged.get(r.request_id, 0) > 1)
    cut = [(r, f) for r in streams if (f := in_flight_at(r, phase.faults)) is not None]
    undefined = [r for r, _ in cut if r.code in ("UNKNOWN", "INTERNAL", "NO_FINAL") or not r.code]
    hung = [r for r in streams if r.ended - r.started > STREAM_DEADLINE_S + HANG_SLACK_S]
    untouched = [r for r in streams if in_flight_at(r, phase.faults) is None]
    succeeded = sum(1 for r in untouched if r.final)
    share = succeeded / len(untouched) if untouched else math.nan
    mismatched = sum(1 for r in finals if run.logged_tokens.get(r.request_id, -1) != r.usage_tokens)
    accounted = sum(run.logged_tokens.values()) + run.redis_reclaimed[1]
    watchers = watcher_checks(phase, run.events)
    watcher_errors = sum(w.missing + w.repeated + w.out_of_order for w in watchers)
    propagation = [d for delays in run.propagation_ms.values() for d in delays]
    scale = _ratio(_mean(run.scale["two"]), _mean(run.scale["one"]))
    checks = [
        check_at_most(
            "label move -> PromptClient on the other replica, p50",
            _p(propagation, 50),
            PROPAGATION_P50_MS,
            "ms",
            detail=f"NOTIFY floor p50 {format_number(_p(run.floor_ms, 50))} ms",
        ),
        check_at_most(
            "label move -> PromptClient on the other replica, p99",
            _p(propagation, 99),
            PROPAGATION_P99_MS,
            "ms",
            detail=f"NOTIFY floor p99 {format_number(_p(run.floor_ms, 99))} ms",
        ),
        check_at_most(
            "API-key revocation reaches the other gateway, max",
            max(run.revocation_ms, default=math.nan),
            INVALIDATION_MS,
            "ms",
        ),
        check_at_most(
            "quota change reaches the other gateway, max",
            max(run.quota_ms, default=math.nan),
            INVALIDATION_MS,
            "ms",
        ),
        check_at_most(
            "requests with a final missing from the request log",
            float(lost),
            0,
            "",
            detail=f"of {len(finals)} finals",
        ),
        check_at_most("requests with a final logged more than once", float(duplicated), 0, ""),
        check_at_most(
            "requests cut by a kill without a defined status",
            float(len(undefined)),
            0,
            "",
            detail=f"of {len(cut)} cut: {dict(Counter(_status(r) for r, _ in cut))}",
        ),
        check_at_most("calls that outlived their deadline", float(len(hung)), 0, ""),
        check_at_least(
            "requests not in flight at a kill that succeeded",
            share * 100,
            SUCCESS_SHARE * 100,
            "%",
            detail=f"{succeeded} of {len(untouched)}",
        ),
        check_at_most(
            "finals whose usage differs from their request-log row", float(mismatched), 0, ""
        ),
        check_at_most(
            "tokens settled in Redis minus tokens accounted (log + swept)",
            float(abs(run.redis_usage_tokens - accounted)),
            0,
            "tokens",
            detail=f"Redis {run.redis_usage_tokens}, request log "
            f"{sum(run.logged_tokens.values())}, swept {run.redis_reclaimed[1]}; "
            f"{run.in_flight_left} reservations unsettled",
        ),
        check_at_most(
            "label events missed, repeated or out of order, all watchers",
            float(watcher_errors),
            0,
            "",
            detail=", ".join(f"{w.replica} {w.received}/{w.expected}" for w in watchers),
        ),
    ]
    checks.append(
        TargetCheck(
            "streams/s, two gateways / one",
            f"reported ({format_number(_mean(run.scale['two']))} / "
            f"{format_number(_mean(run.scale['one']))} streams/s)",
            scale,
            math.nan,
            "x",
            None,
        )
    )
    return checks


def _status(record: StreamRecord) -> str:
    if record.final:
        return "OK"
    return f"{record.code} {record.reason}".strip() + (" +RetryInfo" if record.retry_info else "")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _ratio(candidate: float, baseline: float) -> float:
    return candidate / baseline if baseline > 0 else math.nan


def gateway_kill_accounting(run: ReplicasRun) -> str:
    """What the client received in streams cut by the gateway's SIGKILL, against how the
    sweep settled their reservations: as logged (the gateway had logged the request before it
    died) or at the dead gateway's last progress report."""
    gateway_faults = [f for f in run.phase.faults if f.target.startswith("gateway")]
    cut = [
        r for r in run.phase.streams if in_flight_at(r, gateway_faults) is not None and not r.final
    ]
    received = sum(r.received_tokens for r in cut)
    requests, tokens = run.redis_reclaimed
    return (
        f"{len(cut)} streams cut by the gateway SIGKILL (clients received {received} output "
        f"tokens of them): {max(len(cut) - requests, 0)} were settled by a sweep as their "
        f"request-log rows said (logged before the kill), {requests} at the dead gateway's "
        f"last progress report ({tokens} tokens, input included); what a process that is gone "
        "sent after its last report cannot be known exactly"
    )


# ------------------------------------------------------------------------------------ outputs


def _summary(scenario: str, variant: str, values_ms: Sequence[float]) -> Measurement:
    finite = [v * 1e3 for v in values_ms if math.isfinite(v)]
    return Measurement(
        scenario=scenario,
        variant=variant,
        concurrency=1,
        latency_metric="propagation delay",
        latency_us=LatencySummary.of(finite) if finite else None,
    )


def replicas_result(run: ReplicasRun) -> BenchmarkResult:
    phase = run.phase
    document: dict[str, Any] = {
        "config": asdict(run.config),
        "faults": [asdict(f) for f in phase.faults],
        "streams": len(phase.streams),
        "finals": sum(1 for r in phase.streams if r.final),
        "statuses": dict(Counter(_status(r) for r in phase.streams)),
        "failures": [
            {"started_s": r.started, "ended_s": r.ended, "status": _status(r)}
            for r in phase.streams
            if not r.final
        ],
        "moves": len(phase.moves),
        "events": len(run.events),
        "watchers": [asdict(w) for w in watcher_checks(phase, run.events)],
        "label_moves": [
            {
                "sent_s": sent,
                "via": via,
                "sequence": sequence,
                "arrived_s": {
                    name: arrived
                    for name, events in phase.watched.items()
                    for seq, arrived in events
                    if seq == sequence
                },
            }
            for sent, via, sequence in phase.moves
        ],
        "cross_replica_under_load_ms": {
            "p50": _p(cross_replica_delays(phase), 50),
            "p99": _p(cross_replica_delays(phase), 99),
        },
        "scale_streams_per_s": run.scale,
        "scale_busy_share": run.scale_busy,
        "redis": {
            "settled_tokens": run.redis_usage_tokens,
            "swept": list(run.redis_reclaimed),
            "unsettled": run.in_flight_left,
        },
        "gateway_kill": gateway_kill_accounting(run),
        "targets": [asdict(c) for c in run.checks],
    }
    measurements = [
        _summary("propagation", "notify floor", run.floor_ms),
        _summary("propagation", "SetLabel call", run.label_write_ms),
        *(_summary("propagation", f"label {k}", v) for k, v in run.propagation_ms.items()),
        _summary("propagation", "API-key revocation", run.revocation_ms),
        _summary("propagation", "quota change", run.quota_ms),
        _summary("under load", "label, other replica", cross_replica_delays(phase)),
    ]
    return BenchmarkResult(
        benchmark=NAME,
        started_at=run.started_at,
        duration_s=run.duration_s,
        baseline="notify floor",
        candidate="replicas",
        config=document,
        environment=run.environment,
        measurements=measurements,
        comparisons=[],
        notes=[gateway_kill_accounting(run)],
    )


def timeline(phase: Phase, bucket_s: float = 1.0) -> tuple[list[float], list[int], list[int]]:
    """(bucket starts, finals ended, errors ended) per `bucket_s` of the fault phase."""
    end = max((r.ended for r in phase.streams if math.isfinite(r.ended)), default=0.0)
    buckets = int(end / bucket_s) + 1
    finals, errors = [0] * buckets, [0] * buckets
    for record in phase.streams:
        if not math.isfinite(record.ended):
            continue
        index = int(record.ended / bucket_s)
        (finals if record.final else errors)[index] += 1
    return [i * bucket_s for i in range(buckets)], finals, errors


def plot_run(run: ReplicasRun, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8.5))
    starts, finals, errors = timeline(run.phase)
    top.step(starts, finals, where="post", label="streams with a final /s", color="tab:blue")
    top.step(starts, errors, where="post", label="streams ending in an error /s", color="tab:red")
    shades = ("tab:orange", "tab:purple", "tab:green")
    for fault, shade in zip(run.phase.faults, itertools.cycle(shades), strict=False):
        top.axvspan(
            fault.killed_at,
            fault.restarted_at,
            color=shade,
            alpha=0.18,
            label=f"{fault.target} killed, until it serves again",
        )
    top.set_xlabel("seconds into the fault phase")
    top.set_ylabel("streams per second")
    top.set_title(
        f"{run.config.concurrency} streams over two gateways, {run.config.tokens} tokens "
        f"{run.config.token_interval_us / 1000:g} ms apart"
    )
    top.legend(loc="lower right", fontsize=8)
    series = {
        "NOTIFY floor": run.floor_ms,
        **{f"label {k}": v for k, v in run.propagation_ms.items()},
        "label, under load": cross_replica_delays(run.phase),
        "revocation": run.revocation_ms,
        "quota change": run.quota_ms,
    }
    for name, values in series.items():
        finite = sorted(v for v in values if math.isfinite(v))
        if finite:
            bottom.plot(finite, [(i + 1) / len(finite) for i in range(len(finite))], label=name)
    bottom.axvline(PROPAGATION_P50_MS, color="grey", linestyle=":")
    bottom.axvline(PROPAGATION_P99_MS, color="grey", linestyle="--")
    bottom.set_xscale("log")
    bottom.set_xlabel("milliseconds until the other replica has it (log)")
    bottom.set_ylabel("share of moves / changes")
    bottom.set_title("Propagation across replicas (targets: p50 50 ms, p99 200 ms; 1 s)")
    bottom.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def report(run: ReplicasRun) -> str:
    phase = run.phase
    lines = [
        f"{NAME}: {run.config.concurrency} streams x {run.config.duration_s:g} s over 2 gateways, "
        f"2 PromptServices, experiment, evaluation, 2 Tritons ({run.config.tokens} tokens, "
        f"{run.config.token_interval_us} us apart), PostgreSQL + Redis; "
        f"{run_subtitle(run.started_at, run.environment)}, {run.duration_s:.0f} s",
        "",
        "propagation (quiet platform), milliseconds:",
    ]
    rows = [
        [name, str(len(values)), format_number(_p(values, 50)), format_number(_p(values, 99)),
         format_number(max(values, default=math.nan))]
        for name, values in [
            ("NOTIFY round trip (floor)", run.floor_ms),
            ("SetLabel call (the commit)", run.label_write_ms),
            *((f"label {k}", v) for k, v in run.propagation_ms.items()),
            ("API-key revocation", run.revocation_ms),
            ("quota change", run.quota_ms),
            ("label, other replica, under load", cross_replica_delays(phase)),
        ]
    ]  # fmt: skip
    lines.append(format_table(["what", "n", "p50", "p99", "max"], rows))
    lines += ["", "faults (seconds into the phase):"]
    for fault in phase.faults:
        cut = [r for r in phase.streams if in_flight_at(r, [fault]) is not None]
        statuses = Counter(_status(r) for r in cut)
        lines.append(
            f"  SIGKILL {fault.target} at {fault.killed_at:.1f}, serving again at "
            f"{fault.restarted_at:.1f}: {len(cut)} streams in flight -> {dict(statuses)}"
        )
    for name, windows in sorted(phase.down.items()):
        spans = ", ".join(f"{start:.1f}-{end:.1f}" for start, end in windows)
        lines.append(f"  watcher of {name} away (stream broken until its next message): {spans} s")
    statuses = Counter(_status(r) for r in phase.streams)
    lines += [
        f"  {len(phase.streams)} streams: {dict(statuses)}",
        f"  {len(phase.moves)} label moves acknowledged, "
        f"{len([e for e in run.events if e > min(phase.watch_from.values(), default=0)])} "
        "committed during the phase",
        f"  {gateway_kill_accounting(run)}",
        "",
        f"scale: one gateway {format_number(_mean(run.scale['one']))} streams/s, two "
        f"{format_number(_mean(run.scale['two']))} streams/s "
        f"({format_number(_ratio(_mean(run.scale['two']), _mean(run.scale['one'])))}x); the "
        f"machine's CPU was {format_number(100 * _mean(run.scale_busy['one']))}% / "
        f"{format_number(100 * _mean(run.scale_busy['two']))}% busy "
        f"({os.cpu_count()} cores: client, gateways and Tritons share them)",
        "",
        "targets:",
        *(f"  {check.line()}" for check in run.checks),
        *starved_lines(run.environment),
    ]
    return "\n".join(lines)
