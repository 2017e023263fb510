"""`genai serve --workers N`: N platform processes serving one port, under one supervisor.

The supervisor (`start_workers`, run by `genai serve` when `server.workers` > 1):

- refuses settings that would be wrong across processes (`worker_problems`): in-memory quotas
  would be counted per worker, giving every tenant N times its limits;
- reserves the gRPC port: binds it with SO_REUSEPORT (port 0: a free one) and keeps that socket,
  never listening, for its whole life, so the port stays this platform's while workers restart.
  Every worker binds the same port (grpc sets SO_REUSEPORT) and the kernel spreads new
  connections over them; a connection stays with the worker that accepted it. The HTTP port
  (`server.http_port`, when a hosted service serves HTTP) is reserved and shared the same way;
- launches Triton once (InferenceService hosted and `inference.triton.launch`) and hands its
  address to every worker (`start_platform(local_triton=...)`), which launch none;
- gives every worker the same `auth.internal_token` (a random one when empty; never printed),
  or under auth `none` the same console session secret, and the same settings otherwise, over
  the worker's stdin;
- starts worker 0 first, so that migrations and start-up errors happen once (a worker's
  configuration error becomes the supervisor's, printed once), then the others together; each
  reports on a pipe once it serves;
- restarts a worker that dies, logging it (after a backoff while it keeps dying young), except
  while stopping;
- serves one Prometheus endpoint on `server.metrics_port`: each worker's own endpoint (a free
  port on `server.host`) is scraped at every scrape, and the families are merged (HELP and TYPE
  once) with a `worker` label on each series, plus `genai_worker_up`, `genai_worker_info`
  (`pid`) and `genai_worker_restarts_total`;
- forwards each worker's stdout and stderr line by line, prefixed `[worker i] `;
- stops by sending SIGTERM to every worker (each drains its in-flight calls, streams included,
  within `server.grace_seconds`), waiting for them, then stopping Triton.

Workers run `python -m services.platform.workers` in a process group of their own (a
terminal's Ctrl-C reaches only the supervisor, which stops them in order) and get SIGTERM
should the supervisor die (PR_SET_PDEATHSIG).
"""

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import secrets
import signal
import socket
import sys
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from services.common.config import ConfigError
from services.common.http import HTTP_PORT_ADVICE
from services.common.telemetry import quiet_cross_context_detach
from services.gateway.adapters.tenant_store import SqlTenantStore
from services.inference.adapters.tritonserver import TritonServer
from services.platform.runner import check_transport, launch_triton, serves_http, start_platform
from services.platform.settings import PlatformSettings

_logger = logging.getLogger("services.platform.workers")  # also when run as __main__

WORKER_LABEL: Final = "worker"
"""The label the merged metrics endpoint adds to every series of a worker (`"0"`, `"1"`, ...)."""
STOP_MARGIN_SECONDS: Final = 15.0
"""How long past `server.grace_seconds` a stopping worker may take before it is killed."""
SCRAPE_TIMEOUT_SECONDS: Final = 5.0
YOUNG_SECONDS: Final = 10.0
"""A worker that dies younger than this is restarted after a backoff (1, 2, 4 ... 30 s)."""
_MAX_BACKOFF_SECONDS: Final = 30.0
_LINE_LIMIT: Final = 1 << 20
_PR_SET_PDEATHSIG: Final = 1


class WorkerStartError(RuntimeError):
    """A worker exited before it served; its own output (forwarded) says why."""


class WorkerConfigError(ConfigError):
    """A worker refused its configuration: the worker's own message, printed as it was."""

    def __init__(self, message: str) -> None:
        super().__init__([message])
        self.message = message

    def __str__(self) -> str:
        return self.message


def worker_problems(settings: PlatformSettings) -> list[str]:
    """What makes `settings` wrong for several workers (empty when nothing does)."""
    workers = settings.server.workers
    problems: list[str] = []
    if (
        workers > 1
        and "gateway" in settings.services
        and settings.gateway.quota.backend == "memory"
    ):
        problems.append(
            f"gateway.quota.backend is memory, which counts usage inside one process: with "
            f"{workers} workers each would enforce every quota on its own ({workers} times the "
            "limits). Share the counters with GENAI_GATEWAY__QUOTA__BACKEND=redis (and "
            "GENAI_GATEWAY__QUOTA__REDIS_URL), or serve with --workers 1"
        )
    return problems


def worker_settings(
    settings: PlatformSettings, *, port: int, internal_token: str, http_port: int | None = None
) -> PlatformSettings:
    """What each worker runs: `settings` on `port` (and HTTP on `http_port`, None: none), one
    process, no Triton of its own, its Prometheus endpoint on a free port (when the supervisor
    serves metrics at all), and the shared `internal_token`: as the internal token under API
    keys, else as the web console's session secret when none is set (under API keys the
    console derives its secret from the internal token), so that a browser's session opens
    on whichever worker its connection lands."""
    data = settings.model_dump(mode="json")
    data["server"].update(
        port=port,
        http_port=http_port,
        workers=1,
        metrics_port=None if settings.server.metrics_port is None else 0,
    )
    data["inference"]["triton"]["launch"] = False
    if settings.auth.mode == "api_key":
        data["auth"]["internal_token"] = internal_token
    elif not settings.gateway.console.session_secret:
        data["gateway"]["console"]["session_secret"] = internal_token
    return PlatformSettings.model_validate(data)


def reserve_port(
    host: str, port: int, setting: str = "server.port", advice: str = ""
) -> socket.socket:
    """A socket bound (not listening) to `host:port` with SO_REUSEPORT, so that workers can
    bind the same port while nothing else can take it; port 0 picks a free one. Raises
    `ConfigError` naming `setting` (and giving `advice`) when the port is taken."""
    family, kind, protocol, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    reservation = socket.socket(family, kind, protocol)
    try:
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reservation.bind(address)
    except OSError as error:
        reservation.close()
        raise ConfigError(
            [
                f"{setting} {port} on {host}: cannot bind it ({error.strerror})"
                + (f": {advice}" if advice else "")
            ]
        ) from None
    return reservation


@dataclass(frozen=True)
class WorkerReady:
    """What a worker reports once it serves."""

    pid: int
    address: str
    port: int
    services: tuple[str, ...]
    metrics_port: int | None
    http_port: int | None = None
    """The HTTP port it serves (the supervisor's shared one), if any."""


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    ready: WorkerReady
    started: float
    """Event-loop time when it became ready."""


@dataclass
class _Slot:
    """One worker position: the worker serving in it now (None while restarting)."""

    worker: _Worker | None = None
    restarts: int = 0
    supervisor: "asyncio.Task[None] | None" = field(default=None, repr=False)


class WorkerPool:
    """The running supervisor: its workers, their shared port and Triton, and the merged
    metrics endpoint. Made by `start_workers`; `stop` ends all of it."""

    def __init__(
        self,
        settings: PlatformSettings,
        *,
        reservation: socket.socket,
        internal_token: str,
        http_reservation: socket.socket | None = None,
    ) -> None:
        self._settings = settings
        self._reservation = reservation
        self._http_reservation = http_reservation
        self.port: int = reservation.getsockname()[1]
        """The gRPC port every worker serves."""
        self.http_port: int | None = None
        """The HTTP port every worker serves (the OpenAI-compatible API), when they serve one."""
        self.internal_token = internal_token
        """The token the workers' services present to each other (auth `api_key`)."""
        self._spec = ""
        """What every worker reads on its stdin (settings, Triton address, supervisor pid)."""
        self._slots = [_Slot() for _ in range(settings.server.workers)]
        self._processes: set[asyncio.subprocess.Process] = set()
        self._forwarders: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._stopped = False
        self._triton: TritonServer | None = None
        self._metrics_server: Any = None
        self.address = ""
        """A `host:port` that clients on this machine can dial."""
        self.hosted_services: tuple[str, ...] = ()
        self.metrics_port: int | None = None
        """Port of the merged Prometheus endpoint (`/metrics`), when it serves one."""
        self.tenants: SqlTenantStore | None = None
        """The tenant store (auth `api_key`), for the development key."""

    @property
    def worker_pids(self) -> tuple[int, ...]:
        """The pids of the workers serving now, by worker index (restarting ones left out)."""
        return tuple(s.worker.ready.pid for s in self._slots if s.worker is not None)

    async def start(self) -> None:
        """Launches Triton (when asked), worker 0, then the others; returns once every worker
        serves, with the metrics endpoint up. On failure, stop() undoes what was started."""
        settings = self._settings
        if "inference" in settings.services:
            self._triton = await launch_triton(settings)
        self._spec = json.dumps(
            {
                "supervisor_pid": os.getpid(),
                "settings": worker_settings(
                    settings,
                    port=self.port,
                    internal_token=self.internal_token,
                    http_port=(
                        self._http_reservation.getsockname()[1]
                        if self._http_reservation is not None
                        else None
                    ),
                ).model_dump(mode="json"),
                "local_triton": self._triton.grpc_address if self._triton is not None else None,
            }
        )
        first = await self._spawn(0)
        self._slots[0].worker = first
        others = await asyncio.gather(
            *(self._spawn(index) for index in range(1, len(self._slots))), return_exceptions=True
        )
        for index, started in enumerate(others, start=1):
            if isinstance(started, _Worker):
                self._slots[index].worker = started
        for started in others:
            if isinstance(started, BaseException):
                raise started
        self.address = first.ready.address
        self.hosted_services = first.ready.services
        self.http_port = first.ready.http_port
        for slot in self._slots:
            slot.supervisor = asyncio.create_task(self._supervise(slot))
        if settings.server.metrics_port is not None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(WorkerMetrics(self._scrape_targets, self._restarts, self.metrics_url))
            http, _thread = start_http_server(
                settings.server.metrics_port, addr=settings.server.host, registry=registry
            )
            self._metrics_server = http
            self.metrics_port = http.server_address[1]
        if settings.auth.mode == "api_key":
            self.tenants = SqlTenantStore.from_url(
                settings.gateway.resolved_database_url(),
                schema=settings.gateway.database_schema or None,
            )

    async def stop(self, grace: float | None = None) -> None:
        """Stops every worker (SIGTERM: each drains within `grace`, default
        `server.grace_seconds`, and is killed if still running `STOP_MARGIN_SECONDS` later),
        then Triton and the metrics endpoint."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        supervisors = [s.supervisor for s in self._slots if s.supervisor is not None]
        for task in supervisors:
            task.cancel()
        await asyncio.gather(*supervisors, return_exceptions=True)
        grace = self._settings.server.grace_seconds if grace is None else grace
        running = [p for p in self._processes if p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        await asyncio.gather(*(_reap(p, grace + STOP_MARGIN_SECONDS) for p in running))
        await asyncio.gather(*self._forwarders, return_exceptions=True)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self.tenants is not None:
            await self.tenants.close()
        if self._triton is not None:
            await self._triton.stop()
        self._reservation.close()
        if self._http_reservation is not None:
            self._http_reservation.close()

    # -------------------------------------------------------------------------- workers

    async def _spawn(self, index: int) -> _Worker:
        """Starts worker `index` and returns once it serves; raises `WorkerConfigError` or
        `WorkerStartError` when it exits first (and kills it when cancelled)."""
        read_end, write_end = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.platform.workers",
                "--ready-fd",
                str(write_end),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(write_end,),
                process_group=0,
                limit=_LINE_LIMIT,
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        self._processes.add(process)
        self._forward(process, index)
        try:
            await _send(process, self._spec)
            report = await _read_line(read_end)
            if not report:
                code = await process.wait()
                raise WorkerStartError(f"worker {index} exited ({_status(code)}) before serving")
            message = json.loads(report)
            if "error" in message:
                await process.wait()
                raise WorkerConfigError(str(message["error"]))
            ready = WorkerReady(
                pid=int(message["pid"]),
                address=str(message["address"]),
                port=int(message["port"]),
                services=tuple(message["services"]),
                metrics_port=message["metrics_port"],
                http_port=message.get("http_port"),
            )
        except BaseException:
            if process.returncode is None:
                process.kill()
                await process.wait()
            self._processes.discard(process)
            raise
        _logger.info("worker %d serving (pid %d)", index, ready.pid)
        return _Worker(index, process, ready, asyncio.get_running_loop().time())

    async def _supervise(self, slot: _Slot) -> None:
        """Waits for the slot's worker to exit and starts another, until stopping."""
        loop = asyncio.get_running_loop()
        young_deaths = 0
        while slot.worker is not None:
            worker = slot.worker
            code = await worker.process.wait()
            self._processes.discard(worker.process)
            slot.worker = None
            slot.restarts += 1
            young = loop.time() - worker.started < YOUNG_SECONDS
            young_deaths = young_deaths + 1 if young else 0
            _logger.error(
                "worker %d (pid %d) exited (%s); restarting it",
                worker.index,
                worker.ready.pid,
                _status(code),
            )
            while slot.worker is None:
                if young_deaths and await self._stopped_within(
                    min(2.0 ** (young_deaths - 1), _MAX_BACKOFF_SECONDS)
                ):
                    return
                try:
                    slot.worker = await self._spawn(worker.index)
                except (WorkerStartError, ConfigError) as error:
                    young_deaths += 1
                    _logger.error("worker %d did not start: %s", worker.index, error)

    async def _stopped_within(self, seconds: float) -> bool:
        """Waits `seconds` (a restart backoff), or less if the pool stops; whether it did."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _forward(self, process: asyncio.subprocess.Process, index: int) -> None:
        for stream, target in ((process.stdout, sys.stdout), (process.stderr, sys.stderr)):
            if stream is None:
                continue
            task = asyncio.create_task(_copy_lines(stream, target, f"[worker {index}] "))
            self._forwarders.add(task)
            task.add_done_callback(self._forwarders.discard)

    # -------------------------------------------------------------------------- metrics

    def _scrape_targets(self) -> list[tuple[str, WorkerReady | None]]:
        """(worker label, its readiness or None while restarting), for the metrics thread."""
        return [
            (str(index), slot.worker.ready if slot.worker is not None else None)
            for index, slot in enumerate(list(self._slots))
        ]

    def _restarts(self) -> dict[str, int]:
        return {str(index): slot.restarts for index, slot in enumerate(list(self._slots))}

    def metrics_url(self, ready: WorkerReady) -> str:
        """The `/metrics` URL of a worker's own endpoint."""
        host = self._settings.server.host
        if host in ("", "0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{ready.metrics_port}/metrics"


async def start_workers(settings: PlatformSettings) -> WorkerPool:
    """Starts the supervisor's workers (see the module docstring) and returns once every one
    serves. Raises `ConfigError` for settings wrong across processes or a worker's refused
    configuration, and `WorkerStartError` when a worker dies before serving."""
    problems = worker_problems(settings)
    if problems:
        raise ConfigError(problems)
    check_transport(settings)
    reservation = reserve_port(settings.server.host, settings.server.port)
    http_reservation: socket.socket | None = None
    if settings.server.http_port is not None and serves_http(settings):
        try:
            http_reservation = reserve_port(
                settings.server.host,
                settings.server.http_port,
                "server.http_port",
                HTTP_PORT_ADVICE,
            )
        except ConfigError:
            reservation.close()
            raise
    token = settings.auth.internal_token or secrets.token_urlsafe(32)
    pool = WorkerPool(
        settings,
        reservation=reservation,
        internal_token=token,
        http_reservation=http_reservation,
    )
    try:
        await pool.start()
    except BaseException:
        await pool.stop(grace=0)
        raise
    return pool


class WorkerMetrics:
    """A Prometheus collector: every worker's metrics, scraped at each collection and merged
    (`merge_worker_metrics`), and the supervisor's view of its workers."""

    def __init__(
        self,
        targets: Callable[[], Sequence[tuple[str, WorkerReady | None]]],
        restarts: Callable[[], Mapping[str, int]],
        url: Callable[[WorkerReady], str] | None = None,
    ) -> None:
        self._targets = targets
        self._restarts = restarts
        self._url = url

    def describe(self) -> list[Metric]:
        """Nothing up front: the families are whatever the workers expose."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Scrapes every serving worker (one at a time, `SCRAPE_TIMEOUT_SECONDS` each)."""
        up = GaugeMetricFamily(
            "genai_worker_up", "1 when the worker's metrics were read.", labels=[WORKER_LABEL]
        )
        info = GaugeMetricFamily(
            "genai_worker_info", "The process of each serving worker.", labels=[WORKER_LABEL, "pid"]
        )
        restarts = CounterMetricFamily(
            "genai_worker_restarts",
            "Workers started again after they exited.",
            labels=[WORKER_LABEL],
        )
        scraped: dict[str, str] = {}
        for label, ready in self._targets():
            text = _scrape(self._url_of(ready)) if ready is not None else None
            up.add_metric([label], 1.0 if text is not None else 0.0)
            if ready is not None:
                info.add_metric([label, str(ready.pid)], 1.0)
            if text is not None:
                scraped[label] = text
        for label, count in self._restarts().items():
            restarts.add_metric([label], float(count))
        yield from merge_worker_metrics(scraped)
        yield from (up, info, restarts)

    def _url_of(self, ready: WorkerReady) -> str:
        if self._url is not None:
            return self._url(ready)
        return f"http://127.0.0.1:{ready.metrics_port}/metrics"


def merge_worker_metrics(scrapes: Mapping[str, str]) -> list[Metric]:
    """The metric families of several workers' OpenMetrics expositions (worker label ->
    text), merged by name (HELP, TYPE and unit from the first worker that has the family),
    each sample labelled `worker`."""
    merged: dict[str, Metric] = {}
    for label, text in scrapes.items():
        for family in text_string_to_metric_families(text):  # type: ignore[no-untyped-call]
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            target.samples.extend(
                sample._replace(labels={**sample.labels, WORKER_LABEL: label})
                for sample in family.samples
            )
    return list(merged.values())


def _scrape(url: str) -> str | None:
    request = urllib.request.Request(url, headers={"Accept": OPENMETRICS})
    try:
        with urllib.request.urlopen(request, timeout=SCRAPE_TIMEOUT_SECONDS) as response:
            return str(response.read().decode("utf-8"))
    except OSError:  # a worker restarting, or stopping: reported by genai_worker_up
        return None


async def _send(process: asyncio.subprocess.Process, spec: str) -> None:
    """Writes the worker's spec line to its stdin and closes it (a worker that died already
    is found by the caller)."""
    if process.stdin is None:
        return
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        process.stdin.write(spec.encode() + b"\n")
        await process.stdin.drain()
    process.stdin.close()


async def _read_line(fd: int) -> bytes:
    """One line from the pipe `fd` (closed afterwards); b"" when its writer closed first."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        return await reader.readline()
    finally:
        transport.close()


async def _copy_lines(stream: asyncio.StreamReader, target: TextIO, prefix: str) -> None:
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # longer than _LINE_LIMIT: dropped, said so
            target.write(f"{prefix}(a line over {_LINE_LIMIT} bytes was dropped)\n")
            continue
        if not line:
            return
        target.write(prefix + line.decode(errors="replace").rstrip("\n") + "\n")
        target.flush()


async def _reap(process: asyncio.subprocess.Process, within: float) -> None:
    try:
        await asyncio.wait_for(process.wait(), within)
    except TimeoutError:
        _logger.error("worker pid %d did not stop within %g s; killing it", process.pid, within)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def _status(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"status {code}"


# ------------------------------------------------------------------------------ the worker


def _die_with(parent: int) -> None:
    """Asks Linux for SIGTERM when the supervisor dies; exits if it is gone already."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        raise SystemExit(1)


def _report(fd: int, message: Mapping[str, object]) -> None:
    with os.fdopen(fd, "w") as pipe:
        pipe.write(json.dumps(message) + "\n")


async def _work(settings: PlatformSettings, local_triton: str | None, ready_fd: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        platform = await start_platform(settings, local_triton=local_triton, http_reuse_port=True)
    except ConfigError as error:
        _report(ready_fd, {"error": str(error)})
        return 2
    if platform.metrics_registry is not None:
        ProcessCollector(registry=platform.metrics_registry)  # CPU and memory of each worker
    _report(
        ready_fd,
        {
            "pid": os.getpid(),
            "address": platform.address,
            "port": platform.server.port,
            "services": list(platform.hosted_services),
            "metrics_port": platform.metrics_port,
            "http_port": platform.http_port,
        },
    )
    await stop.wait()
    _logger.info("draining for up to %g s", settings.server.grace_seconds)
    await platform.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """A worker: reads its spec (settings, Triton address, supervisor pid) from stdin, serves
    until SIGTERM or SIGINT, reports readiness (or its configuration error) on `--ready-fd`."""
    parser = argparse.ArgumentParser(prog="python -m services.platform.workers")
    parser.add_argument("--ready-fd", type=int, required=True, help="pipe to report on")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("GENAI_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    quiet_cross_context_detach()
    spec = json.loads(sys.stdin.readline())
    _die_with(int(spec["supervisor_pid"]))
    settings = PlatformSettings.model_validate(spec["settings"])
    return asyncio.run(_work(settings, spec["local_triton"], args.ready_fd))


if __name__ == "__main__":
    sys.exit(main())
