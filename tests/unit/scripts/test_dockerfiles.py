"""The repository's Dockerfile (targets `platform` and `triton-cpu`) and .dockerignore, checked
against the project without a Docker engine: pinned bases, a Python that pyproject and
nvidia-pytriton accept, a numeric non-root user, no compilers in what runs, the builder going
through `scripts/setup` as CI does, the ports the manifests use, writable paths under /tmp
only, a build context that holds what the images copy, and command lines that the real CLI
and Triton launcher parse.

The Dockerfile is read by a small parser of its own (instructions, line continuations,
comments, parser directives, stages); a Docker engine would be needed to build it.
"""

import json
import re
import shlex
import subprocess
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from services import cli
from services.common.config import load_settings
from services.inference.adapters import tritonserver
from services.platform.settings import PlatformSettings

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
TRITON_ENTRYPOINT = ROOT / "deploy" / "images" / "triton-cpu" / "entrypoint.sh"

PLATFORM_PORTS = {50051, 9464, 8080}
"""gRPC, metrics and HTTP (the OpenAI-compatible API), as the manifests set them
(deploy/kubernetes/base)."""
TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
WRITABLE_ROOT = PurePosixPath("/tmp")
"""The one writable mount (an emptyDir) of a read-only root filesystem."""
MIN_UID = 10000
COMPILER_PACKAGES = re.compile(
    r"^(gcc|g\+\+|cpp|cc|c\+\+|clang|clang\+\+|gfortran|build-essential|make|cmake|ninja-build|"
    r"binutils|libc6?-dev|musl-dev|(gcc|g\+\+|cpp|clang|gfortran)-[0-9.]+)$"
)
_INSTALL = re.compile(
    r"\b(?:apt-get|apt|aptitude)\s+(?:-\S+\s+)*install\b|\bapk\s+add\b|\b(?:dnf|yum|microdnf)\s+install\b"
)


# ------------------------------------------------------------------------------ the parser


@dataclass(frozen=True)
class Instruction:
    keyword: str
    """Upper case: FROM, RUN, COPY, ..."""
    value: str
    """The rest of the instruction, continuation lines joined."""
    line: int


@dataclass
class Stage:
    base: str
    """The image or earlier stage this one starts FROM."""
    name: str
    """Its `AS` name (its index when it has none)."""
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass(frozen=True)
class Dockerfile:
    directives: Mapping[str, str]
    global_args: Mapping[str, str]
    stages: Sequence[Stage]

    def stage(self, name: str) -> Stage:
        (found,) = [s for s in self.stages if s.name == name]
        return found

    def chain(self, name: str) -> list[Stage]:
        """`name` and the stages it is built FROM, the first ancestor first."""
        chain = [self.stage(name)]
        names = {s.name for s in self.stages}
        while chain[0].base in names:
            chain.insert(0, self.stage(chain[0].base))
        return chain


_DIRECTIVE = re.compile(r"^#\s*([A-Za-z]+)\s*=\s*(\S.*)$")


def parse_dockerfile(text: str) -> Dockerfile:
    lines = text.splitlines()
    directives: dict[str, str] = {}
    first = 0
    while first < len(lines) and (match := _DIRECTIVE.match(lines[first])):
        directives[match[1].lower()] = match[2].strip()
        first += 1
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(lines[first:], start=first + 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # blank and comment lines, also inside a continuation
        if not parts:
            start = number
        continued = stripped.endswith("\\")
        parts.append(stripped[:-1].strip() if continued else stripped)
        if continued:
            continue
        keyword, _, value = " ".join(parts).partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip(), start))
        parts = []
    assert not parts, f"line {start}: the last instruction ends in a continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = [w for w in instruction.value.split() if not w.startswith("--")]
            base = _substitute(words[0], global_args)
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else str(len(stages))
            stages.append(Stage(base=base, name=name))
        elif not stages:
            assert instruction.keyword == "ARG", f"line {instruction.line}: before any FROM"
            key, _, default = instruction.value.partition("=")
            global_args[key.strip()] = default.strip()
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(directives, global_args, stages)


def _substitute(text: str, values: Mapping[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        return values.get(name, match[0])

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", value, text)


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON (exec) form of CMD, ENTRYPOINT or HEALTHCHECK's CMD."""
    value = instruction.value
    if instruction.keyword == "HEALTHCHECK":
        value = value[value.index("CMD ") + len("CMD ") :]
    words = json.loads(value)
    assert isinstance(words, list), f"line {instruction.line}: not the exec form"
    return [str(word) for word in words]


def env_of(stages: Sequence[Stage]) -> dict[str, str]:
    """The environment ENV instructions set along `stages` (`${VAR}` of earlier ones
    substituted; the base image's own variables are not known)."""
    env: dict[str, str] = {}
    for stage in stages:
        for instruction in stage.of("ENV"):
            for word in shlex.split(instruction.value):
                key, equals, value = word.partition("=")
                assert equals, f"line {instruction.line}: use ENV KEY=VALUE"
                env[key] = _substitute(value, env)
    return env


def flags_and_words(instruction: Instruction) -> tuple[dict[str, str], list[str]]:
    """`--flag=value` options (a bare flag maps to "") and the remaining words."""
    words = shlex.split(instruction.value)
    flags: dict[str, str] = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return flags, words


def last(stages: Sequence[Stage], keyword: str) -> Instruction:
    found = [i for stage in stages for i in stage.of(keyword)]
    assert found, f"no {keyword} in stages {[s.name for s in stages]}"
    return found[-1]


# ------------------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore syntax (Go's filepath.Match plus `**`) as a regular expression
    over slash-separated paths relative to the context."""
    out = ""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                out += "(?:.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)
            out += "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]"
            i = end
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(char)
        i += 1
    return re.compile(f"^{out}$")


@cache
def _ignore_rules() -> tuple[tuple[re.Pattern[str], bool], ...]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = str(PurePosixPath(line.removeprefix("!").strip().lstrip("/")))
        rules.append((_pattern_regex(pattern), keep))
    return tuple(rules)


def excluded(path: str) -> bool:
    """Whether .dockerignore keeps `path` (or a folder it is in) out of the build context: the
    last pattern that matches it or one of its parents decides."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for regex, keep in _ignore_rules():
        if any(regex.match(candidate) for candidate in candidates):
            verdict = not keep
    return verdict


# ------------------------------------------------------------------------------ helpers

TARGETS = ("platform", "triton-cpu")


@cache
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _project() -> dict[str, Any]:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    return project


def external_bases(parsed: Dockerfile) -> list[str]:
    names = {stage.name for stage in parsed.stages}
    return [stage.base for stage in parsed.stages if stage.base not in names]


def genai_settings_env(target: str) -> dict[str, str]:
    env = env_of(dockerfile().chain(target))
    return {key: value for key, value in env.items() if key.startswith("GENAI_")}


def copies(stages: Sequence[Stage]) -> Iterator[tuple[dict[str, str], list[str], str]]:
    """(flags, sources, destination) of every COPY in `stages`."""
    for stage in stages:
        for instruction in stage.of("COPY"):
            flags, words = flags_and_words(instruction)
            assert len(words) >= 2, f"line {instruction.line}: COPY needs a source and a target"
            yield flags, words[:-1], words[-1]


def triton_command_line() -> list[str]:
    """What the triton-cpu image runs: the entrypoint's `genai triton` arguments, then CMD."""
    script = TRITON_ENTRYPOINT.read_text()
    variables = dict(re.findall(r"^([a-z_]+)=(\S+)$", script, flags=re.MULTILINE))
    (exec_line,) = [line for line in script.splitlines() if line.startswith("exec ")]
    words = [_substitute(word, variables) for word in shlex.split(exec_line)]
    assert words[:3] == ["exec", "genai", "triton"], exec_line
    assert words[-1] == "$@", "the image's CMD must reach the launcher"
    cmd = exec_form(last(dockerfile().chain("triton-cpu"), "CMD"))
    return [*words[3:-1], *cmd]


# ------------------------------------------------------------------------------ pins


def test_every_base_image_and_the_syntax_are_pinned_to_a_version() -> None:
    parsed = dockerfile()
    assert external_bases(parsed), "no FROM of an image"
    for image in [*external_bases(parsed), parsed.directives["syntax"]]:
        reference, _, digest = image.partition("@")
        name, colon, tag = reference.rpartition(":")
        assert colon, f"{image}: no tag"
        assert "/" not in tag, f"{image}: no tag"
        assert tag != "latest", f"{image}: not a version tag"
        assert re.search(r"\d", tag), f"{image}: not a version tag"
        assert not digest or re.fullmatch(r"sha256:[0-9a-f]{64}", digest), image
        assert "$" not in image, f"{image}: an unresolved variable"
        assert name


def test_the_base_python_is_one_the_project_and_triton_support() -> None:
    (base,) = external_bases(dockerfile())
    name, _, tag = base.partition("@")[0].rpartition(":")
    assert name in ("python", "docker.io/library/python"), base
    match = re.match(r"(\d+\.\d+\.\d+)-slim-", tag)
    assert match, f"{base}: pin an exact Python patch release of a slim image"
    version = Version(match[1])
    requires = SpecifierSet(str(_project()["requires-python"]))
    assert version in requires, f"Python {version} does not satisfy {requires}"
    minor = f"{version.major}.{version.minor}"
    assert f"Programming Language :: Python :: {minor}" in _project()["classifiers"]
    stub = tritonserver.find_distribution().stub(minor)
    assert stub.is_file(), f"nvidia-pytriton has no Python-backend stub for {minor}"


def test_the_venv_is_built_and_run_on_the_same_base() -> None:
    """The venv's python is a link to the base image's interpreter: builder and runtime must
    start from the same image."""
    parsed = dockerfile()
    roots = {parsed.chain(name)[0].base for name in ("builder", "runtime", *TARGETS)}
    assert len(roots) == 1, roots


def test_the_version_label_defaults_to_the_project_version() -> None:
    """The manifests pin both images to the project's version: the label says the same."""
    args = _stage_args(dockerfile().stage("runtime"))
    assert args["VERSION"] == _project()["version"]
    labels = " ".join(i.value for i in dockerfile().stage("runtime").of("LABEL"))
    assert "org.opencontainers.image.version=${VERSION}" in labels
    for key in ("source", "licenses", "revision"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_the_platform_is_the_default_target() -> None:
    assert dockerfile().stages[-1].name == "platform"
    assert {s.name for s in dockerfile().stages} >= {"builder", "runtime", *TARGETS}


# ------------------------------------------------------------------------------ users


@pytest.mark.parametrize("target", TARGETS)
def test_each_image_runs_as_a_numeric_non_root_user(target: str) -> None:
    chain = dockerfile().chain(target)
    user = last(chain, "USER").value
    match = re.fullmatch(r"(\d+):(\d+)", user)
    assert match, f"{target}: USER {user!r} is not numeric UID:GID (runAsNonRoot checks it)"
    uid, gid = int(match[1]), int(match[2])
    assert uid >= MIN_UID, user
    assert gid >= MIN_UID, user
    assert chain[-1].of("USER"), f"{target}: its own stage should say USER"
    # A passwd entry for it (getpass and some libraries look the user up).
    runs = " ".join(i.value for stage in chain for i in stage.of("RUN"))
    assert re.search(rf"useradd\b[^&;]*--uid {uid}\b[^&;]*--gid {gid}\b", runs), runs
    assert re.search(rf"groupadd\b[^&;]*--gid {gid}\b", runs), runs


@pytest.mark.parametrize("target", TARGETS)
def test_no_compiler_is_installed_in_what_runs(target: str) -> None:
    for stage in dockerfile().chain(target):
        for instruction in stage.of("RUN"):
            for command in re.split(r"&&|;|\|\|", instruction.value):
                if not _INSTALL.search(command):
                    continue
                packages = [w for w in shlex.split(command) if not w.startswith("-")]
                compilers = [p for p in packages if COMPILER_PACKAGES.match(p.split("=")[0])]
                assert not compilers, f"{stage.name} line {instruction.line}: {compilers}"


# ------------------------------------------------------------------------------ the build


def test_the_builder_installs_through_scripts_setup_as_ci_does() -> None:
    builder = dockerfile().stage("builder")
    runs = [i.value for i in builder.of("RUN")]
    assert any(re.search(r"(^|[\s;&])scripts/setup python\b", run) for run in runs), runs
    assert any(re.search(r"(^|[\s;&])scripts/setup models\b", run) for run in runs), runs
    usage = (ROOT / "scripts" / "setup").read_text().splitlines()[4]
    assert "[python]" in usage, usage
    assert "[models]" in usage, usage
    assert any(d.startswith("torch==") for d in _project()["dependencies"])
    index = env_of([builder])["PIP_EXTRA_INDEX_URL"]
    assert _substitute(index, _stage_args(builder)) == "https://download.pytorch.org/whl/cpu"


def _stage_args(stage: Stage) -> dict[str, str]:
    args = {}
    for instruction in stage.of("ARG"):
        key, _, default = instruction.value.partition("=")
        args[key] = default
    return args


def test_the_runtime_has_the_venv_models_and_code_where_the_builder_made_them() -> None:
    parsed = dockerfile()
    builder, runtime = parsed.stage("builder"), parsed.stage("runtime")
    workdir = PurePosixPath(last([builder], "WORKDIR").value)
    from_builder = {
        (sources[0], destination)
        for flags, sources, destination in copies([runtime])
        if flags.get("from") == "builder"
    }
    # scripts/setup makes .venv beside scripts/ (its ROOT), the builder's WORKDIR.
    assert (str(workdir / ".venv"), str(workdir / ".venv")) in from_builder
    cache_dir = env_of([builder])["GENAI_MODEL_CACHE"]
    assert env_of(parsed.chain("runtime"))["GENAI_MODEL_CACHE"] == cache_dir
    assert (cache_dir, cache_dir) in from_builder
    # The editable install's .pth names these folders (and the repository root, for the
    # wheel's packages): the code must be at the same paths.
    copied = {
        PurePosixPath(destination) / PurePosixPath(source).name
        if destination.endswith("/")
        else PurePosixPath(destination)
        for flags, sources, destination in copies([runtime])
        if "from" not in flags
        for source in sources
    }
    build = pyproject()["tool"]["hatch"]["build"]
    folders = [*build["dev-mode-dirs"], *build["targets"]["wheel"]["packages"]]
    for folder in (f for f in folders if f != "."):
        target = workdir / folder
        assert any(target == c or c in target.parents for c in copied), f"{target} not copied"


def test_copy_sources_are_in_the_build_context() -> None:
    names = [stage.name for stage in dockerfile().stages]
    for index, stage in enumerate(dockerfile().stages):
        for flags, sources, _destination in copies([stage]):
            if "from" in flags:
                assert flags["from"] in names[:index], f"{stage.name}: --from={flags['from']}"
                continue
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"{stage.name}: COPY {source}: not in the repository"
                assert not excluded(source), f"{stage.name}: COPY {source}: in .dockerignore"
                for file in _files(path):
                    relative = file.relative_to(ROOT).as_posix()
                    assert not excluded(relative), f"{relative} is copied but in .dockerignore"


def _files(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
        return
    for file in sorted(path.rglob("*")):
        if file.is_file() and "__pycache__" not in file.parts:
            yield file


@pytest.mark.parametrize(
    ("path", "kept_out"),
    [
        (".venv/bin/python", True),
        (".venv-checkov/bin/checkov", True),
        ("node_modules/@bufbuild/buf/package.json", True),
        (".git/HEAD", True),
        ("bench-results/run.json", True),
        (".run/triton-1/tritonserver.log", True),
        (".mypy_cache/3.11/x.json", True),
        ("services/__pycache__/cli.cpython-311.pyc", True),
        (".env", True),
        ("services/cli.py", False),
        ("generated/python/genai/descriptor_set.binpb", False),
        ("triton_models/cpu/ensemble/config.pbtxt", False),
        ("prompts/summarize.yaml", False),
        ("scripts/setup", False),
        ("deploy/images/triton-cpu/entrypoint.sh", False),
    ],
)
def test_dockerignore_keeps_local_state_out_of_the_context(path: str, kept_out: bool) -> None:
    assert excluded(path) is kept_out


def test_shell_and_python_snippets_are_well_formed() -> None:
    """What can be checked without building: every RUN is valid shell, and every `python -c`
    program (RUN, HEALTHCHECK) compiles."""
    subprocess.run(["sh", "-n", str(TRITON_ENTRYPOINT)], check=True)
    programs = []
    for stage in dockerfile().stages:
        for instruction in stage.of("RUN"):
            command = re.sub(r"^(?:--\S+\s+)*", "", instruction.value)
            checked = subprocess.run(["sh", "-n", "-c", command], capture_output=True, text=True)
            assert checked.returncode == 0, f"line {instruction.line}: {checked.stderr}"
            words = shlex.split(command)
            programs += [
                words[i + 1]
                for i in range(1, len(words) - 1)
                if words[i] == "-c" and words[i - 1].endswith("python")
            ]
        for instruction in stage.of("HEALTHCHECK"):
            words = exec_form(instruction)
            assert words[:2] == ["python", "-c"], words
            programs.append(words[2])
    assert len(programs) >= 4
    for program in programs:
        compile(program, "<python -c>", "exec")


# ------------------------------------------------------------------------------ run time


def test_platform_ports_match_the_settings_and_the_manifests() -> None:
    chain = dockerfile().chain("platform")
    exposed = {int(p) for s in chain for i in s.of("EXPOSE") for p in i.value.split()}
    assert exposed == PLATFORM_PORTS
    settings = load_settings(PlatformSettings, path=None, env=genai_settings_env("platform"))
    server = settings.server
    assert {server.port, server.metrics_port, server.http_port} == PLATFORM_PORTS


def test_the_images_set_only_settings_the_platform_accepts() -> None:
    for target in TARGETS:
        load_settings(PlatformSettings, path=None, env=genai_settings_env(target))


def test_the_serve_command_line_parses_with_the_real_cli() -> None:
    chain = dockerfile().chain("platform")
    entrypoint = exec_form(last(chain, "ENTRYPOINT"))
    assert entrypoint == ["/app/.venv/bin/genai"]
    scripts = _project()["scripts"]
    assert scripts["genai"] == "services.cli:main"
    args = cli._parser().parse_args(exec_form(last(chain, "CMD")))
    assert args.run is cli._serve
    assert args.host == "0.0.0.0"
    assert args.port is None  # the settings' (and EXPOSE's) 50051


def test_the_triton_command_line_parses_with_the_real_launcher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = triton_command_line()
    args = tritonserver.parse_args(argv)
    assert args.host == "0.0.0.0"
    assert {"grpc": args.grpc_port, "http": args.http_port, "metrics": args.metrics_port} == (
        TRITON_PORTS
    )
    assert args.models is None  # every model of the repository
    assert args.extra_args == []
    repository = PurePosixPath(args.model_repository)
    assert repository == PurePosixPath("/app/triton_models/cpu")
    assert (ROOT / "triton_models" / "cpu" / "ensemble" / "config.pbtxt").is_file()
    assert WRITABLE_ROOT in PurePosixPath(args.log_file).parents
    # `genai triton ...` reaches the launcher with exactly these arguments.
    seen: list[list[str]] = []

    def launcher(arguments: Sequence[str]) -> int:
        seen.append(list(arguments))
        return 0

    monkeypatch.setattr(tritonserver, "main", launcher)
    assert cli.main(["triton", *argv]) == 0
    assert seen == [argv]


def test_triton_ports_and_entrypoint_match_the_image() -> None:
    chain = dockerfile().chain("triton-cpu")
    exposed = {int(p) for s in chain for i in s.of("EXPOSE") for p in i.value.split()}
    assert exposed == set(TRITON_PORTS.values())
    (entrypoint,) = exec_form(last(chain, "ENTRYPOINT"))
    installed = [
        (sources, destination)
        for flags, sources, destination in copies(chain)
        if destination == entrypoint
    ]
    assert installed == [(["deploy/images/triton-cpu/entrypoint.sh"], entrypoint)]
    assert TRITON_ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    assert TRITON_ENTRYPOINT.stat().st_mode & 0o111


@pytest.mark.parametrize("target", TARGETS)
def test_everything_written_at_run_time_goes_under_tmp(target: str) -> None:
    env = env_of(dockerfile().chain(target))
    for variable in (
        "HOME",
        "XDG_DATA_HOME",
        "XDG_STATE_HOME",
        "XDG_CONFIG_HOME",
        "XDG_CACHE_HOME",
    ):
        path = PurePosixPath(env[variable])
        assert path == WRITABLE_ROOT or WRITABLE_ROOT in path.parents, f"{variable}={path}"
    # Baked in: outside the mount, which would hide it.
    assert WRITABLE_ROOT not in PurePosixPath(env["GENAI_MODEL_CACHE"]).parents
    # Triton's default run directories (.run/ under the working directory) lead to /tmp.
    assert Path(".run") == tritonserver.DEFAULT_RUN_ROOT
    workdir = PurePosixPath(last(dockerfile().chain(target), "WORKDIR").value)
    runs = " ".join(i.value for s in dockerfile().chain(target) for i in s.of("RUN"))
    assert f"ln -s {WRITABLE_ROOT} {workdir / tritonserver.DEFAULT_RUN_ROOT}" in runs
