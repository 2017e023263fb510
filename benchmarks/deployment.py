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
import secrets
import shutil
import signal
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from benchmarks.cli import ROOT
from benchmarks.inference import CPU_REPOSITORY
from benchmarks.processes import terminate, wait_ready
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


def zero_catalog(endpoints: Sequence[str]) -> str:
    """The router's catalog of the zero-compute model: priced (so that the gateway prices
    every request), reachable only when pinned, with a backend `triton-<i>` at each of
    `endpoints`."""
    backends = "\n".join(
        f'      - {{id: triton-{i}, kind: triton, endpoint: "{endpoint}", '
        f"backend_model: {TRITON_MODEL}}}"
        for i, endpoint in enumerate(endpoints)
    )
    return _CATALOG.format(model=MODEL, backends=backends)


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

    async def start(self, patience_s: float = 90.0) -> None:
        """Starts it and returns once it serves (its ready file is written)."""
        ready = self.log_file.with_suffix(".ready.json")
        ready.unlink(missing_ok=True)
        command = [sys.executable, "-m", "services.cli", "serve", "--port", str(self.port)]
        command += [arg for service in self.services for arg in ("--service", service)]
        command += ["--no-prompts", "--ready-file", str(ready)]
        with self.log_file.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *command,
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


def deployment_env(
    shared: Shared, tritons: Tritons, catalog: Path, data: Path, *, lease_s: float
) -> dict[str, str]:
    """What every process of the deployment shares."""
    backends = [
        {"id": f"triton-{i}", "endpoint": tritons.address(i), "triton_model": TRITON_MODEL}
        for i in range(2)
    ]
    model = {
        "name": MODEL,
        "backends": backends,
        "max_output_tokens": 100_000,
        "chat_template": "builtin:chatml",
    }
    env = {
        "GENAI_AUTH__MODE": "api_key",
        "GENAI_AUTH__INTERNAL_TOKEN": secrets.token_urlsafe(32),
        "GENAI_SERVER__GRACE_SECONDS": "2",
        "GENAI_ROUTER__CATALOG_FILE": str(catalog),
        "GENAI_ROUTER__HEALTH_CHECK_SECONDS": "1",
        "GENAI_INFERENCE__TRITON__LAUNCH": "false",
        "GENAI_INFERENCE__MODELS": json.dumps([model]),
        "GENAI_GATEWAY__QUOTA__BACKEND": "redis",
        "GENAI_GATEWAY__QUOTA__REDIS_URL": REDIS_URL,
        "GENAI_GATEWAY__QUOTA__KEY_PREFIX": shared.prefix,
        "GENAI_GATEWAY__QUOTA__LEASE_SECONDS": str(lease_s),
        "GENAI_GATEWAY__ONLINE_EVALUATION__SHARE": "0",
        "XDG_DATA_HOME": str(data / "xdg"),
    }
    for service in ("PROMPT", "GATEWAY", "EXPERIMENT", "EVALUATION"):
        env[f"GENAI_{service}__DATABASE_URL"] = POSTGRES_URL
        env[f"GENAI_{service}__DATABASE_SCHEMA"] = shared.schema
    return env
