"""Settings of a platform process: documented, validated, overridable from the environment."""

import pytest

from services.common.config import ConfigError, load_settings
from services.common.testing import assert_settings_documented
from services.platform.settings import ALL_SERVICES, PlatformSettings


def test_every_setting_has_a_default_and_a_description() -> None:
    assert_settings_documented(PlatformSettings)


def test_defaults_host_every_service_on_loopback() -> None:
    settings = load_settings(PlatformSettings, path=None, env={})
    assert settings.services == ALL_SERVICES
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 50051)
    assert settings.gateway.targets.prompt == ""


def test_environment_overrides_nested_settings() -> None:
    settings = load_settings(
        PlatformSettings,
        path=None,
        env={
            "GENAI_SERVER__PORT": "6000",
            "GENAI_SERVICES": '["prompt", "gateway"]',
            "GENAI_GATEWAY__TARGETS__ROUTER": "router:7000",
        },
    )
    assert settings.server.port == 6000
    assert settings.services == ("prompt", "gateway")
    assert settings.gateway.targets.router == "router:7000"


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"GENAI_SERVICES": '["prompt", "prompt"]'}, "listed twice"),
        ({"GENAI_SERVICES": "[]"}, "at least one service"),
        ({"GENAI_SERVICES": '["billing"]'}, "services"),
        ({"GENAI_SERVER__PORT": "70000"}, "server.port"),
        ({"GENAI_SERVER__TLS_CERTIFICATE_FILE": "cert.pem"}, "both"),
        ({"GENAI_SERVER__TLS_CLIENT_CA_FILE": "ca.pem"}, "mutual TLS"),
        ({"GENAI_SERVER__COLOUR": "blue"}, "GENAI_SERVER__COLOUR"),
    ],
)
def test_invalid_settings_are_refused_with_the_reason(env: dict[str, str], complaint: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(PlatformSettings, path=None, env=env)
    assert complaint in str(raised.value)
