"""load_settings: YAML, then GENAI_* overrides; unknown keys and bad values are errors."""

import re
from pathlib import Path

import pytest
from pydantic import Field, SecretStr

from services.common.config import NOT_SETTINGS, ConfigError, Settings, load_settings
from services.common.testing import assert_settings_documented, undocumented_settings


class ServerSettings(Settings):
    port: int = Field(default=50051, description="TCP port to listen on; 0 picks a free one.")
    grace_seconds: float = Field(default=5.0, description="Drain period on shutdown, seconds.")


class StoreSettings(Settings):
    url: str = Field(default="sqlite:///prompts.db", description="Database URL.")
    password: SecretStr = Field(default=SecretStr(""), description="Database password.")
    replicas: list[str] = Field(default_factory=list, description="Read replica URLs.")


class AppSettings(Settings):
    name: str = Field(default="prompt", description="Service name in traces and logs.")
    debug: bool = Field(default=False, description="Log request details.")
    server: ServerSettings = Field(default_factory=ServerSettings, description="gRPC server.")
    store: StoreSettings = Field(default_factory=StoreSettings, description="Prompt storage.")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_apply_without_file_or_environment() -> None:
    settings = load_settings(AppSettings, path=None, env={})

    assert settings == AppSettings()
    assert settings.server.port == 50051


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 6000\n  grace_seconds: 2\nstore:\n  url: pg://a\n")

    settings = load_settings(
        AppSettings,
        path=path,
        env={
            "GENAI_SERVER__PORT": "7000",
            "GENAI_DEBUG": "true",
            "GENAI_STORE__PASSWORD": "s3cret",
            "GENAI_STORE__REPLICAS": '["pg://r1", "pg://r2"]',
            "HOME": "/root",
        },
    )

    assert (settings.server.port, settings.server.grace_seconds) == (7000, 2.0)
    assert (settings.debug, settings.store.url) == (True, "pg://a")
    assert settings.store.password.get_secret_value() == "s3cret"
    assert settings.store.replicas == ["pg://r1", "pg://r2"]


def test_secrets_do_not_print() -> None:
    settings = load_settings(AppSettings, path=None, env={"GENAI_STORE__PASSWORD": "s3cret"})

    assert "s3cret" not in repr(settings)
    assert "s3cret" not in str(settings.model_dump())


def test_settings_are_immutable() -> None:
    settings = load_settings(AppSettings, path=None, env={})

    with pytest.raises(ValueError, match="frozen"):
        settings.server.port = 1  # type: ignore[misc]


def test_a_custom_prefix_scopes_the_environment() -> None:
    settings = load_settings(
        AppSettings,
        path=None,
        env={"GENAI_SERVER__PORT": "1", "ROUTER_SERVER__PORT": "2"},
        prefix="ROUTER_",
    )

    assert settings.server.port == 2


def test_unknown_keys_are_rejected_from_file_and_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  prot: 6000\nlogging: {}\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(AppSettings, path=path, env={"GENAI_SERVER__PORTT": "1"})
    assert caught.value.problems == ["GENAI_SERVER__PORTT: no setting 'server.portt' exists"]

    with pytest.raises(ConfigError) as caught:
        load_settings(AppSettings, path=path, env={})
    assert sorted(caught.value.problems) == [
        f"logging (from file {path}): unknown key",
        f"server.prot (from file {path}): unknown key",
    ]


def test_the_variables_of_the_commands_are_not_mistaken_for_settings() -> None:
    # A shell that exported GENAI_API_KEY for `genai chat` can still run `genai serve`.
    env = dict.fromkeys(NOT_SETTINGS, "x") | {"GENAI_BENCH_POSTGRES_URL": "x"}
    assert load_settings(AppSettings, path=None, env=env) == AppSettings()
    with pytest.raises(ConfigError) as caught:
        load_settings(AppSettings, path=None, env={"GENAI_API_KEYS": "x"})
    assert caught.value.problems == ["GENAI_API_KEYS: no setting 'api_keys' exists"]


def test_a_value_can_come_from_a_file_named_by_a_file_variable(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")  # as `kubectl create secret --from-file` often leaves it
    port = tmp_path / "port"
    port.write_text("6001")
    env = {"GENAI_STORE__PASSWORD_FILE": str(secret), "GENAI_SERVER__PORT_FILE": str(port)}
    settings = load_settings(AppSettings, path=None, env=env)
    assert settings.store.password.get_secret_value() == "s3cret"
    assert settings.server.port == 6001

    with pytest.raises(ConfigError) as caught:
        load_settings(AppSettings, path=None, env={"GENAI_STORE__PASSWORD_FILE": "/nonexistent"})
    assert caught.value.problems == [
        "GENAI_STORE__PASSWORD_FILE: cannot read /nonexistent: No such file or directory"
    ]
    with pytest.raises(ConfigError) as caught:
        load_settings(AppSettings, path=None, env={**env, "GENAI_STORE__PASSWORD": "x"})
    assert caught.value.problems == [
        "GENAI_STORE__PASSWORD_FILE: set with GENAI_STORE__PASSWORD; set one of them"
    ]
    with pytest.raises(ConfigError) as caught:  # no setting `store.nothing`
        load_settings(AppSettings, path=None, env={"GENAI_STORE__NOTHING_FILE": str(secret)})
    assert caught.value.problems == [
        "GENAI_STORE__NOTHING_FILE: no setting 'store.nothing_file' exists"
    ]


def test_a_setting_whose_name_ends_in_file_keeps_its_meaning() -> None:
    from services.platform.settings import PlatformSettings

    env = {"GENAI_ROUTER__CATALOG_FILE": "/etc/genai/catalog.yaml"}
    settings = load_settings(PlatformSettings, path=None, env=env)
    assert settings.router.catalog_file == "/etc/genai/catalog.yaml"


def test_invalid_values_name_their_source_but_not_their_value(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  grace_seconds: soon\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(
            AppSettings, path=path, env={"GENAI_SERVER__PORT": "fifty", "GENAI_DEBUG": "maybe"}
        )

    problems = caught.value.problems
    assert [problem.split(":")[0] for problem in problems] == [
        "debug (from GENAI_DEBUG)",
        "server.port (from GENAI_SERVER__PORT)",
        f"server.grace_seconds (from file {path})",
    ]
    assert not any("fifty" in problem or "maybe" in problem for problem in problems)
    assert "server.port (from GENAI_SERVER__PORT)" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- a\n- b\n", "the top level must be a mapping"),
        ("server: [unclosed\n", "not valid YAML"),
    ],
)
def test_a_malformed_file_is_a_config_error(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_settings(AppSettings, path=write(tmp_path, text), env={})


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(AppSettings, path=tmp_path / "absent.yaml", env={})


def test_an_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(AppSettings, path=write(tmp_path, ""), env={}) == AppSettings()


def test_structured_values_from_the_environment_must_be_json() -> None:
    with pytest.raises(ConfigError, match="GENAI_STORE__REPLICAS: not valid JSON"):
        load_settings(AppSettings, path=None, env={"GENAI_STORE__REPLICAS": "pg://r1,pg://r2"})


def test_a_field_cannot_be_used_as_a_section() -> None:
    with pytest.raises(ConfigError, match=re.escape("no setting 'debug.level' exists")):
        load_settings(AppSettings, path=None, env={"GENAI_DEBUG__LEVEL": "1"})


def test_every_field_of_the_example_is_documented() -> None:
    assert_settings_documented(AppSettings)


def test_undocumented_or_required_fields_are_reported() -> None:
    class Sloppy(Settings):
        documented: int = Field(default=1, description="Fine.")
        bare: int = 2
        required: str = Field(description="Has no default.")
        nested: ServerSettings = Field(default_factory=ServerSettings)

    assert undocumented_settings(Sloppy) == [
        "bare: no description",
        "required: no default",
        "nested: no description",
    ]
    with pytest.raises(AssertionError, match="bare: no description"):
        assert_settings_documented(Sloppy)
