"""The tritonserver launcher (services.inference.adapters.tritonserver) with real processes:
instances side by side, kill and stop, logs kept, clear failures, the prepared home, the CLI."""

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import tritonclient.grpc.aio as aioclient

from services.inference.adapters.tritonserver import (
    TritonServer,
    TritonServerError,
    find_distribution,
    pick_free_port,
    prepare_home,
)
from tests.support.triton import (
    CPU_REPOSITORY,
    ROOT,
    generation_inputs,
    requires_triton,
    running_triton,
    stream_generation,
)

pytestmark = [pytest.mark.system, requires_triton]


async def generate(server: TritonServer, max_tokens: int = 3) -> str:
    client = aioclient.InferenceServerClient(server.grpc_address)
    try:
        chunks = await stream_generation(client, generation_inputs("p", max_tokens))
    finally:
        await client.close()
    return "".join(c.text for c in chunks)


async def test_two_instances_side_by_side_and_kill_leaves_the_other_serving(
    tmp_path: Path,
) -> None:
    async with (
        running_triton(tmp_path / "a", ["zero_llm"]) as a,
        running_triton(tmp_path / "b", ["zero_llm"]) as b,
    ):
        ports_a = {a.grpc_port, a.http_port, a.metrics_port}
        ports_b = {b.grpc_port, b.http_port, b.metrics_port}
        assert len(ports_a | ports_b) == 6
        assert a.log_file != b.log_file
        assert await generate(a) == await generate(b) == "tok0 tok1 tok2 "

        a.kill()

        assert not a.running
        assert a.returncode == -signal.SIGKILL
        assert await generate(b, 2) == "tok0 tok1 "
        with pytest.raises(Exception, match=r"StatusCode\.UNAVAILABLE"):
            await generate(a)
        assert a.pid is not None
        assert not _process_group_alive(a.pid), "Python stubs outlived the killed Triton"


def _shared_memory_regions() -> list[str]:
    """The Python backend's shared-memory regions of the servers this process started."""
    return [p.name for p in Path("/dev/shm").glob(f"genai_triton_{os.getpid()}_*")]


def _process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_stop_is_clean_and_the_log_is_kept(tmp_path: Path) -> None:
    async with running_triton(tmp_path, ["zero_llm"]) as server:
        assert server.metrics_url is not None
        assert server.http_url is not None
        pid = server.pid
        assert pid is not None

        code = await server.stop()

        assert code == 0
        assert not server.running
        assert not _process_group_alive(pid)
        assert _shared_memory_regions() == []
    assert server.log_file == tmp_path / "tritonserver.log"
    log = server.log_file.read_text()
    assert "successfully loaded 'zero_llm'" in log
    assert f"Started GRPCInferenceService at 127.0.0.1:{server.grpc_port}" in log
    assert "Signal (15) received." in log


async def test_a_missing_model_repository_fails_fast(tmp_path: Path) -> None:
    started = time.monotonic()

    with pytest.raises(TritonServerError, match=r"model repository .*nowhere does not exist"):
        await TritonServer().start(tmp_path / "nowhere", log_file=tmp_path / "t.log")

    assert time.monotonic() - started < 1.0


async def test_an_unknown_model_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(TritonServerError, match=r"lacks models \['no_such_model'\]"):
        await TritonServer().start(CPU_REPOSITORY, models=["no_such_model"])


async def test_a_model_that_fails_to_load_fails_the_start_with_the_log_tail(
    tmp_path: Path,
) -> None:
    model = tmp_path / "repository" / "broken" / "1"
    model.mkdir(parents=True)
    (model.parent / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 0\n'
        'input [{ name: "x", data_type: TYPE_INT32, dims: [1] }]\n'
        'output [{ name: "y", data_type: TYPE_INT32, dims: [1] }]\n'
    )
    (model / "model.py").write_text("raise RuntimeError('this model cannot load')\n")
    server = TritonServer()
    started = time.monotonic()

    with pytest.raises(TritonServerError) as caught:
        await server.start(model.parents[1], log_file=tmp_path / "t.log", startup_timeout=60)

    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert "exited with code 1 before it was ready" in message
    assert "this model cannot load" in message
    assert not server.running


async def test_a_port_in_use_is_refused_before_starting(tmp_path: Path) -> None:
    port = pick_free_port()
    with pytest.raises(TritonServerError, match=f"grpc port {port} is already in use"):
        async with running_triton(tmp_path / "first", ["zero_llm"], grpc_port=port):
            await TritonServer().start(CPU_REPOSITORY, models=["zero_llm"], grpc_port=port)


async def test_a_port_taken_while_starting_fails_clearly(tmp_path: Path) -> None:
    """Triton logs the failure and keeps running; the launcher notices it in the log (the
    probes alone could reach another server on that port)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()

        with pytest.raises(TritonServerError, match="failed to start GRPC service") as caught:
            await TritonServer().start(
                CPU_REPOSITORY,
                models=["zero_llm"],
                log_file=tmp_path / "t.log",
                extra_args=[f"--grpc-port={port}"],  # overrides the port the launcher picked
            )

    assert "already in use" in str(caught.value)
    assert time.monotonic() - started < 30


async def test_a_cancelled_start_leaves_no_triton_behind(tmp_path: Path) -> None:
    server = TritonServer()
    # minilm takes seconds to load: the start is cancelled while Triton runs.
    starting = asyncio.create_task(
        server.start(CPU_REPOSITORY, models=["minilm"], log_file=tmp_path / "t.log")
    )
    async with asyncio.timeout(60):
        while True:  # polls: the launcher has no event for "spawned"
            if server.pid is not None:
                break
            await asyncio.sleep(0.01)
    pid = server.pid
    await asyncio.sleep(0.5)

    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting

    assert not server.running
    assert not _process_group_alive(pid)
    assert await server.stop() == -signal.SIGKILL


def test_the_home_is_prepared_once_even_by_concurrent_callers(tmp_path: Path) -> None:
    distribution = find_distribution()
    homes: list[Path] = []
    errors: list[BaseException] = []

    def prepare() -> None:
        try:
            homes.append(prepare_home(distribution, root=tmp_path))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=prepare) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(set(homes)) == 1
    home = homes[0]
    assert (home / ".complete").exists()
    stub = home / "backends" / "python" / "triton_python_backend_stub"
    assert os.access(stub, os.X_OK)
    assert (home / "pyvenv.cfg").exists()
    leftovers = [p.name for p in home.parent.iterdir() if p.name.startswith(".staging")]
    assert leftovers == []
    assert prepare_home(distribution, root=tmp_path) == home


def _start_cli(log_file: Path) -> tuple["subprocess.Popen[str]", str]:
    """Runs the launcher's command line with zero_llm; (process, what it printed once ready)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.inference.adapters.tritonserver",
            "--model-repository",
            str(CPU_REPOSITORY),
            "--model",
            "zero_llm",
            "--grpc-port",
            "0",
            "--http-port",
            "off",
            "--metrics-port",
            "0",
            "--log-file",
            str(log_file),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("log "):
            break
    return process, "".join(lines)


def test_the_command_line_prints_endpoints_and_stops_on_sigterm(tmp_path: Path) -> None:
    log_file = tmp_path / "cli.log"
    process, output = _start_cli(log_file)
    try:
        assert "tritonserver ready in" in output, output
        assert "grpc     127.0.0.1:" in output
        assert "metrics  http://127.0.0.1:" in output
        assert "http " not in output

        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, rest
    assert "tritonserver stopped (exit code 0)" in rest
    assert "Signal (15) received." in log_file.read_text()


def test_triton_does_not_outlive_a_killed_launcher(tmp_path: Path) -> None:
    process, output = _start_cli(tmp_path / "cli.log")
    match = re.search(r"\(pid (\d+)\)", output)
    assert match is not None, output
    triton_pid = int(match.group(1))

    process.kill()
    process.communicate()

    deadline = time.monotonic() + 30
    while _process_group_alive(triton_pid):
        if time.monotonic() > deadline:
            os.killpg(triton_pid, signal.SIGKILL)
            pytest.fail("tritonserver outlived its launcher")
        time.sleep(0.05)


async def test_start_and_stop_of_several_instances_at_once(tmp_path: Path) -> None:
    """Concurrent starts pick distinct free ports and share the prepared home."""
    servers = [TritonServer() for _ in range(3)]
    try:
        await asyncio.gather(
            *(
                s.start(CPU_REPOSITORY, models=["zero_llm"], log_file=tmp_path / f"{i}.log")
                for i, s in enumerate(servers)
            )
        )
        assert len({s.grpc_port for s in servers}) == 3
        assert {await generate(s, 1) for s in servers} == {"tok0 "}
    finally:
        codes = await asyncio.gather(*(s.stop() for s in servers))
    assert codes == [0, 0, 0]
