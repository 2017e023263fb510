"""channel_target: what users write becomes a gRPC target and service config; every RPC of the
contract is classified idempotent or not; the command line checks --target as it parses."""

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from services import cli
from services.common.clients import (
    DEFAULT_TARGET,
    IDEMPOTENT_RPCS,
    NON_IDEMPOTENT_RPCS,
    RETRY_POLICY,
    TARGET_ENV,
    ClientTlsConfig,
    InvalidTargetError,
    channel_target,
    create_channel,
)
from services.common.contract import contract_services
from services.gateway import logs_cli

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("written", "target", "balanced", "listed"),
    [
        # One address: dialled as before (pick_first).
        ("127.0.0.1:50051", "127.0.0.1:50051", False, False),
        ("localhost:50051", "localhost:50051", False, False),
        ("prompt.genai.svc:50051", "prompt.genai.svc:50051", False, False),
        ("[::1]:50051", "[::1]:50051", False, False),
        # A list of IP literals: gRPC's own address-list targets.
        ("10.0.0.1:50051,10.0.0.2:50051", "ipv4:10.0.0.1:50051,10.0.0.2:50051", True, True),
        (" 127.0.0.1:1 , 127.0.0.1:2 ", "ipv4:127.0.0.1:1,127.0.0.1:2", True, True),
        ("[fd00::1]:50051,[fd00::2]:50051", "ipv6:[fd00::1]:50051,[fd00::2]:50051", True, True),
        # A DNS name: every A/AAAA record (a Kubernetes headless Service).
        (
            "dns:///prompt-headless.genai.svc:50051",
            "dns:///prompt-headless.genai.svc:50051",
            True,
            False,
        ),
        ("dns://10.0.0.53/prompt:50051", "dns://10.0.0.53/prompt:50051", True, False),
        ("dns:localhost:50051", "dns:localhost:50051", True, False),
        # Other explicit schemes pass through.
        ("ipv4:10.0.0.1:1,10.0.0.2:2", "ipv4:10.0.0.1:1,10.0.0.2:2", True, True),
        ("ipv4:10.0.0.1:1", "ipv4:10.0.0.1:1", False, False),
        ("unix:///run/genai.sock", "unix:///run/genai.sock", False, False),
        ("unix:relative.sock", "unix:relative.sock", False, False),
        ("xds:///prompt", "xds:///prompt", False, False),
    ],
)
def test_targets(written: str, target: str, balanced: bool, listed: bool) -> None:
    dialled = channel_target(written)

    assert (dialled.target, dialled.balanced, dialled.listed) == (target, balanced, listed)
    config = json.loads(dialled.service_config_json())
    if balanced:
        assert config["loadBalancingConfig"] == [{"round_robin": {}}]
        assert config["healthCheckConfig"] == {"serviceName": ""}
    else:
        assert "loadBalancingConfig" not in config  # pick_first, as gRPC's default
        assert "healthCheckConfig" not in config
    # Every channel retries the idempotent RPCs, one address included (a restarted server).
    [method_config] = config["methodConfig"]
    assert method_config["retryPolicy"] == RETRY_POLICY


@pytest.mark.parametrize(
    ("written", "problem"),
    [
        ("a.example:1,b.example:2", r"IP addresses only .* dns:///NAME:PORT"),
        ("localhost:50051,localhost:50052", r"'localhost:50051' in .* IP addresses only"),
        ("10.0.0.1:1,[fd00::1]:2", r"mixes IPv4 and IPv6"),
        ("10.0.0.1,10.0.0.2:1", r"'10.0.0.1' in .* is not IP:PORT"),
        ("10.0.0.1:1,", r"'' in .* is not IP:PORT"),
        ("10.0.0.1:0,10.0.0.2:1", r"port 1-65535"),
        ("10.0.0.1:1,10.0.0.2:65536", r"port 1-65535"),
        ("fd00::1:1,fd00::2:1", r"\[ADDRESS\]:PORT"),
        ("dns:///prompt-headless.genai.svc", r"names no port"),
        ("dns://10.0.0.53/prompt", r"names no port"),
        ("  ", r"empty target"),
    ],
)
def test_targets_that_cannot_be_dialled_are_refused_saying_why(written: str, problem: str) -> None:
    with pytest.raises(InvalidTargetError, match=problem):
        channel_target(written)


def test_health_checks_ask_for_the_named_service() -> None:
    dialled = channel_target(
        "10.0.0.1:1,10.0.0.2:1", health_service="genai.prompt.v1.PromptService"
    )

    assert dialled.service_config["healthCheckConfig"] == {
        "serviceName": "genai.prompt.v1.PromptService"
    }


def test_only_idempotent_rpcs_are_retried_and_only_on_unavailable() -> None:
    [method_config] = channel_target("127.0.0.1:1").service_config["methodConfig"]
    retried = {(name["service"], name["method"]) for name in method_config["name"]}

    assert retried == {(s, m) for s, methods in IDEMPOTENT_RPCS.items() for m in methods}
    assert not retried & {(s, m) for s, methods in NON_IDEMPOTENT_RPCS.items() for m in methods}
    assert ("genai.gateway.v1.GatewayService", "StreamComplete") not in retried
    assert ("genai.prompt.v1.PromptService", "WatchLabels") in retried
    policy = method_config["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert 2 <= policy["maxAttempts"] <= 5  # gRPC caps attempts at 5


def test_every_rpc_of_the_contract_is_classified_once() -> None:
    """A new RPC fails here until it is put in IDEMPOTENT_RPCS or NON_IDEMPOTENT_RPCS."""
    services = {service.full_name: set(service.methods_by_name) for service in contract_services()}

    assert set(IDEMPOTENT_RPCS) == set(services)
    assert set(NON_IDEMPOTENT_RPCS) == set(services)
    for name, methods in services.items():
        idempotent, other = IDEMPOTENT_RPCS[name], NON_IDEMPOTENT_RPCS[name]
        assert not idempotent & other, f"{name}: classified twice: {sorted(idempotent & other)}"
        assert methods - idempotent - other == set(), f"{name}: unclassified RPCs"
        assert (idempotent | other) - methods == set(), f"{name}: RPCs not in the contract"


def test_the_node_and_go_examples_load_this_service_config() -> None:
    """tests/polyglot/service_config.json is what Node and Go users copy: the balanced config
    built here, so it names every idempotent RPC (regenerate it with `channel_target(
    "10.0.0.1:1,10.0.0.2:1").service_config` when the lists change)."""
    shipped = json.loads((ROOT / "tests" / "polyglot" / "service_config.json").read_text())

    assert shipped == json.loads(channel_target("10.0.0.1:1,10.0.0.2:1").service_config_json())


def test_tls_over_a_list_of_addresses_needs_the_certificates_name() -> None:
    with pytest.raises(InvalidTargetError, match="TLS server name"):
        create_channel("10.0.0.1:1,10.0.0.2:1", tls=ClientTlsConfig(root_ca=Path("unused.pem")))


def test_create_channel_refuses_what_channel_target_refuses() -> None:
    with pytest.raises(InvalidTargetError, match="IP addresses only"):
        create_channel("a.example:1,b.example:1")


def _target_options(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
    """Every `--target` option of `parser` and its sub-commands, with the command's name."""
    for action in parser._actions:
        if "--target" in action.option_strings:
            yield parser.prog, action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _target_options(sub)


def test_every_command_takes_every_target_form_and_defaults_to_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TARGET_ENV, "10.0.0.7:50051,10.0.0.8:50051")
    parser = cli._parser()
    logs = argparse.ArgumentParser(prog="genai logs")
    logs_cli.add_commands(logs, default_target=DEFAULT_TARGET)
    options = [*_target_options(parser), *_target_options(logs)]

    commands = {command.removeprefix("genai ") for command, _ in options}
    assert {"info", "chat", "generate", "logs", "prompts push", "experiments list"} <= commands
    assert {"eval run", "eval datasets create"} <= commands
    for command, action in options:
        assert action.default == "10.0.0.7:50051,10.0.0.8:50051", command
        assert "dns:///NAME:PORT" in (action.help or ""), command
        assert f"${TARGET_ENV}" in (action.help or ""), command


def test_the_command_line_accepts_a_list_and_refuses_a_bad_target(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(TARGET_ENV, raising=False)
    parser = cli._parser()

    assert parser.parse_args(["info"]).target == DEFAULT_TARGET
    listed = parser.parse_args(["info", "--target", "127.0.0.1:1,127.0.0.1:2"])
    assert listed.target == "127.0.0.1:1,127.0.0.1:2"
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["prompts", "list", "--target", "gateway-a:1,gateway-b:1"])
    assert exited.value.code == 2
    assert "argument --target: 'gateway-a:1' in" in capsys.readouterr().err
