"""`genai serve --workers N` as an operator runs it: worker processes sharing one port, one
merged Prometheus endpoint, a killed worker restarted, SIGTERM draining every worker, Triton
launched once, and in-memory quotas refused."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from genai.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from google.protobuf import json_format
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from redis import Redis
from redis.exceptions import RedisError

from benchmarks.deployment import paced_repository
from tests.support.redis import REDIS_URL
from tests.support.serve import NO_TRITON, ROOT, ServeProcess, genai_serve
from tests.support.settings import ZERO_ONLY
from tests.support.triton import requires_triton

CALLS = 24
"""Calls over fresh connections: all landing on one of two workers has odds of 2 in 2**24."""


@pytest.fixture
def redis_quota() -> Iterator[dict[str, str]]:
    """Settings for quotas shared in the test Redis (what several workers need), under a key
    prefix of this test, deleted afterwards. Fails, never skips, without Redis."""
    prefix = f"genai-test:{uuid.uuid4().hex[:16]}:"
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=2.0)
    try:
        client.ping()
    except (RedisError, OSError) as error:
        client.close()
        pytest.fail(f"Redis is required at {REDIS_URL}: {error}", pytrace=False)
    yield {
        "GENAI_GATEWAY__QUOTA__BACKEND": "redis",
        "GENAI_GATEWAY__QUOTA__REDIS_URL": REDIS_URL,
        "GENAI_GATEWAY__QUOTA__KEY_PREFIX": prefix,
    }
    leftover = list(client.scan_iter(match=f"{prefix}*"))
    if leftover:
        client.delete(*leftover)
    client.close()


def _fresh_channel(served: ServeProcess) -> grpc.Channel:
    # A subchannel pool of its own: a new TCP connection, which the kernel hands to any worker.
    return grpc.insecure_channel(served.address, options=[("grpc.use_local_subchannel_pool", 1)])


def _auth(served: ServeProcess) -> tuple[tuple[str, str | bytes], ...]:
    return (("authorization", f"Bearer {served.api_key}"),)


def _complete_unknown_prompt(served: ServeProcess) -> grpc.StatusCode:
    """A Complete of a prompt nobody made, on a new connection: NOT_FOUND, counted by the
    gateway of whichever worker took the connection."""
    with _fresh_channel(served) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        try:
            stub.Complete(
                gateway_service_pb2.CompleteRequest(prompt="no-such-prompt"),
                metadata=_auth(served),
                timeout=30,
            )
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def _metrics(served: ServeProcess) -> tuple[str, list[Sample]]:
    """The merged endpoint's text and every sample in it."""
    url = f"http://127.0.0.1:{served.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    return text, [s for f in text_string_to_metric_families(text) for s in f.samples]


def _by_worker(samples: list[Sample], name: str, **labels: str) -> dict[str, float]:
    return {
        s.labels["worker"]: s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    }


def _worker_pids(samples: list[Sample]) -> dict[str, int]:
    return {
        s.labels["worker"]: int(s.labels["pid"]) for s in samples if s.name == "genai_worker_info"
    }


def _stop(served: ServeProcess) -> str:
    served.process.send_signal(signal.SIGTERM)
    output, _ = served.process.communicate(timeout=120)
    assert served.process.returncode == 0, output
    return output


def test_workers_share_one_port_and_one_metrics_endpoint_and_stop_on_sigterm(
    tmp_path: Path, redis_quota: dict[str, str]
) -> None:
    with genai_serve(tmp_path, "--workers", "2", env={**NO_TRITON, **redis_quota}) as served:
        assert len(set(served.workers)) == 2
        assert served.process.pid not in served.workers
        codes = [_complete_unknown_prompt(served) for _ in range(CALLS)]
        text, samples = _metrics(served)
        output = _stop(served)
    assert set(codes) == {grpc.StatusCode.NOT_FOUND}
    # Both workers answered, each counted in its own series of one merged family.
    answered = _by_worker(samples, "genai_gateway_requests_total", code="NOT_FOUND")
    assert set(answered) == {"0", "1"}
    assert all(count > 0 for count in answered.values()), answered
    assert sum(answered.values()) == CALLS
    assert text.count("# TYPE genai_gateway_requests_total counter") == 1
    assert text.count("# HELP gen_ai_client_operation_duration_seconds ") == 1
    assert set(_by_worker(samples, "process_cpu_seconds_total")) == {"0", "1"}
    assert _worker_pids(samples) == {"0": served.workers[0], "1": served.workers[1]}
    assert _by_worker(samples, "genai_worker_up") == {"0": 1.0, "1": 1.0}
    assert f"serving on {served.address}" in output
    assert "2 worker processes" in output
    assert "shutting down" in output
    assert "[worker 0] " in output
    assert "[worker 1] " in output
    for pid in served.workers:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the supervisor"


def test_a_killed_worker_is_restarted_on_the_same_port(
    tmp_path: Path, redis_quota: dict[str, str]
) -> None:
    with genai_serve(tmp_path, "--workers", "2", env={**NO_TRITON, **redis_quota}) as served:
        killed = served.workers[1]
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while True:  # until the supervisor reports a new worker 1 that serves metrics
            _, samples = _metrics(served)
            pids = _worker_pids(samples)
            if pids.get("1", killed) != killed and _by_worker(samples, "genai_worker_up")["1"]:
                break
            assert time.monotonic() < deadline, "worker 1 was not restarted"
            time.sleep(0.1)
        assert pids["0"] == served.workers[0]
        assert _by_worker(samples, "genai_worker_restarts_total") == {"0": 0.0, "1": 1.0}
        codes = [_complete_unknown_prompt(served) for _ in range(CALLS)]
        _, samples = _metrics(served)
        output = _stop(served)
    assert set(codes) == {grpc.StatusCode.NOT_FOUND}
    answered = _by_worker(samples, "genai_gateway_requests_total", code="NOT_FOUND")
    assert answered.get("1", 0) > 0, "the restarted worker took no connection"
    assert f"worker 1 (pid {killed}) exited (signal SIGKILL); restarting it" in output
    assert f"worker 1 serving (pid {pids['1']})" in output


def test_in_memory_quotas_with_several_workers_are_refused() -> None:
    """Each worker would count a tenant's usage on its own: N times the quota."""
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "serve", "--port", "0", "--workers", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **NO_TRITON, "GENAI_GATEWAY__QUOTA__BACKEND": "memory"},
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "gateway.quota.backend is memory" in result.stderr
    assert "GENAI_GATEWAY__QUOTA__BACKEND=redis" in result.stderr
    assert "[worker" not in result.stdout + result.stderr  # refused before any worker started


def _tritonservers_under(pid: int) -> list[int]:
    """The pids of the tritonserver processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, _, rest = stat.partition(") ")
        if name.endswith("(tritonserver") and int(rest.split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _request(**fields: object) -> dict[str, object]:
    """The sample `chat` prompt pinned to the zero model, as `StreamCompleteRequest` fields."""
    return {
        "prompt": "chat",
        "variables": {"message": "Name three colours."},
        "routing": {"model": "zero"},
        **fields,
    }


@requires_triton
def test_triton_is_launched_once_and_sigterm_drains_a_stream_in_flight(
    tmp_path: Path, redis_quota: dict[str, str]
) -> None:
    """Two workers on the one Triton their supervisor launched (zero_llm, 50 ms per token);
    SIGTERM arrives mid-stream and the stream still ends with its `final`."""
    env = {
        **redis_quota,
        **ZERO_ONLY,
        "GENAI_INFERENCE__TRITON__MODEL_REPOSITORY": str(paced_repository(tmp_path, 50_000)),
    }
    with genai_serve(tmp_path, "--workers", "2", env=env, timeout=240) as served:
        tritons = _tritonservers_under(served.process.pid)
        assert len(tritons) == 1
        assert all(_tritonservers_under(worker) == [] for worker in served.workers)
        for _ in range(CALLS // 2):
            with _fresh_channel(served) as channel:
                stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
                request = json_format.ParseDict(
                    _request(parameters={"maxTokens": 2}), gateway_service_pb2.CompleteRequest()
                )
                answer = stub.Complete(request, metadata=_auth(served), timeout=60)
                assert answer.metadata.model == "zero"
        _, samples = _metrics(served)
        answered = _by_worker(samples, "genai_gateway_requests_total", code="OK")

        with _fresh_channel(served) as channel:
            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            streamed = json_format.ParseDict(
                _request(parameters={"maxTokens": 40}), gateway_service_pb2.StreamCompleteRequest()
            )
            stream = iter(stub.StreamComplete(streamed, metadata=_auth(served), timeout=60))
            events = [next(stream).WhichOneof("event"), next(stream).WhichOneof("event")]
            served.process.send_signal(signal.SIGTERM)  # 2 s of tokens still to come
            rest = list(stream)
        output, _ = served.process.communicate(timeout=120)
    assert served.process.returncode == 0, output
    assert set(answered) == {"0", "1"}, answered  # both workers generated on the one Triton
    assert events == ["start", "delta"]
    assert rest[-1].WhichOneof("event") == "final"
    assert rest[-1].final.usage.output_tokens == 40
    assert output.count("starting Triton") == 1
    assert not Path(f"/proc/{tritons[0]}").exists(), "Triton outlived the supervisor"
