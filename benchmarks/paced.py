"""The paced part of `scripts/bench gateway`: what the platform costs per request and per
relayed token while tokens come as a GPU decodes them, 10 ms apart.

Triton serves `zero_llm_paced` (`zero_llm` with `token_interval_us` = the pace; see
`zero_repository`). For each stream length (16, 64, 256 tokens) and concurrency (1, 64, 256),
each path keeps that many streams in flight (a closed loop; stream `i` starts `i / c` of a pace
after the first, so that tokens do not all fall due at the same instant) and, after a ramp-up,
a window of `seconds` is measured:

- the streams started in the window (requests) and the tokens that arrived in it;
- the CPU time each process spent over the window (from /proc, 10 ms ticks);
- every gap between two consecutive messages of one stream inside the window (the
  inter-token latency: under pacing a message carries one token, unless a relay fell behind
  and coalesced several).

Streams still running when the window closes run to their end (outside the window; cancelling
hundreds at once can crash Triton 2.51, its issue #7368). Per path and concurrency, the
platform's CPU over the windows of the three lengths is fitted as
`cpu = per_request x requests + per_token x tokens` (least squares), which separates what
costs per request (auth, rendering, routing, quotas, logs, spans) from what costs per token
(reading from Triton, processing, writing to the caller).
"""

import asyncio
import math
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from benchmarks.stats import format_number, format_table, percentile

PACE_US: Final = 10_000
"""Microseconds between two tokens of a paced stream, as a GPU decodes."""
PACED_TRITON_MODEL: Final = "zero_llm_paced"
PACED_MODEL: Final = "zero-paced"
"""The catalog and InferenceService name of the paced model."""

Messages = Callable[[], AsyncIterator[int]]
"""One stream on one path: yields the number of tokens each message carries, as it arrives."""
CpuProbe = Callable[[], float | None]


def zero_repository(folder: Path, source: Path, pace_us: int = PACE_US) -> Path:
    """A model repository with `zero_llm` (unpaced) and `zero_llm_paced` (its tokens `pace_us`
    apart), copied from `source` into `folder`."""
    repository = folder / "models"
    shutil.copytree(source / "zero_llm", repository / "zero_llm")
    paced = repository / PACED_TRITON_MODEL
    shutil.copytree(source / "zero_llm", paced)
    config = paced / "config.pbtxt"
    text = config.read_text()
    name, interval = (
        'name: "zero_llm"',
        'key: "token_interval_us"\n    value: { string_value: "0" }',
    )
    if name not in text or interval not in text:
        raise RuntimeError(f"{config} does not name zero_llm and token_interval_us as expected")
    text = text.replace(name, f'name: "{PACED_TRITON_MODEL}"')
    config.write_text(text.replace(interval, interval.replace('"0"', f'"{pace_us}"')))
    return repository


@dataclass(frozen=True)
class PacedConfig:
    lengths: tuple[int, ...] = (16, 64, 256)
    """Tokens per stream."""
    concurrencies: tuple[int, ...] = (1, 64, 256)
    """Streams in flight."""
    seconds: float = 8.0
    """Measured window of each (length, concurrency, path)."""

    def __post_init__(self) -> None:
        if len(self.lengths) < 2 or min(self.lengths) < 1:
            raise ValueError("the per-request/per-token fit needs two stream lengths at least")
        if not self.concurrencies or min(self.concurrencies) < 1 or self.seconds <= 0:
            raise ValueError("paced cells need concurrencies >= 1 and a positive window")


@dataclass
class Cell:
    """One path at one (length, concurrency): what its window saw."""

    path: str
    length: int
    concurrency: int
    window_s: float
    requests: int = 0
    tokens: int = 0
    gaps_us: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)

    def cpu_us_per_token(self, process: str) -> float:
        if process not in self.cpu_s or not self.tokens:
            return math.nan
        return self.cpu_s[process] / self.tokens * 1e6

    def tokens_per_core_s(self, process: str) -> float:
        """Tokens relayed per CPU second of `process` (per core)."""
        cpu = self.cpu_s.get(process, 0.0)
        return self.tokens / cpu if cpu > 0 else math.nan

    def figures(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "length": self.length,
            "concurrency": self.concurrency,
            "window_s": self.window_s,
            "requests": self.requests,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens / self.window_s,
            "gap_p50_us": _p(self.gaps_us, 50),
            "gap_p99_us": _p(self.gaps_us, 99),
            "gaps": len(self.gaps_us),
            "cpu_s": dict(self.cpu_s),
        }


def _p(values: Sequence[float], p: float) -> float:
    return percentile(sorted(values), p) if values else math.nan


def ramp_s(length: int, pace_us: int = PACE_US) -> float:
    """The unmeasured start of a cell: one stream's length, a second at least."""
    return max(1.0, length * pace_us / 1e6)


async def run_cell(
    path: str,
    messages: Messages,
    length: int,
    concurrency: int,
    seconds: float,
    probes: Mapping[str, CpuProbe],
    pace_us: int = PACE_US,
) -> Cell:
    """Keeps `concurrency` streams of `messages` in flight; measures a window of `seconds`
    after a ramp-up of one stream's length (at least a second)."""
    loop = asyncio.get_running_loop()
    cell = Cell(path, length, concurrency, seconds)
    ramp = ramp_s(length, pace_us)
    begin = loop.time()
    start, end = begin + ramp, begin + ramp + seconds
    start_ns = end_ns = 0
    cpu_before: dict[str, float | None] = {}

    async def worker(index: int) -> None:
        await asyncio.sleep(index / concurrency * pace_us / 1e6)
        while loop.time() < end:
            started = loop.time()
            if start <= started < end:
                cell.requests += 1
            last = 0
            async for tokens in messages():
                now = time.perf_counter_ns()
                if start_ns and now >= start_ns and (not end_ns or now <= end_ns):
                    cell.tokens += tokens
                    if last >= start_ns:
                        cell.gaps_us.append((now - last) / 1000)
                last = now

    def sample() -> dict[str, float | None]:
        values = {process: probe() for process, probe in probes.items()}
        values["client"] = time.process_time()
        return values

    async def window() -> None:
        nonlocal start_ns, end_ns
        await asyncio.sleep(max(start - loop.time(), 0.0))
        cpu_before.update(sample())
        start_ns = time.perf_counter_ns()
        await asyncio.sleep(max(end - loop.time(), 0.0))
        end_ns = time.perf_counter_ns()
        after = sample()
        cell.window_s = (end_ns - start_ns) / 1e9
        for process, value in after.items():
            first = cpu_before.get(process)
            if first is not None and value is not None:
                cell.cpu_s[process] = value - first

    workers = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    try:
        await window()
        # The streams still running end on their own (no new one starts): cancelling a few
        # hundred at once can crash Triton 2.51's gRPC server (its issue #7368).
        await asyncio.wait(workers, timeout=3 * ramp_s(length, pace_us) + 30)
    finally:
        for task in workers:
            task.cancel()
        results = await asyncio.gather(*workers, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException) and not _cancelled(r)]
    if failures:
        raise RuntimeError(f"{path} at c={concurrency}, {length} tokens: {failures[0]!r}")
    return cell


def _cancelled(error: BaseException) -> bool:
    if isinstance(error, asyncio.CancelledError):
        return True
    code = getattr(error, "code", None)
    return callable(code) and getattr(code(), "name", "") == "CANCELLED"


@dataclass(frozen=True)
class Fit:
    """CPU of one process on one path at one concurrency: per request and per token (µs)."""

    path: str
    concurrency: int
    process: str
    per_request_us: float
    per_token_us: float


def fit(cells: Sequence[Cell], process: str) -> Fit:
    """Least squares of `cpu = a requests + b tokens` over `cells` (one path, one
    concurrency, several lengths)."""
    rows = [(c.requests, c.tokens, c.cpu_s[process]) for c in cells if process in c.cpu_s]
    srr = math.fsum(r * r for r, _, _ in rows)
    stt = math.fsum(t * t for _, t, _ in rows)
    srt = math.fsum(r * t for r, t, _ in rows)
    src = math.fsum(r * c for r, _, c in rows)
    stc = math.fsum(t * c for _, t, c in rows)
    determinant = srr * stt - srt * srt
    first = cells[0]
    if len(rows) < 2 or determinant <= 0:
        return Fit(first.path, first.concurrency, process, math.nan, math.nan)
    a = (src * stt - stc * srt) / determinant
    b = (stc * srr - src * srt) / determinant
    return Fit(first.path, first.concurrency, process, a * 1e6, b * 1e6)


@dataclass
class PacedRun:
    config: PacedConfig
    cells: list[Cell] = field(default_factory=list)

    def of(self, path: str, concurrency: int) -> list[Cell]:
        return [c for c in self.cells if c.path == path and c.concurrency == concurrency]

    def fits(self, process: str) -> list[Fit]:
        keys = sorted({(c.path, c.concurrency) for c in self.cells}, key=lambda k: k[1])
        return [fit(self.of(path, c), process) for path, c in keys]

    def gap_us(self, path: str, concurrency: int, p: float) -> float:
        return _p([g for c in self.of(path, concurrency) for g in c.gaps_us], p)

    def tokens_per_core_s(self, path: str, concurrency: int, process: str) -> float:
        cells = self.of(path, concurrency)
        cpu = math.fsum(c.cpu_s.get(process, 0.0) for c in cells)
        return sum(c.tokens for c in cells) / cpu if cpu > 0 else math.nan


def cells_table(run: PacedRun, processes: Sequence[str]) -> str:
    headers = [
        "conc",
        "tokens",
        "path",
        "requests",
        "tokens/s",
        "gap p50 ms",
        "gap p99 ms",
        *(f"{p} µs/token" for p in processes),
    ]
    rows = []
    for c in sorted(run.cells, key=lambda c: (c.concurrency, c.length)):
        rows.append(
            [
                str(c.concurrency),
                str(c.length),
                c.path,
                str(c.requests),
                format_number(c.tokens / c.window_s),
                format_number(_p(c.gaps_us, 50) / 1000),
                format_number(_p(c.gaps_us, 99) / 1000),
                *(format_number(c.cpu_us_per_token(p)) for p in processes),
            ]
        )
    return format_table(headers, rows)


def fit_table(run: PacedRun, paths: Sequence[str], process: str) -> str:
    headers = [
        "conc",
        "path",
        f"{process} µs/request",
        f"{process} µs/token",
        f"tokens/s per {process} core",
        "gap p50 ms",
        "gap p99 ms",
    ]
    rows = []
    for f in run.fits(process):
        if f.path not in paths:
            continue
        rows.append(
            [
                str(f.concurrency),
                f.path,
                format_number(f.per_request_us),
                format_number(f.per_token_us),
                format_number(run.tokens_per_core_s(f.path, f.concurrency, process)),
                format_number(run.gap_us(f.path, f.concurrency, 50) / 1000),
                format_number(run.gap_us(f.path, f.concurrency, 99) / 1000),
            ]
        )
    return format_table(headers, rows)


class Profiler:
    """Records flame graphs of one process with py-spy (a dev dependency) while chosen cells
    run: `record(name, seconds)` samples the process's Python stacks for `seconds` into
    `<folder>/<stem>-flame-<name>.svg`. Sampling is from outside the process (ptrace), so the
    process runs its usual code; its CPU figures in that cell include py-spy's pauses. Only
    the thread holding the GIL is sampled, so the graph shows where the process spends CPU in
    Python (threads blocked in a queue or a poll, e.g. aiosqlite's, are left out)."""

    def __init__(self, pid: int, folder: Path, stem: str, rate: int = 250) -> None:
        self._pid = pid
        self._folder = folder
        self._stem = stem
        self._rate = rate
        self.written: list[Path] = []

    def record(self, name: str, seconds: float) -> "asyncio.Task[None]":
        """Starts recording now (for whole seconds, at least one); await the task for the
        file."""
        return asyncio.ensure_future(self._record(name, max(1, math.ceil(seconds))))

    async def _record(self, name: str, seconds: int) -> None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self._folder.mkdir(parents=True, exist_ok=True)
        path = self._folder / f"{self._stem}-flame-{name}.svg"
        process = await asyncio.create_subprocess_exec(
            py_spy,
            "record",
            "--pid",
            str(self._pid),
            "--duration",
            str(seconds),
            "--rate",
            str(self._rate),
            "--gil",  # samples of the thread holding the GIL: where Python spends CPU
            "--format",
            "flamegraph",
            "--output",
            str(path),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, error = await process.communicate()
        if process.returncode != 0 or not path.exists():
            raise RuntimeError(f"py-spy failed ({process.returncode}): {error.decode()[-500:]}")
        self.written.append(path)
