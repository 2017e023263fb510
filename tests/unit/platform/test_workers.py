"""The pieces of `genai serve --workers`: which settings several workers refuse, what each
worker runs, the shared port, and the merged metrics families."""

import socket

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.parser import text_string_to_metric_families

from services.common.config import ConfigError, load_settings
from services.platform.settings import PlatformSettings
from services.platform.workers import (
    WorkerMetrics,
    WorkerReady,
    merge_worker_metrics,
    reserve_port,
    worker_problems,
    worker_settings,
)


def _settings(**env: str) -> PlatformSettings:
    return load_settings(PlatformSettings, path=None, env={f"GENAI_{k}": v for k, v in env.items()})


def test_workers_default_to_one_and_come_from_the_environment() -> None:
    assert _settings().server.workers == 1
    assert _settings(SERVER__WORKERS="4").server.workers == 4
    with pytest.raises(ConfigError, match=r"server\.workers"):
        _settings(SERVER__WORKERS="0")


@pytest.mark.parametrize(
    ("env", "refused"),
    [
        ({"SERVER__WORKERS": "2"}, True),  # the default quota backend is memory
        ({"SERVER__WORKERS": "2", "GATEWAY__QUOTA__BACKEND": "redis"}, False),
        ({"SERVER__WORKERS": "1"}, False),
        ({"SERVER__WORKERS": "2", "SERVICES": '["prompt"]'}, False),  # no gateway, no quotas
    ],
)
def test_in_memory_quotas_are_refused_with_several_workers(
    env: dict[str, str], refused: bool
) -> None:
    problems = worker_problems(_settings(**env))
    assert bool(problems) is refused
    if refused:
        assert "GENAI_GATEWAY__QUOTA__BACKEND=redis" in problems[0]
        assert "2 times the limits" in problems[0]


def test_each_worker_serves_the_shared_port_without_a_triton_of_its_own() -> None:
    settings = _settings(SERVER__WORKERS="3", SERVER__METRICS_PORT="9400")
    worker = worker_settings(settings, port=41000, internal_token="shared-token")
    assert (worker.server.port, worker.server.workers) == (41000, 1)
    assert worker.server.metrics_port == 0  # a private endpoint; the supervisor serves 9400
    assert worker.inference.triton.launch is False
    assert worker.auth.internal_token == "shared-token"
    assert worker.inference.models == settings.inference.models
    no_metrics = PlatformSettings.model_validate({"server": {"workers": 2, "metrics_port": None}})
    assert worker_settings(no_metrics, port=1, internal_token="t").server.metrics_port is None


def test_workers_share_the_console_session_secret() -> None:
    """Under API keys the console derives its secret from the shared internal token; under
    auth `none` there is none, so the shared secret becomes the console's (one browser session
    must open on every worker), unless one is configured."""
    keys = _settings(SERVER__WORKERS="2")
    assert keys.auth.mode == "api_key"
    assert (
        worker_settings(keys, port=1, internal_token="s" * 32).gateway.console.session_secret == ""
    )
    anonymous = _settings(SERVER__WORKERS="2", AUTH__MODE="none")
    worker = worker_settings(anonymous, port=1, internal_token="s" * 32)
    assert worker.gateway.console.session_secret == "s" * 32
    assert worker.auth.internal_token == ""
    chosen = _settings(
        SERVER__WORKERS="2", AUTH__MODE="none", GATEWAY__CONSOLE__SESSION_SECRET="c" * 32
    )
    assert worker_settings(
        chosen, port=1, internal_token="s" * 32
    ).gateway.console.session_secret == ("c" * 32)


def test_the_reserved_port_admits_workers_and_nothing_else() -> None:
    reservation = reserve_port("127.0.0.1", 0)
    port = reservation.getsockname()[1]
    try:
        assert port > 0
        worker = socket.socket()
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", port))  # what grpc does in each worker
        worker.close()
        stranger = socket.socket()
        with pytest.raises(OSError, match="Address already in use"):
            stranger.bind(("127.0.0.1", port))
        stranger.close()
    finally:
        reservation.close()


def test_a_port_taken_by_another_program_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match=r"server\.port \d+ on 127\.0\.0\.1: cannot bind"):
            reserve_port("127.0.0.1", taken.getsockname()[1])


def _worker_exposition(requests: int) -> str:
    registry = CollectorRegistry(auto_describe=True)
    counter = Counter("genai_gateway_requests", "Completions.", ("code",), registry=registry)
    counter.labels("OK").inc(requests)
    Histogram("latency_seconds", "Latency.", buckets=(1.0,), registry=registry).observe(0.5)
    exposition: bytes = openmetrics_latest(registry)  # type: ignore[no-untyped-call]
    return exposition.decode()


def test_merged_families_appear_once_with_every_worker_labelled() -> None:
    scrapes = {"0": _worker_exposition(3), "1": _worker_exposition(5)}

    class Merged:
        def collect(self) -> list[Metric]:
            return merge_worker_metrics(scrapes)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Merged())
    text = generate_latest(registry).decode()
    assert text.count("# TYPE genai_gateway_requests_total counter") == 1
    assert text.count("# TYPE latency_seconds histogram") == 1
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    requests = {
        s.labels["worker"]: s.value for s in samples if s.name == "genai_gateway_requests_total"
    }
    assert requests == {"0": 3.0, "1": 5.0}
    buckets = [s for s in samples if s.name == "latency_seconds_bucket"]
    assert {(s.labels["worker"], s.labels["le"]) for s in buckets} == {
        ("0", "1.0"),
        ("0", "+Inf"),
        ("1", "1.0"),
        ("1", "+Inf"),
    }


def test_workers_that_cannot_be_read_are_reported_down() -> None:
    """A restarting worker (no readiness yet) or one whose endpoint refuses: `up` 0."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refusing = closed.getsockname()[1]
        ready = WorkerReady(pid=4242, address="", port=0, services=(), metrics_port=refusing)
        collector = WorkerMetrics(lambda: [("0", ready), ("1", None)], lambda: {"0": 0, "1": 2})
        families = {family.name: family for family in collector.collect()}
    up = {s.labels["worker"]: s.value for s in families["genai_worker_up"].samples}
    assert up == {"0": 0.0, "1": 0.0}
    info = [(s.labels["worker"], s.labels["pid"]) for s in families["genai_worker_info"].samples]
    assert info == [("0", "4242")]
    restarts = {
        s.labels["worker"]: s.value
        for s in families["genai_worker_restarts"].samples
        if s.name == "genai_worker_restarts_total"
    }
    assert restarts == {"0": 0.0, "1": 2.0}
