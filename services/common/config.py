"""Typed configuration: a YAML file, then `GENAI_*` environment overrides, validated once.

Each service declares a `Settings` subclass whose fields all have a default and a
`Field(description=...)`; sections are nested `Settings` models. `load_settings` is called once,
in the composition root. Unknown keys are errors, and secrets are `pydantic.SecretStr`, which
never print.

    class ServerSettings(Settings):
        port: int = Field(default=50051, description="TCP port to listen on; 0 picks one.")

    class PromptSettings(Settings):
        server: ServerSettings = Field(default_factory=ServerSettings, description="...")

    settings = load_settings(PromptSettings, path=Path("prompt.yaml"), env=os.environ)

`GENAI_SERVER__PORT=50052` overrides `server.port` (`__` separates nesting levels).
"""

import json
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError


class Settings(BaseModel, extra="forbid", frozen=True):
    """Base of every settings model: immutable, and unknown keys are rejected."""


SettingsT = TypeVar("SettingsT", bound=Settings)

ENV_PREFIX = "GENAI_"
_NESTING = "__"
_FILE_SUFFIX = "_file"
NOT_SETTINGS: frozenset[str] = frozenset(
    {
        "GENAI_API_KEY",  # the key the CLI's client commands send
        "GENAI_TARGET",  # where they send it
        "GENAI_LOG_LEVEL",  # the log level of `genai` commands
        "GENAI_MODEL_CACHE",  # where `scripts/setup models` keeps prepared models
        "GENAI_CACHE_DIR",  # Triton's run and cache files
    }
)
"""`GENAI_*` variables that are not settings: read by the commands and tools named beside
each, and ignored (not refused as unknown settings) by `load_settings`, so that a shell with
`GENAI_API_KEY` exported can still run `genai serve`. Variables of the benchmarks start with
`GENAI_BENCH_` and are ignored too."""
_STRUCTURED = (list, tuple, set, frozenset, dict)


class ConfigError(Exception):
    """The configuration is invalid; `problems` lists every unknown key and invalid value."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def load_settings(
    model: type[SettingsT],
    *,
    path: Path | None,
    env: Mapping[str, str],
    prefix: str = ENV_PREFIX,
) -> SettingsT:
    """Returns `model` filled from the YAML file at `path` (if any), then from `env`.

    An environment variable `<prefix>SECTION__FIELD` overrides `section.field`; values are
    parsed like the field's type (JSON for lists, dicts and models). `<prefix>SECTION__FIELD_FILE`
    names a file holding the value instead (a mounted Secret: the value stays out of the
    process environment); one trailing newline is dropped. A name that is itself a setting
    (`router.catalog_file`) keeps its meaning. Raises `ConfigError` naming every unknown key and
    invalid value, with where it came from; the values themselves are never echoed, since they
    may be secrets.
    """
    data: dict[str, Any] = _read_yaml(path) if path is not None else {}
    sources: dict[tuple[str, ...], str] = {}
    problems: list[str] = []
    for variable in sorted(env):
        if not variable.startswith(prefix):
            continue
        if prefix == ENV_PREFIX and (
            variable in NOT_SETTINGS or variable.startswith("GENAI_BENCH_")
        ):
            continue
        keys = tuple(part.lower() for part in variable[len(prefix) :].split(_NESTING))
        annotation = _field_annotation(model, keys)
        raw = env[variable]
        if annotation is None and keys[-1].endswith(_FILE_SUFFIX):
            stem = (*keys[:-1], keys[-1].removesuffix(_FILE_SUFFIX))
            annotation = _field_annotation(model, stem)
            if annotation is not None:
                if variable.removesuffix(_FILE_SUFFIX.upper()) in env:
                    problems.append(f"{variable}: set with {variable[:-5]}; set one of them")
                    continue
                try:
                    raw = Path(raw).read_text().removesuffix("\n")
                except OSError as error:
                    problems.append(f"{variable}: cannot read {raw}: {error.strerror}")
                    continue
                keys = stem
        if annotation is None:
            problems.append(f"{variable}: no setting {'.'.join(keys)!r} exists")
            continue
        try:
            value = _parse_env_value(annotation, raw)
        except ValueError:
            problems.append(f"{variable}: not valid JSON, which this setting needs")
            continue
        if not _set_nested(data, keys, value):
            problems.append(f"{variable}: {'.'.join(keys[:-1])!r} is not a section")
            continue
        sources[keys] = variable
    if problems:
        raise ConfigError(problems)

    try:
        return model.model_validate(data)
    except ValidationError as error:
        origin = f"file {path}" if path is not None else "defaults"
        raise ConfigError(
            [_describe(e, sources, origin) for e in error.errors(include_input=False)]
        ) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError([f"file {path}: cannot be read ({error.strerror})"]) from None
    except yaml.YAMLError as error:
        raise ConfigError([f"file {path}: not valid YAML ({error})"]) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError([f"file {path}: the top level must be a mapping"])
    return loaded


def _field_annotation(model: type[BaseModel], keys: tuple[str, ...]) -> Any:
    """Returns the annotation of the field at `keys`, None if there is no such field."""
    current: Any = model
    for key in keys:
        current = _unwrap_optional(current)
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(key)
        if field is None:
            return None
        current = field.annotation
    return current


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _parse_env_value(annotation: Any, raw: str) -> Any:
    """Keeps `raw` a string for pydantic to convert, except for structured fields (JSON)."""
    target = _unwrap_optional(annotation)
    structured = get_origin(target) in _STRUCTURED or target in _STRUCTURED
    if structured or (isinstance(target, type) and issubclass(target, BaseModel)):
        return json.loads(raw)
    return raw


def _set_nested(data: dict[str, Any], keys: tuple[str, ...], value: Any) -> bool:
    section = data
    for key in keys[:-1]:
        child = section.setdefault(key, {})
        if not isinstance(child, dict):
            return False
        section = child
    section[keys[-1]] = value
    return True


def _describe(error: Any, sources: Mapping[tuple[str, ...], str], origin: str) -> str:
    location = tuple(str(part) for part in error["loc"])
    source = next(
        (sources[location[:n]] for n in range(len(location), 0, -1) if location[:n] in sources),
        origin,
    )
    where = ".".join(location) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{where} (from {source}): unknown key"
    return f"{where} (from {source}): {error['msg']}"
