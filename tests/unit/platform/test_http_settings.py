"""`server.http_port` and `server.http`: the port rule (8080, but a free one when the gRPC port is
0, so in-process platforms never collide), turning HTTP off, `genai serve`'s options, and what
the workers of `genai serve --workers` get."""

import socket
from pathlib import Path

import pytest

from services.cli import _parser, serve_settings
from services.common.config import ConfigError, load_settings
from services.common.http import DEFAULT_HTTP_PORT
from services.platform.runner import serves_http
from services.platform.settings import PlatformSettings, ServerSettings
from services.platform.workers import start_workers, worker_settings


def _settings(**env: str) -> PlatformSettings:
    return load_settings(PlatformSettings, path=None, env={f"GENAI_{k}": v for k, v in env.items()})


@pytest.mark.parametrize(
    ("env", "http_port"),
    [
        ({}, DEFAULT_HTTP_PORT),
        ({"SERVER__PORT": "50052"}, DEFAULT_HTTP_PORT),
        ({"SERVER__PORT": "0"}, 0),  # a test or a benchmark: a free port, never 8080
        ({"SERVER__PORT": "0", "SERVER__HTTP_PORT": "8081"}, 8081),  # set: kept
        ({"SERVER__HTTP_PORT": "0"}, 0),
        ({"SERVER__HTTP_PORT": "null"}, None),
        ({"SERVER__HTTP_PORT": "NULL", "SERVER__PORT": "0"}, None),
    ],
)
def test_the_http_port_follows_the_grpc_port_unless_set(
    env: dict[str, str], http_port: int | None
) -> None:
    assert _settings(**env).server.http_port == http_port


def test_the_default_comes_from_the_validated_port_in_every_way_of_building_settings(
    tmp_path: Path,
) -> None:
    assert ServerSettings().http_port == DEFAULT_HTTP_PORT
    assert ServerSettings(port=0).http_port == 0
    assert PlatformSettings.model_validate({"server": {"port": 0}}).server.http_port == 0
    file = tmp_path / "settings.yaml"
    file.write_text("server:\n  port: 0\n  http_port: null\n")
    assert load_settings(PlatformSettings, path=file, env={}).server.http_port is None
    file.write_text("server:\n  http_port: 9000\n  http:\n    max_connections: 64\n")
    server = load_settings(PlatformSettings, path=file, env={}).server
    assert (server.http_port, server.http.max_connections) == (9000, 64)


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"SERVER__HTTP_PORT": "70000"}, "server.http_port (from GENAI_SERVER__HTTP_PORT)"),
        ({"SERVER__HTTP_PORT": "off"}, "server.http_port (from GENAI_SERVER__HTTP_PORT)"),
        ({"SERVER__HTTP_PORT": "50051"}, "50051 is also server.port"),
        ({"SERVER__METRICS_PORT": "8080"}, "8080 is also server.metrics_port"),
        ({"SERVER__HTTP__MAX_BODY_BYTES": "10"}, "server.http.max_body_bytes"),
        ({"SERVER__HTTP__SEND_TIMEOUT_SECONDS": "0"}, "server.http.send_timeout_seconds"),
        ({"SERVER__HTTP__COLOUR": "blue"}, "server.http.colour"),
    ],
)
def test_invalid_http_settings_are_refused_naming_them(env: dict[str, str], complaint: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _settings(**env)
    assert complaint in str(raised.value)


def test_the_http_limits_have_the_documented_defaults() -> None:
    http = _settings().server.http
    assert http.max_body_bytes == 4 * 1024 * 1024
    assert (http.body_timeout_seconds, http.request_timeout_seconds) == (30, 600)
    assert (http.send_timeout_seconds, http.keep_alive_seconds) == (30, 5)
    assert http.max_connections == 1024


@pytest.mark.parametrize(
    ("args", "env", "http_port"),
    [
        ([], {}, DEFAULT_HTTP_PORT),
        (["--port", "0"], {}, 0),  # the tests' `genai serve --port 0`
        (["--port", "50061"], {}, DEFAULT_HTTP_PORT),
        (["--port", "0"], {"GENAI_SERVER__HTTP_PORT": "8090"}, 8090),  # set: kept
        (["--port", "0", "--http-port", "8091"], {}, 8091),
        (["--http-port", "0"], {"GENAI_SERVER__HTTP_PORT": "8090"}, 0),
        (["--no-http"], {"GENAI_SERVER__HTTP_PORT": "8090"}, None),
        (["--port", "7000"], {"GENAI_SERVER__PORT": "0"}, DEFAULT_HTTP_PORT),
    ],
)
def test_genai_serve_options_set_the_http_port(
    args: list[str], env: dict[str, str], http_port: int | None
) -> None:
    settings = serve_settings(_parser().parse_args(["serve", *args]), env)
    assert settings.server.http_port == http_port


def test_genai_serve_refuses_an_http_port_clash_as_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"server\.http_port .*also server\.port"):
        serve_settings(_parser().parse_args(["serve", "--http-port", "50051"]), {})
    with pytest.raises(SystemExit):  # argparse: not allowed together
        _parser().parse_args(["serve", "--no-http", "--http-port", "1"])


def test_only_processes_hosting_the_gateway_serve_http() -> None:
    assert serves_http(_settings())
    assert serves_http(_settings(SERVICES='["gateway", "router", "inference"]'))
    assert not serves_http(_settings(SERVICES='["prompt"]'))
    assert not serves_http(_settings(SERVER__HTTP_PORT="null"))


def test_each_worker_serves_the_shared_http_port() -> None:
    settings = _settings(SERVER__WORKERS="3", SERVER__PORT="0")
    worker = worker_settings(settings, port=41000, http_port=41001, internal_token="t")
    assert (worker.server.port, worker.server.http_port) == (41000, 41001)
    assert worker.server.http == settings.server.http
    no_http = worker_settings(settings, port=41000, http_port=None, internal_token="t")
    assert no_http.server.http_port is None


async def test_the_supervisor_refuses_an_http_port_in_use_before_any_worker_starts() -> None:
    with socket.socket() as grpc_port, socket.socket() as taken:
        grpc_port.bind(("127.0.0.1", 0))
        port = grpc_port.getsockname()[1]
        grpc_port.close()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        http_port = taken.getsockname()[1]
        settings = _settings(
            SERVER__WORKERS="2",
            SERVER__PORT=str(port),
            SERVER__HTTP_PORT=str(http_port),
            GATEWAY__QUOTA__BACKEND="redis",
        )
        with pytest.raises(ConfigError) as raised:
            await start_workers(settings)
    (problem,) = raised.value.problems
    assert problem.startswith(f"server.http_port {http_port} on 127.0.0.1: cannot bind it")
    assert "--no-http" in problem
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))  # the gRPC port's reservation was let go
