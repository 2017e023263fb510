"""A multi-process deployment of the platform on this machine, for benchmarks that kill
processes: `genai serve` replicas on fixed ports (so a restarted one comes back where clients
look for it), Tritons serving a paced zero-compute model, and a PostgreSQL schema and Redis key
prefix of the run's own.

Each replica runs in a process group of its own, so a SIGKILL takes it down as a crash would,
and `stop` drains it with SIGTERM as an operator would.
"""

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from benchmarks.cli import ROOT
from benchmarks.inference import CPU_REPOSITORY
from benchmarks.processes import terminate, wait_ready
from scripts.lib import manifests
from services.inference.adapters.tritonserver import pick_free_port, pick_free_ports

if TYPE_CHECKING:
    from services.inference.adapters.tritonserver import TritonServer

POSTGRES_URL: Final = os.environ.get(
    "GENAI_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
"""The PostgreSQL a run gets a schema of its own in."""
REDIS_URL: Final = os.environ.get("GENAI_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
"""The Redis a run gets a key prefix of its own in."""
MODEL: Final = "zero"
"""The catalog name of the paced zero-compute model."""
TRITON_MODEL: Final = "zero_llm"

_CATALOG: Final = """\
currency: USD
models:
{models}"""
_CATALOG_MODEL: Final = """\
  - name: {model}
    capabilities: [chat, streaming]
    max_context_tokens: 1000000
    max_output_tokens: 100000
    price_per_million_tokens: {{input: 1, output: 2}}
    quality_tier: 1
    pinned_only: true
    backends:
{backends}
"""


def zero_catalog(
    endpoints: Sequence[str], models: Sequence[tuple[str, str]] = ((MODEL, TRITON_MODEL),)
) -> str:
    """The router's catalog of zero-compute models (catalog name, Triton model): priced (so
    that the gateway prices every request), reachable only when pinned, each with a backend
    `triton-<i>` at each of `endpoints`."""
    entries = []
    for model, triton_model in models:
        backends = "\n".join(
            f'      - {{id: triton-{i}, kind: triton, endpoint: "{endpoint}", '
            f"backend_model: {triton_model}}}"
            for i, endpoint in enumerate(endpoints)
        )
        entries.append(_CATALOG_MODEL.format(model=model, backends=backends))
    return _CATALOG.format(models="".join(entries))


class Replica:
    """One `genai serve` process on a fixed port, killed and restarted at will."""

    def __init__(
        self, name: str, services: Sequence[str], env: dict[str, str], run_dir: Path
    ) -> None:
        self.name = name
        self.services = tuple(services)
        self.env = env
        self.port = pick_free_port()
        self.log_file = run_dir / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ready_file(self) -> Path:
        return self.log_file.with_suffix(".ready.json")

    def args(self) -> list[str]:
        """`genai serve`'s arguments: the services, no prompt seeding (as the manifests'
        Deployments run it), and this process's port and ready file."""
        args = ["serve", *(arg for service in self.services for arg in ("--service", service))]
        return [
            *args,
            "--no-prompts",
            "--port",
            str(self.port),
            "--ready-file",
            str(self.ready_file),
        ]

    async def start(self, patience_s: float = 90.0) -> None:
        """Starts it and returns once it serves (its ready file is written)."""
        ready = self.ready_file
        ready.unlink(missing_ok=True)
        with self.log_file.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.cli",
                *self.args(),
                cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        await wait_ready(self.process, ready, self.log_file, patience_s)

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a lost node would."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    async def stop(self) -> None:
        """SIGTERM (it drains), then SIGKILL after 15 s."""
        if self.process is not None:
            await terminate(self.process, patience_s=15)


class Tritons:
    """The two Tritons, serving the paced zero model from a repository of this run."""

    def __init__(self, repository: Path, run_dir: Path) -> None:
        self.repository = repository
        self.run_dir = run_dir
        self.ports = pick_free_ports(2)
        self.servers: list[TritonServer] = []

    def address(self, index: int) -> str:
        return f"127.0.0.1:{self.ports[index]}"

    async def start(self, index: int | None = None) -> None:
        from services.inference.adapters.tritonserver import TritonServer

        indexes = range(len(self.ports)) if index is None else [index]
        for i in indexes:
            server = TritonServer()
            await server.start(
                self.repository,
                models=[TRITON_MODEL],
                grpc_port=self.ports[i],
                http_port=None,
                metrics_port=None,
                log_file=self.run_dir / f"triton-{i}.log",
            )
            if index is None:
                self.servers.append(server)
            else:
                self.servers[i] = server

    def kill(self, index: int) -> None:
        pid = self.servers[index].pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    async def restart(self, index: int) -> None:
        with contextlib.suppress(Exception):
            await self.servers[index].stop(grace=1)
        await self.start(index)

    async def stop(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                await server.stop()


def paced_repository(folder: Path, interval_us: int) -> Path:
    """A model repository with `zero_llm` pacing its tokens `interval_us` apart."""
    repository = folder / "models"
    shutil.copytree(CPU_REPOSITORY / TRITON_MODEL, repository / TRITON_MODEL)
    config = repository / TRITON_MODEL / "config.pbtxt"
    text = config.read_text()
    marker = 'key: "token_interval_us"\n    value: { string_value: "0" }'
    if marker not in text:
        raise RuntimeError(f"{config} does not set token_interval_us as expected")
    config.write_text(text.replace(marker, marker.replace('"0"', f'"{interval_us}"')))
    return repository


@dataclass
class Shared:
    """The run's PostgreSQL schema and Redis prefix."""

    schema: str
    prefix: str

    @classmethod
    def new(cls) -> "Shared":
        tag = uuid.uuid4().hex[:12]
        return cls(schema=f"bench_replicas_{tag}", prefix=f"genai-bench:{tag}:")

    async def create(self) -> None:
        import sqlalchemy as sa
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(POSTGRES_URL)
        try:
            async with engine.begin() as conn:
                await conn.execute(sa.text(f'CREATE SCHEMA "{self.schema}"'))
        finally:
            await engine.dispose()

    async def drop(self) -> None:
        import sqlalchemy as sa
        from redis.asyncio import Redis
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(POSTGRES_URL)
        try:
            async with engine.begin() as conn:
                await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
        finally:
            await engine.dispose()
        client = Redis.from_url(REDIS_URL)
        try:
            keys = [key async for key in client.scan_iter(match=f"{self.prefix}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


OVERLAY: Final = "cpu"
"""The overlay whose manifests the processes take their command lines and variables from."""
GATEWAY_DEPLOYMENT: Final = "genai-gateway"
PROMPT_DEPLOYMENT: Final = "genai-prompt"
EXPERIMENT_DEPLOYMENT: Final = "genai-experiment"
EVALUATION_DEPLOYMENT: Final = "genai-evaluation"
MIGRATION_JOB: Final = "genai-migrate"
"""The workloads of deploy/kubernetes this deployment runs as processes."""

LOCAL_VALUES: Final[Mapping[str, str]] = {
    "GENAI_SERVER__HOST": "every process listens on 127.0.0.1 (one machine, no network)",
    "GENAI_SERVER__METRICS_PORT": "0 picks a free one: the processes share one machine",
    "GENAI_SERVER__HTTP_PORT": "0 picks a free one: the gateway replicas share one machine",
    "GENAI_SERVER__GRACE_SECONDS": "2 s: the run stops its processes at the end",
    "GENAI_ROUTER__CATALOG_FILE": "the paced zero model's catalog, written by the run",
    "GENAI_INFERENCE__MODELS": "the paced zero model on the run's two Tritons",
}
"""Manifest variables that the run sets to values of this machine, each with why. Secrets
(`secretKeyRef`) take the run's PostgreSQL, Redis and a token of its own, and every
`dns:///<deployment>-headless:PORT` target the addresses of that workload's processes."""
BENCH_ONLY: Final[Mapping[str, str]] = {
    "GENAI_ROUTER__HEALTH_CHECK_SECONDS": "1 s: the fault phase measures failover",
    "GENAI_GATEWAY__QUOTA__KEY_PREFIX": "the run's own Redis keys",
    "GENAI_GATEWAY__QUOTA__LEASE_SECONDS": "the lease the run sweeps",
    "GENAI_GATEWAY__ONLINE_EVALUATION__SHARE": "0: no quality scoring of zero's tokens",
    "GENAI_*__DATABASE_SCHEMA": "the run's own PostgreSQL schema, beside each DATABASE_URL(_FILE)",
}
"""Variables the run adds to the manifests' (and the manifests must not set), each with why."""


def manifest_workload(workload: str) -> tuple[manifests.Document, dict[str, Any]]:
    """`workload` (a Deployment or the migration Job) in the overlay's manifests, and its
    platform container."""
    docs = manifests.render(OVERLAY)
    kind = "Job" if workload == MIGRATION_JOB else "Deployment"
    doc = manifests.find(docs, kind, workload)
    if kind == "Deployment":
        return doc, manifests.serve_container(doc)
    (container,) = manifests.containers(doc, init=False)
    return doc, container


def manifest_container(workload: str) -> dict[str, Any]:
    """The platform container of `workload` in the overlay's manifests."""
    return manifest_workload(workload)[1]


def manifest_env(workload: str) -> dict[str, manifests.EnvValue]:
    """The environment the manifests give `workload`'s platform container."""
    doc, container = manifest_workload(workload)
    return manifests.environment(manifests.render(OVERLAY), doc, container)


def hosted(workload: str) -> tuple[str, ...]:
    """The services `workload`'s `genai serve` hosts."""
    return manifests.hosted_services(manifest_container(workload)["args"])


@dataclass(frozen=True)
class LocalValues:
    """What this machine puts where the manifests name cluster things."""

    shared: Shared
    tritons: "Tritons"
    catalog: Path
    data: Path
    lease_s: float
    internal_token: str

    def secret(self, value: manifests.SecretValue) -> str:
        return {
            ("genai-database", "url"): POSTGRES_URL,
            ("genai-redis", "url"): REDIS_URL,
            ("genai-internal-token", "token"): self.internal_token,
        }[(value.secret, value.key)]

    def secret_file(self, value: manifests.SecretValue) -> Path:
        """A file holding the run's value of a Secret's key (mode 0600)."""
        path = self.data / "secrets" / f"{value.secret}-{value.key}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(self.secret(value) + "\n")
        return path

    def local(self, variable: str) -> str:
        backends = [
            {"id": f"triton-{i}", "endpoint": self.tritons.address(i), "triton_model": TRITON_MODEL}
            for i in range(2)
        ]
        model = {
            "name": MODEL,
            "backends": backends,
            "max_output_tokens": 100_000,
            "chat_template": "builtin:chatml",
        }
        return {
            "GENAI_SERVER__HOST": "127.0.0.1",
            "GENAI_SERVER__METRICS_PORT": "0",
            "GENAI_SERVER__HTTP_PORT": "0",
            "GENAI_SERVER__GRACE_SECONDS": "2",
            "GENAI_ROUTER__CATALOG_FILE": str(self.catalog),
            "GENAI_INFERENCE__MODELS": json.dumps([model]),
        }[variable]


def process_env(
    workload: str, local: LocalValues, addresses: Mapping[str, Sequence[str]]
) -> dict[str, str]:
    """The variables of one process of `workload`: the manifests' (`manifest_env`), with
    `LOCAL_VALUES`, Secrets and headless targets replaced by this machine's, plus `BENCH_ONLY`.
    `addresses` has the processes' addresses of each workload."""
    env: dict[str, str] = {}
    for variable, value in manifest_env(workload).items():
        if isinstance(value, manifests.SecretValue):
            if variable.endswith("_FILE"):  # a mounted Secret: a file of the run's own
                env[variable] = str(local.secret_file(value))
            else:
                env[variable] = local.secret(value)
        elif variable in LOCAL_VALUES:
            env[variable] = local.local(variable)
        else:
            env[variable] = _local_targets(value, addresses)
    for variable in list(env):
        if variable.endswith(("__DATABASE_URL", "__DATABASE_URL_FILE")):
            section = variable[: variable.index("__DATABASE_URL")]
            env[f"{section}__DATABASE_SCHEMA"] = local.shared.schema
    if workload == GATEWAY_DEPLOYMENT:
        env["GENAI_ROUTER__HEALTH_CHECK_SECONDS"] = "1"
        env["GENAI_GATEWAY__QUOTA__KEY_PREFIX"] = local.shared.prefix
        env["GENAI_GATEWAY__QUOTA__LEASE_SECONDS"] = str(local.lease_s)
        env["GENAI_GATEWAY__ONLINE_EVALUATION__SHARE"] = "0"
    env["XDG_DATA_HOME"] = str(local.data / "xdg")
    return env


_HEADLESS = re.compile(r"dns:///([a-z0-9-]+)-headless:\d+")


def _local_targets(value: str, addresses: Mapping[str, Sequence[str]]) -> str:
    def local(match: re.Match[str]) -> str:
        workload = match.group(1)
        if workload not in addresses:
            raise KeyError(f"{match.group(0)}: this deployment runs no {workload} process")
        return ",".join(addresses[workload])

    return _HEADLESS.sub(local, value)


PROBES: Final = ("startupProbe", "readinessProbe", "livenessProbe")


async def check_probes(workloads: Mapping[str, Sequence["Replica"]]) -> dict[str, list[str]]:
    """Asks every process the `grpc.health.v1` questions its Deployment's probes ask (the
    service each names) and raises unless each answers SERVING: the manifests' probes are
    checked against running servers. Returns the services asked, per workload."""
    import grpc.aio
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    asked: dict[str, list[str]] = {}
    for workload, replicas in workloads.items():
        container = manifest_container(workload)
        names = sorted({container[p]["grpc"].get("service", "") for p in PROBES if p in container})
        asked[workload] = names
        for replica in replicas:
            async with grpc.aio.insecure_channel(replica.address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                for name in names:
                    request = health_pb2.HealthCheckRequest(service=name)
                    answer = await stub.Check(request, timeout=5)
                    if answer.status != health_pb2.HealthCheckResponse.SERVING:
                        raise RuntimeError(
                            f"{replica.name}: health of {name!r} is {answer.status}, which "
                            f"the {workload} probes would fail"
                        )
    return asked


def migration_args() -> list[str]:
    """The migration Job's command line, its prompts mount read from the repository."""
    container = manifest_container(MIGRATION_JOB)
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    args = list(container["args"])
    for i, arg in enumerate(args):
        if mounts.get(arg) == "prompts":
            args[i] = str(ROOT / "prompts")
    return args


async def migrate(env: Mapping[str, str], run_dir: Path) -> str:
    """Runs the migration Job's command (`genai migrate ...`) with `--bootstrap-admin-key` and
    returns the platform-admin key it printed."""
    log_file = run_dir / "migrate.log"
    command = [sys.executable, "-m", "services.cli", *migration_args(), "--bootstrap-admin-key"]
    with log_file.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env={**os.environ, **env},
        )
        out, _ = await process.communicate()
    text = out.decode()
    (run_dir / "migrate.out").write_text(re.sub(r"gk_\S+", "gk_…", text))
    if process.returncode != 0:
        raise RuntimeError(f"genai migrate failed ({process.returncode}); see {log_file}")
    found = re.search(r"export GENAI_API_KEY=(\S+)", text)
    if found is None:
        raise RuntimeError("genai migrate printed no bootstrap key")
    return found.group(1)
