"""Launches and supervises NVIDIA Triton Inference Server, the `tritonserver` 2.51 binary that
the `nvidia-pytriton` wheel ships.

- `find_distribution()` locates the binary, its libraries and the Python-backend stubs in
  site-packages (without importing pytriton).
- `prepare_home()` builds, once per user and installation, a backend directory whose Python
  backend has the stub of the running Python (`~/.cache/genai-platform/tritonserver-2.51/...`).
  It is built aside and renamed into place, so concurrent processes never see half of it.
- `triton_environment()` is the environment Triton needs: the running interpreter's LIBDIR and
  the wheel's libraries first on LD_LIBRARY_PATH (else the stub may load another
  libpython3.11 and `import transformers` fails in `_ssl`), and what lets `model.py` files
  import what this interpreter imports (site-packages, editable installs,
  `triton_models/python`): the stub ignores PYTHONPATH, so the home is also a small virtual
  environment whose `.pth` adds the directories of `$GENAI_TRITON_SITE_DIRS`.
- `TritonServer` starts one server on free (or given) ports, waits until the KServe v2
  `ServerReady`/`ModelReady` RPCs say it is ready, and stops or kills it. Its output goes to a
  log file that is kept. Several servers run side by side.

`python -m services.inference.adapters.tritonserver --model-repository triton_models/cpu`
runs one in the foreground until SIGINT/SIGTERM (see `main`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import hashlib
import importlib.util
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

TRITON_VERSION = "2.51"
"""The Triton release inside nvidia-pytriton 0.7.0."""
REPO_ROOT = Path(__file__).resolve().parents[3]
MODEL_PYTHON_DIR = REPO_ROOT / "triton_models" / "python"
"""Python shared by the CPU models (`genai_triton`); always importable by the models."""
DEFAULT_RUN_ROOT = Path(".run")
"""Where logs go when no log file is given (relative to the working directory)."""
DEFAULT_STARTUP_TIMEOUT = 180.0
_SHM_DIR = Path("/dev/shm")
_LOCAL_HOSTS = ("", "0.0.0.0", "::", "[::]")
_instances = itertools.count()


class TritonServerError(RuntimeError):
    """Triton cannot be found, prepared, started or stopped; the message says why (with the
    end of Triton's log when there is one)."""


# --------------------------------------------------------------------------------------------
# The distribution and the prepared home
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TritonDistribution:
    """The tritonserver files inside the installed nvidia-pytriton wheel."""

    root: Path
    """`<site-packages>/pytriton/tritonserver`."""
    libs_dir: Path
    """`<site-packages>/nvidia_pytriton.libs`: the shared libraries the binaries link."""

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def python_backend_dir(self) -> Path:
        return self.root / "backends" / "python"

    @property
    def caches_dir(self) -> Path:
        return self.root / "caches"

    def stub(self, python_version: str | None = None) -> Path:
        """The Python-backend stub built for `python_version` (default: the running one)."""
        version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
        return self.root / "python_backend_stubs" / version / "triton_python_backend_stub"


def find_distribution() -> TritonDistribution:
    """Locates the tritonserver of the nvidia-pytriton wheel; raises `TritonServerError` when
    it is not installed or incomplete."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerError(
            "nvidia-pytriton is not installed (pip install nvidia-pytriton==0.7.0)"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    distribution = TritonDistribution(
        root=package / "tritonserver", libs_dir=package.parent / "nvidia_pytriton.libs"
    )
    for needed in (distribution.binary, distribution.python_backend_dir, distribution.libs_dir):
        if not needed.exists():
            raise TritonServerError(f"the nvidia-pytriton installation lacks {needed}")
    return distribution


def cache_root() -> Path:
    """`$GENAI_CACHE_DIR`, else `$XDG_CACHE_HOME/genai-platform`, else
    `~/.cache/genai-platform`."""
    explicit = os.environ.get("GENAI_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "genai-platform"


SITE_DIRS_VARIABLE = "GENAI_TRITON_SITE_DIRS"
"""Directories (os.pathsep-separated) the models' Python adds as site directories."""
_SITE_PTH = (
    "# Written by services.inference.adapters.tritonserver: adds the site directories that\n"
    f"# ${SITE_DIRS_VARIABLE} lists (their .pth files are processed too).\n"
    "import os, site; list(map(site.addsitedir, filter(None, "
    f"os.environ.get('{SITE_DIRS_VARIABLE}', '').split(os.pathsep))))\n"
)


def prepare_home(
    distribution: TritonDistribution | None = None, *, root: Path | None = None
) -> Path:
    """A Triton home for the running Python, built once and reused; safe when several processes
    call it at once (each builds a private copy, then renames it into place).

    - `backends/python/`: the Python backend with the stub matching this interpreter.
    - A minimal virtual environment around it (`pyvenv.cfg`, `bin/python3`,
      `lib/pythonX.Y/site-packages/`). The stub embeds Python with the environment ignored
      (PYTHONPATH has no effect) and no program name, so Python finds `python3` on PATH and
      takes the virtual environment it belongs to; `triton_environment` puts this `bin/`
      first on PATH. The environment's one `.pth` file adds the directories of
      `$GENAI_TRITON_SITE_DIRS` as site directories.
    """
    distribution = distribution or find_distribution()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = distribution.stub(version)
    if not stub.exists():
        raise TritonServerError(f"nvidia-pytriton has no Python-backend stub for Python {version}")
    python = Path(os.path.realpath(sys.executable))
    sources = {
        "libtriton_python.so": distribution.python_backend_dir / "libtriton_python.so",
        "triton_python_backend_utils.py": (
            distribution.python_backend_dir / "triton_python_backend_utils.py"
        ),
        "triton_python_backend_stub": stub,
    }
    fingerprint = hashlib.sha256(f"{distribution.root.resolve()}|{python}|{_SITE_PTH}".encode())
    for path in sources.values():
        status = path.stat()
        fingerprint.update(f"{path.name}:{status.st_size}:{status.st_mtime_ns}".encode())
    base = (root or cache_root()) / f"tritonserver-{TRITON_VERSION}"
    home = base / f"py{version}-{fingerprint.hexdigest()[:16]}"
    marker = home / ".complete"
    if marker.exists():
        return home
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f".staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        backend = staging / "backends" / "python"
        backend.mkdir(parents=True)
        for name, source in sources.items():
            shutil.copy2(source, backend / name)
        (staging / "bin").mkdir()
        for name in ("python3", "python", f"python{version}"):
            (staging / "bin" / name).symlink_to(python)
        (staging / "pyvenv.cfg").write_text(
            f"home = {python.parent}\ninclude-system-site-packages = false\n"
            f"version = {sys.version.split()[0]}\n"
        )
        site_packages = staging / "lib" / f"python{version}" / "site-packages"
        site_packages.mkdir(parents=True)
        (site_packages / "_genai_triton_site.pth").write_text(_SITE_PTH)
        (staging / ".complete").write_text(f"{distribution.root}\n{python}\n")
        try:
            staging.rename(home)
        except OSError as error:
            # Another process renamed its own copy first: use that one.
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not marker.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return home


# --------------------------------------------------------------------------------------------
# The environment
# --------------------------------------------------------------------------------------------


def model_site_dirs(extra: Sequence[str] = ()) -> list[str]:
    """What the models' Python imports from: `extra`, `triton_models/python`, and this
    interpreter's site-packages (whose `.pth` files add editable installs)."""
    paths = [*extra]
    if MODEL_PYTHON_DIR.is_dir():
        paths.append(str(MODEL_PYTHON_DIR))
    paths += [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return list(dict.fromkeys(paths))


def _prepend(entries: Sequence[str], existing: str | None) -> str:
    parts = [*entries, *(existing.split(os.pathsep) if existing else [])]
    return os.pathsep.join(dict.fromkeys(p for p in parts if p))


def triton_environment(
    home: Path,
    distribution: TritonDistribution | None = None,
    *,
    base: Mapping[str, str] | None = None,
    extra_site_dirs: Sequence[str] = (),
) -> dict[str, str]:
    """The environment to run tritonserver with `home` (from `prepare_home`); `base` defaults
    to this process's environment.

    - LD_LIBRARY_PATH: this interpreter's LIBDIR first (else the stub may load another
      libpython3.11 and `import transformers` dies in `_ssl`), then the wheel's libraries.
    - PATH: `home/bin` first, so the stub's Python is the home's virtual environment.
    - GENAI_TRITON_SITE_DIRS: `model_site_dirs(extra_site_dirs)`.
    - Hugging Face libraries offline, unbuffered Python output.
    """
    distribution = distribution or find_distribution()
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR")
    libs = [libdir] if isinstance(libdir, str) and libdir else []
    env["LD_LIBRARY_PATH"] = _prepend(
        [*libs, str(distribution.libs_dir)], env.get("LD_LIBRARY_PATH")
    )
    env["PATH"] = _prepend([str(home / "bin")], env.get("PATH", os.defpath))
    env[SITE_DIRS_VARIABLE] = os.pathsep.join(model_site_dirs(extra_site_dirs))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# --------------------------------------------------------------------------------------------
# Ports and logs
# --------------------------------------------------------------------------------------------


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def pick_free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct TCP ports that are free now."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            probe = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            probe.bind((host, 0))
            ports.append(int(probe.getsockname()[1]))
        return ports


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP port can be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def read_tail(path: Path, lines: int = 40, *, start: int = 0) -> str:
    """The last `lines` lines of a file (from byte `start` on); empty when unreadable."""
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(start, size - 64 * 1024))
            text = log.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _log_path(log_file: str | os.PathLike[str] | None) -> Path:
    path = Path(log_file).resolve() if log_file else default_log_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def default_log_file(run_root: Path = DEFAULT_RUN_ROOT) -> Path:
    """`<run_root>/triton-<time>-<pid>-<n>/tritonserver.log`, a fresh run directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = run_root / f"triton-{stamp}-{os.getpid()}-{next(_instances)}"
    return run_dir.resolve() / "tritonserver.log"


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------

_ADDRESS_IN_USE = ("already in use", "Address in use", "address already in use")
_STARTUP_FAILURES = (
    "failed to start GRPC service",
    "failed to start HTTP service",
    "failed to start Metrics service",
)


class _LogReader:
    """Reads what a log file gained since `start` (all of it, accumulated)."""

    def __init__(self, path: Path, start: int) -> None:
        self._path = path
        self._offset = start
        self._text = ""

    def read(self) -> str:
        with contextlib.suppress(OSError), self._path.open("rb") as log:
            log.seek(self._offset)
            new = log.read()
            self._offset += len(new)
            self._text += new.decode("utf-8", errors="replace")
        return self._text


class TritonServer:
    """One tritonserver process.

    ```
    server = TritonServer()
    await server.start("triton_models/cpu", models=["zero_llm"])
    ...  # server.grpc_address, server.metrics_url
    await server.stop()
    ```
    Also an async context manager once started (`async with server: ...` stops it).
    """

    def __init__(
        self,
        *,
        distribution: TritonDistribution | None = None,
        home: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`env` adds to (and overrides) the prepared environment (`triton_environment`)."""
        self._distribution = distribution
        self._home = home
        self._extra_env = dict(env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._host = "127.0.0.1"
        self._grpc_port = 0
        self._http_port: int | None = None
        self._metrics_port: int | None = None
        self._log_file: Path | None = None
        self._shm_prefix = ""
        self._log_start = 0
        self._cleaned = True

    # -- properties ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process is not None else None

    @property
    def grpc_port(self) -> int:
        return self._grpc_port

    @property
    def http_port(self) -> int | None:
        return self._http_port

    @property
    def metrics_port(self) -> int | None:
        return self._metrics_port

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self._host in _LOCAL_HOSTS else self._host

    @property
    def grpc_address(self) -> str:
        """`host:port` of the KServe v2 gRPC endpoint (what tritonclient.grpc takes)."""
        return f"{self._client_host}:{self._grpc_port}"

    @property
    def http_url(self) -> str | None:
        if self._http_port is None:
            return None
        return f"http://{self._client_host}:{self._http_port}"

    @property
    def metrics_url(self) -> str | None:
        """The Prometheus endpoint, `http://host:port/metrics`."""
        if self._metrics_port is None:
            return None
        return f"http://{self._client_host}:{self._metrics_port}/metrics"

    @property
    def log_file(self) -> Path | None:
        return self._log_file

    def log_tail(self, lines: int = 40) -> str:
        """The end of Triton's log (of the current start attempt)."""
        if self._log_file is None:
            return ""
        return read_tail(self._log_file, lines, start=self._log_start)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(
        self,
        model_repository: str | os.PathLike[str],
        *,
        models: Sequence[str] | None = None,
        grpc_port: int = 0,
        http_port: int | None = 0,
        metrics_port: int | None = 0,
        host: str = "127.0.0.1",
        log_file: str | os.PathLike[str] | None = None,
        log_verbose: int = 0,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        exit_timeout: int = 10,
        die_with_parent: bool = True,
        auto_complete_config: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        """Starts Triton and returns once it (and every model of `models`) is ready.

        `models=None` loads the whole repository; a list uses explicit model control and loads
        just those. Port 0 picks a free port; `None` turns HTTP or metrics off. The log goes to
        `log_file` (appended; default: a new run directory under `.run/`). With
        `die_with_parent`, Triton gets SIGTERM when the thread that started it ends (Linux,
        via `setpriv --pdeathsig`). `auto_complete_config=False` (the default) trusts the
        configs as written, which saves each Python model a second start of its stub (and of
        its imports). Raises `TritonServerError` with the log's end when Triton
        exits or is not ready within `startup_timeout` seconds; it is then stopped.
        """
        if self.running:
            raise TritonServerError(f"tritonserver is already running (pid {self.pid})")
        repository, home, env = await asyncio.to_thread(
            self._prepare, model_repository, models, (grpc_port, http_port, metrics_port), host
        )
        self._log_file = await asyncio.to_thread(_log_path, log_file)
        self._host = host
        distribution = self._distribution
        assert distribution is not None

        auto_ports = grpc_port == 0 or http_port == 0 or metrics_port == 0
        attempts = 3 if auto_ports else 1
        for attempt in range(1, attempts + 1):
            # The OS may offer a port given explicitly (free while its server restarts).
            fixed = {grpc_port, http_port, metrics_port}
            free = iter([port for port in pick_free_ports(6) if port not in fixed])
            self._grpc_port = grpc_port or next(free)
            self._http_port = None if http_port is None else (http_port or next(free))
            self._metrics_port = None if metrics_port is None else (metrics_port or next(free))
            args = list(extra_args)
            if not auto_complete_config:
                args.insert(0, "--disable-auto-complete-config")
            command = self._command(
                distribution, home, repository, models, log_verbose, exit_timeout, args
            )
            if die_with_parent and sys.platform == "linux":
                setpriv = shutil.which("setpriv")
                if setpriv:
                    command = [setpriv, "--pdeathsig", "TERM", "--", *command]
            self._spawn(command, env)
            try:
                await self._wait_ready(
                    models or (),
                    time.monotonic() + startup_timeout,
                    confirm_in_log="--log-info=false" not in args,
                )
                return
            except BaseException as error:
                if not isinstance(error, TritonServerError):  # e.g. the start was cancelled
                    self.kill()
                    raise
                tail = self.log_tail()
                await asyncio.to_thread(self.kill)
                if attempt < attempts and any(s in tail for s in _ADDRESS_IN_USE):
                    continue  # a picked port was taken meanwhile: pick again
                raise TritonServerError(
                    f"{error}\n--- end of {self._log_file} ---\n{tail}"
                ) from None

    def _command(
        self,
        distribution: TritonDistribution,
        home: Path,
        repository: Path,
        models: Sequence[str] | None,
        log_verbose: int,
        exit_timeout: int,
        extra_args: Sequence[str],
    ) -> list[str]:
        self._shm_prefix = f"genai_triton_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        command = [
            str(distribution.binary),
            f"--model-repository={repository}",
            f"--backend-directory={home / 'backends'}",
            f"--cache-directory={distribution.caches_dir}",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            f"--grpc-address={self._host}",
            f"--grpc-port={self._grpc_port}",
            f"--log-verbose={log_verbose}",
            f"--exit-timeout-secs={exit_timeout}",
            "--allow-gpu-metrics=false",
        ]
        if self._http_port is None:
            command.append("--allow-http=false")
        else:
            command += [f"--http-address={self._host}", f"--http-port={self._http_port}"]
        if self._metrics_port is None:
            command.append("--allow-metrics=false")
        else:
            command += [f"--metrics-address={self._host}", f"--metrics-port={self._metrics_port}"]
        if models is not None:
            command.append("--model-control-mode=explicit")
            command += [f"--load-model={model}" for model in models]
        command += list(extra_args)
        return command

    def _spawn(self, command: list[str], env: dict[str, str]) -> None:
        assert self._log_file is not None
        # O_APPEND: Triton's and the Python stubs' output interleave without overwriting.
        with self._log_file.open("ab") as log:
            self._log_start = log.tell()
            log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
            log.flush()
            self._cleaned = False
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group: signals reach the Python stubs too
            )

    def _prepare(
        self,
        model_repository: str | os.PathLike[str],
        models: Sequence[str] | None,
        ports: tuple[int | None, ...],
        host: str,
    ) -> tuple[Path, Path, dict[str, str]]:
        """Checks what can be checked before starting; (repository, home, environment)."""
        repository = Path(model_repository).resolve()
        if not repository.is_dir():
            raise TritonServerError(f"model repository {repository} does not exist")
        if models is not None:
            missing = [m for m in models if not (repository / m / "config.pbtxt").is_file()]
            if missing:
                raise TritonServerError(f"model repository {repository} lacks models {missing}")
        bind_host = "0.0.0.0" if host in _LOCAL_HOSTS else host
        for name, port in zip(("grpc", "http", "metrics"), ports, strict=True):
            if port and not port_is_free(port, bind_host):
                raise TritonServerError(f"{name} port {port} is already in use")
        self._distribution = self._distribution or find_distribution()
        self._home = self._home or prepare_home(self._distribution)
        env = triton_environment(self._home, self._distribution)
        env.update(self._extra_env)
        return repository, self._home, env

    def _started_lines(self) -> list[str]:
        """What Triton logs once each endpoint listens (on our ports, not someone else's)."""
        lines = [f"Started GRPCInferenceService at {self._host}:{self._grpc_port}"]
        if self._http_port is not None:
            lines.append(f"Started HTTPService at {self._host}:{self._http_port}")
        if self._metrics_port is not None:
            lines.append(f"Started Metrics Service at {self._host}:{self._metrics_port}")
        return lines

    async def _wait_ready(
        self, models: Sequence[str], deadline: float, *, confirm_in_log: bool
    ) -> None:
        """Polls ServerReady/ModelReady. With `confirm_in_log`, also waits for the log to say
        that our endpoints listen: a port taken meanwhile (even by another Triton, which
        would answer the probes) makes Triton log a failure instead."""
        # Imported here: tritonclient is heavy and only needed once a server runs.
        from tritonclient.grpc.aio import InferenceServerClient
        from tritonclient.utils import InferenceServerException

        assert self._process is not None
        assert self._log_file is not None
        limit = deadline - time.monotonic()
        log = _LogReader(self._log_file, self._log_start)
        expected = self._started_lines() if confirm_in_log else []
        client = InferenceServerClient(self.grpc_address)
        try:
            while True:
                code = self._process.poll()
                if code is not None:
                    raise TritonServerError(
                        f"tritonserver exited with code {code} before it was ready"
                    )
                seen = await asyncio.to_thread(log.read)
                failure = next((line for line in _STARTUP_FAILURES if line in seen), None)
                if failure is not None:
                    raise TritonServerError(f"tritonserver {failure}")
                if all(line in seen for line in expected):
                    with contextlib.suppress(InferenceServerException):
                        if await client.is_server_ready(client_timeout=2.0):
                            states = [
                                await client.is_model_ready(model, client_timeout=2.0)
                                for model in models
                            ]
                            if all(states) and self._process.poll() is None:
                                return
                if time.monotonic() > deadline:
                    raise TritonServerError(
                        f"tritonserver (pid {self.pid}) was not ready within {limit:.0f} s"
                    )
                await asyncio.sleep(0.05)
        finally:
            await client.close()

    async def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns Triton's exit code (None when
        it never ran). Also ends leftover Python stubs and their shared memory."""
        process = self._process
        if process is None:
            return None
        if self._cleaned:  # stopped or killed already
            return process.returncode
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(process.wait), timeout=grace)
            except TimeoutError:
                self._kill_group()
                await asyncio.to_thread(process.wait)
        await asyncio.to_thread(self._cleanup)
        return process.returncode

    def kill(self) -> None:
        """SIGKILL to Triton and its Python stubs at once (a crash, for failover tests)."""
        if self._process is None or self._cleaned:  # never started, or stopped already
            return
        self._kill_group()
        self._process.wait()
        self._cleanup()

    def _kill_group(self) -> None:
        assert self._process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signal.SIGKILL)

    def _cleanup(self, wait: float = 2.0) -> None:
        """Kills the Python stubs that outlived Triton (its process group), waits up to `wait`
        seconds until they are gone, and removes their shared-memory regions. Once per start:
        later, the process group id may belong to someone else."""
        if self._cleaned:
            return
        self._cleaned = True
        if self._process is not None:
            group = self._process.pid
            deadline = time.monotonic() + wait
            while True:
                try:
                    os.killpg(group, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    break
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
        if self._shm_prefix and _SHM_DIR.is_dir():
            for region in _SHM_DIR.glob(f"{self._shm_prefix}*"):
                with contextlib.suppress(OSError):
                    region.unlink()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _port(value: str) -> int | None:
    """A port argument: a number (0 picks a free port) or `off`."""
    return None if value == "off" else int(value)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.inference.adapters.tritonserver",
        description="Run Triton Inference Server (from nvidia-pytriton) in the foreground "
        "until SIGINT or SIGTERM.",
    )
    parser.add_argument("--model-repository", default="triton_models/cpu")
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        help="load just this model (explicit model control); repeatable; default: all",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--grpc-port", type=int, default=8001, help="0 picks a free port")
    parser.add_argument("--http-port", type=_port, default=8000, help="0: free port; off")
    parser.add_argument("--metrics-port", type=_port, default=8002, help="0: free port; off")
    parser.add_argument("--log-file", default=None, help="default: a run directory in .run/")
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--startup-timeout", type=float, default=DEFAULT_STARTUP_TIMEOUT)
    parser.add_argument("extra_args", nargs="*", help="more tritonserver arguments, after `--`")
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> int:
    server = TritonServer()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    started = time.monotonic()
    starting = asyncio.create_task(
        server.start(
            args.model_repository,
            models=args.models,
            grpc_port=args.grpc_port,
            http_port=args.http_port,
            metrics_port=args.metrics_port,
            host=args.host,
            log_file=args.log_file,
            log_verbose=args.log_verbose,
            startup_timeout=args.startup_timeout,
            extra_args=args.extra_args,
        )
    )
    interrupted = asyncio.create_task(stopping.wait())
    await asyncio.wait({starting, interrupted}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # a signal while starting: the cancelled start kills Triton
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, TritonServerError):
            await starting
        print("interrupted while starting tritonserver", file=sys.stderr)
        return 1
    try:
        starting.result()
    except TritonServerError as error:
        interrupted.cancel()
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"tritonserver ready in {time.monotonic() - started:.1f} s (pid {server.pid})")
    print(f"grpc     {server.grpc_address}")
    if server.http_url:
        print(f"http     {server.http_url}")
    if server.metrics_url:
        print(f"metrics  {server.metrics_url}")
    print(f"log      {server.log_file}", flush=True)
    while not stopping.is_set():
        await asyncio.wait({interrupted}, timeout=0.5)
        if not server.running:
            print(f"error: tritonserver exited with code {server.returncode}", file=sys.stderr)
            print(server.log_tail(), file=sys.stderr)
            interrupted.cancel()
            return 1
    print("stopping tritonserver", flush=True)
    code = await server.stop()
    print(f"tritonserver stopped (exit code {code})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Starts Triton, prints its endpoints, and stops it on SIGINT/SIGTERM; returns the exit
    status (1 when Triton could not start or died)."""
    return asyncio.run(_run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
