"""`genai prompts` against a real PromptService on SQLite: push, pull, diff, history, promote and
rollback as a user runs them, and the seeding that `genai serve` does at start."""

import asyncio
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from genai.prompt.v1 import prompt_service_pb2, prompt_service_pb2_grpc

from services import cli as genai_cli
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from services.prompt import cli as prompts_cli
from services.prompt.files import load_prompt_file
from tests.support.serve import ROOT, genai_serve

if TYPE_CHECKING:
    Stub = prompt_service_pb2_grpc.PromptServiceAsyncStub
else:
    Stub = prompt_service_pb2_grpc.PromptServiceStub

pb = prompt_service_pb2
SAMPLES = ROOT / "prompts"


@dataclass
class Registry:
    """A running PromptService and what the CLI needs to reach it."""

    platform: Platform
    url: str

    @property
    def address(self) -> str:
        """The platform's address."""
        return self.platform.address

    def stub(self, channel: grpc.aio.Channel) -> "Stub":
        """A stub on `channel`."""
        return prompt_service_pb2_grpc.PromptServiceStub(channel)


def _settings(url: str) -> PlatformSettings:
    return PlatformSettings.model_validate(
        {
            "auth": {"mode": "none"},
            "services": ["prompt"],
            "server": {"port": 0, "grace_seconds": 0},
            "prompt": {"database_url": url},
        }
    )


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    platform = await start_platform(_settings(url))
    try:
        yield Registry(platform, url)
    finally:
        await platform.stop(grace=0)


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    """A copy of the sample prompts that a test may edit."""
    folder = tmp_path / "prompts"
    shutil.copytree(SAMPLES, folder)
    return folder


@dataclass(frozen=True)
class Result:
    """Exit status and output of one command."""

    status: int
    out: str
    err: str


async def genai_prompts(
    capsys: pytest.CaptureFixture[str], registry: Registry, *argv: str
) -> Result:
    """Runs `genai prompts ARGV --target <registry>` in this event loop."""
    capsys.readouterr()
    status = await prompts_cli.main_async([*argv, "--target", registry.address])
    captured = capsys.readouterr()
    return Result(status, captured.out, captured.err)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


async def test_push_creates_then_reports_unchanged_then_only_what_changed(
    capsys: pytest.CaptureFixture[str], registry: Registry, samples: Path
) -> None:
    first = await genai_prompts(capsys, registry, "push", str(samples), "-m", "initial")
    assert first.status == 0, first
    assert first.out.splitlines() == [
        "chat: created prompt; created v1",
        "complete: created prompt; created v1",
        "extract-invoice: created prompt; created v1",
        "summarize: created prompt; created v1",
        "support-answer: created prompt; created v1",
    ]

    again = await genai_prompts(capsys, registry, "push", str(samples))
    assert again.status == 0
    assert again.out.splitlines() == [
        "chat: unchanged (v1)",
        "complete: unchanged (v1)",
        "extract-invoice: unchanged (v1)",
        "summarize: unchanged (v1)",
        "support-answer: unchanged (v1)",
    ]

    _edit(samples / "summarize.yaml", "temperature: 0.3", "temperature: 0.5")
    _edit(samples / "summarize.yaml", "[neutral, friendly", "[neutral, casual, friendly")
    _edit(samples / "support-answer.yaml", "grounded in knowledge-base", "based on knowledge-base")
    dry = await genai_prompts(capsys, registry, "push", str(samples), "--dry-run")
    assert dry.status == 0, dry
    assert dry.out.splitlines() == [
        "chat: unchanged (v1)",
        "complete: unchanged (v1)",
        "extract-invoice: unchanged (v1)",
        "summarize: would create v2",
        "    ~ parameters.temperature",
        "    ~ variables.tone.enum_values",
        "support-answer: would update description; unchanged (v1)",
    ]
    pushed = await genai_prompts(
        capsys, registry, "push", str(samples), "--author", "ann", "-m", "warmer"
    )
    assert pushed.status == 0, pushed
    assert pushed.out.splitlines() == [
        "chat: unchanged (v1)",
        "complete: unchanged (v1)",
        "extract-invoice: unchanged (v1)",
        "summarize: created v2",
        "    ~ parameters.temperature",
        "    ~ variables.tone.enum_values",
        "support-answer: updated description; unchanged (v1)",
    ]
    async with grpc.aio.insecure_channel(registry.address) as channel:
        stub = registry.stub(channel)
        latest = await stub.GetPromptVersion(pb.GetPromptVersionRequest(prompt="summarize"))
        assert (latest.version.version, latest.version.author) == (2, "ann")
        assert latest.version.commit_message == "warmer"
        support = await stub.GetPrompt(pb.GetPromptRequest(name="support-answer"))
        assert support.prompt.description.startswith("Answers a customer's support question, based")


async def test_a_rejected_file_prints_the_violations_and_the_others_are_still_pushed(
    capsys: pytest.CaptureFixture[str], registry: Registry, tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(SAMPLES / "summarize.yaml", folder)
    (folder / "broken.yaml").write_text(
        "messages:\n"
        "  - {role: user, content: 'Hello {{ who }} and {{ name'}\n"
        "variables:\n"
        "  - {name: greeting, type: string, required: true, default: hi}\n"
    )
    (folder / "typo.yaml").write_text("messages: [{role: user, content: hi}]\ntemprature: 1\n")

    result = await genai_prompts(capsys, registry, "push", str(folder))
    assert result.status == 1
    lines = result.out.splitlines()
    assert lines[0].startswith("broken: created prompt; rejected: INVALID_ARGUMENT: ")
    assert lines[0].endswith("(TEMPLATE_INVALID)")
    assert "    version.messages[0].content: " in result.out
    assert "    version.variables[0].default_value: a required variable cannot have a default" in (
        result.out
    )
    assert "summarize: created prompt; created v1" in lines
    assert "typo: invalid file" in lines
    assert f"    {folder / 'typo.yaml'}: temprature: unknown key;" in result.out
    assert "genai: 2 of 3 prompt files failed" in result.err

    async with grpc.aio.insecure_channel(registry.address) as channel:
        broken = await registry.stub(channel).GetPrompt(pb.GetPromptRequest(name="broken"))
        assert broken.prompt.latest_version == 0  # a rejected version never gets a number


async def test_a_dry_run_checks_templates_locally_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], registry: Registry, tmp_path: Path
) -> None:
    (tmp_path / "broken.yaml").write_text("messages: [{role: user, content: 'Hi {{ who }}'}]\n")
    result = await genai_prompts(capsys, registry, "push", str(tmp_path), "--dry-run")
    assert result.status == 1
    assert result.out.startswith("broken: would create prompt; would be rejected: INVALID_ARGUMENT")
    assert "    version.messages[0].content: " in result.out
    assert "who" in result.out
    listed = await genai_prompts(capsys, registry, "list")
    assert listed.out == "no prompts\n"


async def test_pull_then_push_is_a_no_op(
    capsys: pytest.CaptureFixture[str], registry: Registry, samples: Path, tmp_path: Path
) -> None:
    await genai_prompts(capsys, registry, "push", str(samples))
    _edit(samples / "summarize.yaml", "temperature: 0.3", "temperature: 0.7")
    await genai_prompts(capsys, registry, "push", str(samples))

    pulled = tmp_path / "pulled"
    result = await genai_prompts(capsys, registry, "pull", "--all", "--out", str(pulled))
    assert result.status == 0, result
    assert f"summarize@2 -> {pulled / 'summarize.yaml'}" in result.out.splitlines()
    assert sorted(p.name for p in pulled.iterdir()) == [
        "chat.yaml",
        "complete.yaml",
        "extract-invoice.yaml",
        "summarize.yaml",
        "support-answer.yaml",
    ]
    for path in pulled.iterdir():
        assert (
            load_prompt_file(path).content_hash
            == load_prompt_file(samples / path.name).content_hash
        )
    again = await genai_prompts(capsys, registry, "push", str(pulled))
    assert again.status == 0
    assert again.out.splitlines() == [
        "chat: unchanged (v1)",
        "complete: unchanged (v1)",
        "extract-invoice: unchanged (v1)",
        "summarize: unchanged (v2)",
        "support-answer: unchanged (v1)",
    ]

    old = await genai_prompts(
        capsys, registry, "pull", "summarize", "--version", "1", "--out", str(tmp_path / "old")
    )
    assert old.status == 0
    text = (tmp_path / "old" / "summarize.yaml").read_text()
    assert text.startswith("# summarize@1, content_hash ")
    assert "temperature: 0.3" in text
    reverted = await genai_prompts(capsys, registry, "push", str(tmp_path / "old"))
    assert reverted.out.splitlines() == ["summarize: created v3", "    ~ parameters.temperature"]

    labelled = await genai_prompts(
        capsys, registry, "pull", "--all", "--label", "production", "--out", str(tmp_path / "p")
    )
    assert labelled.status == 0  # no prompt has the label yet: each is skipped, saying why
    assert labelled.out.count("skipped (") == 5


async def test_diff_prints_field_changes_and_the_unified_diff(
    capsys: pytest.CaptureFixture[str], registry: Registry, samples: Path
) -> None:
    await genai_prompts(capsys, registry, "push", str(samples / "summarize.yaml"))
    _edit(samples / "summarize.yaml", "temperature: 0.3", "temperature: 0.5")
    _edit(samples / "summarize.yaml", "Use at most", "Write at most")
    await genai_prompts(capsys, registry, "push", str(samples / "summarize.yaml"))
    await genai_prompts(
        capsys, registry, "promote", "summarize", "--label", "production", "--version", "1"
    )

    result = await genai_prompts(capsys, registry, "diff", "summarize", "production", "v2")
    assert result.status == 0, result
    lines = result.out.splitlines()
    assert lines[0] == "summarize@1 -> summarize@2: 2 changes"
    assert lines[1].startswith('  ~ messages[0].content: "You write {{ tone }} summaries')
    assert lines[2] == "  ~ parameters.temperature: 0.3 -> 0.5"
    assert "--- summarize@1" in lines
    assert "+++ summarize@2" in lines
    assert '-    "temperature": 0.3' in lines
    assert '+    "temperature": 0.5' in lines

    same = await genai_prompts(capsys, registry, "diff", "summarize", "1", "1")
    assert same.out == "summarize@1 -> summarize@1: 0 changes\n"
    missing = await genai_prompts(capsys, registry, "diff", "summarize", "1", "9")
    assert missing.status == 1
    assert missing.err.startswith(f"genai: {registry.address}: NOT_FOUND: ")


async def test_promote_rollback_and_history(
    capsys: pytest.CaptureFixture[str], registry: Registry, samples: Path
) -> None:
    path = str(samples / "summarize.yaml")
    await genai_prompts(capsys, registry, "push", path, "--author", "ann", "-m", "first\nmore")
    _edit(samples / "summarize.yaml", "temperature: 0.3", "temperature: 0.5")
    await genai_prompts(capsys, registry, "push", path, "--author", "bob", "-m", "warmer")

    promote = ("promote", "summarize", "--label", "production")
    created = await genai_prompts(capsys, registry, *promote, "--version", "1", "--expected", "0")
    assert (created.status, created.out) == (
        0,
        "summarize: production created at v1 by anonymous\n",
    )
    conflict = await genai_prompts(capsys, registry, *promote, "--version", "2", "--expected", "2")
    assert conflict.status == 1
    assert conflict.out == ""
    assert conflict.err.startswith(f"genai: {registry.address}: ABORTED: ")
    assert conflict.err.rstrip().endswith("(LABEL_VERSION_MISMATCH)")
    moved = await genai_prompts(
        capsys, registry, *promote, "--version", "2", "--expected", "1", "--reason", "ship it"
    )
    assert moved.out == "summarize: production moved v1 -> v2 by anonymous: ship it\n"

    rolled = await genai_prompts(
        capsys, registry, "rollback", "summarize", "--label", "production", "--reason", "too warm"
    )
    assert rolled.status == 0
    assert rolled.out == "summarize: production rolled back v2 -> v1 by anonymous: too warm\n"
    await genai_prompts(capsys, registry, *promote[:3], "staging", "--version", "2")

    history = await genai_prompts(capsys, registry, "history", "summarize")
    assert history.status == 0
    lines = history.out.splitlines()
    assert lines[0] == "versions of summarize, newest first:"
    assert lines[1].startswith("  v2  ")
    assert lines[1].endswith("  bob  warmer  [staging]")
    assert lines[2].startswith("  v1  ")
    assert lines[2].endswith("  ann  first  [production]")
    assert lines[3] == "moves of labels of summarize, newest first:"
    assert [line.split("Z  ", 1)[1] for line in lines[4:]] == [
        "staging created at v2 by anonymous",
        "production rolled back v2 -> v1 by anonymous: too warm",
        "production moved v1 -> v2 by anonymous: ship it",
        "production created at v1 by anonymous",
    ]
    only = await genai_prompts(capsys, registry, "history", "summarize", "--label", "staging")
    assert only.out.splitlines()[0] == "moves of label staging of summarize, newest first:"
    assert len(only.out.splitlines()) == 2

    listed = await genai_prompts(capsys, registry, "list")
    assert listed.out.splitlines()[1].split(maxsplit=4) == [
        "summarize",
        "v2",
        "production=v1",
        "staging=v2",
        "Summarizes a text in a chosen tone, optionally stressing some topics.",
    ]


async def test_errors_and_usage(
    capsys: pytest.CaptureFixture[str], registry: Registry, tmp_path: Path
) -> None:
    missing = await genai_prompts(capsys, registry, "pull", "nope", "--out", str(tmp_path))
    assert missing.status == 1
    assert missing.err.startswith(f"genai: {registry.address}: NOT_FOUND: ")
    assert "(PROMPT_NOT_FOUND)" in missing.err
    bad_name = await genai_prompts(capsys, registry, "history", "Bad Name")
    assert bad_name.status == 1
    assert "INVALID_ARGUMENT" in bad_name.err
    assert "\n  name: must be 1 to 64" in bad_name.err
    for usage in (
        ["pull", "--out", str(tmp_path)],
        ["pull", "x", "--all", "--out", str(tmp_path)],
        ["pull", "x", "--label", "a", "--version", "1", "--out", str(tmp_path)],
        ["promote", "x", "--label", "production"],
        ["push", str(tmp_path / "nowhere")],
    ):
        with pytest.raises(SystemExit) as raised:
            await genai_prompts(capsys, registry, *usage)
        assert raised.value.code == 2, usage
    empty = await genai_prompts(capsys, registry, "push", str(tmp_path))
    assert empty.status == 1
    assert "no prompt files" in empty.err
    unreachable = await prompts_cli.main_async(
        ["list", "--target", "127.0.0.1:1", "--timeout", "2"]
    )
    assert unreachable == 1
    assert "genai: 127.0.0.1:1: UNAVAILABLE: " in capsys.readouterr().err


async def test_seeding_sets_production_only_where_it_does_not_exist(
    registry: Registry, samples: Path
) -> None:
    async with grpc.aio.insecure_channel(registry.address) as channel:
        stub = registry.stub(channel)
        first = await prompts_cli.seed_prompts(channel, samples)
        assert first.failures == 0
        assert first.lines == (
            "chat: created prompt; created v1; production -> v1",
            "complete: created prompt; created v1; production -> v1",
            "extract-invoice: created prompt; created v1; production -> v1",
            "summarize: created prompt; created v1; production -> v1",
            "support-answer: created prompt; created v1; production -> v1",
        )
        # A new release changes a sample; someone deleted extract-invoice's production label;
        # someone else made support-answer's latest version: seeding leaves that prompt alone.
        _edit(samples / "summarize.yaml", "temperature: 0.3", "temperature: 0.4")
        _edit(samples / "summarize.yaml", "description: Summarizes", "description: Condenses")
        await stub.DeleteLabel(pb.DeleteLabelRequest(prompt="extract-invoice", label="production"))
        support = load_prompt_file(samples / "support-answer.yaml").version
        support.parameters.max_tokens = 100
        support.author = "ann"
        await stub.CreatePromptVersion(
            pb.CreatePromptVersionRequest(prompt="support-answer", version=support)
        )

        second = await prompts_cli.seed_prompts(channel, samples)
        assert second.failures == 0
        assert second.lines == (
            "chat: unchanged (v1); production stays at v1",
            "complete: unchanged (v1); production stays at v1",
            "extract-invoice: unchanged (v1); production -> v1",
            "summarize: created v2; production stays at v1",
            "    ~ parameters.temperature",
            "support-answer: left alone (v2 is by ann, not a seeded version)",
        )
        labels = {}
        for name in ("extract-invoice", "summarize", "support-answer"):
            found = await stub.GetPrompt(pb.GetPromptRequest(name=name))
            labels[name] = (found.prompt.latest_version, dict(found.prompt.labels))
        assert labels == {
            "extract-invoice": (1, {"production": 1}),
            "summarize": (2, {"production": 1}),
            "support-answer": (2, {"production": 1}),
        }
        summarize = await stub.GetPrompt(pb.GetPromptRequest(name="summarize"))
        assert summarize.prompt.description.startswith(
            "Summarizes"
        )  # fields of existing prompts stay


async def test_serve_seeds_the_prompts_folder_and_never_moves_an_existing_label(
    samples: Path, tmp_path: Path
) -> None:
    """`genai serve` as a process, on a registry where production was already set by seeding
    and a newer sample ships: the new version is pushed, production stays."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'served.db'}"
    platform = await start_platform(_settings(url))
    try:
        async with grpc.aio.insecure_channel(platform.address) as channel:
            await prompts_cli.seed_prompts(channel, samples)
    finally:
        await platform.stop(grace=0)
    _edit(samples / "summarize.yaml", "max_tokens: 400", "max_tokens: 300")

    def serve_and_list() -> tuple[str, str]:
        env = {"GENAI_PROMPT__DATABASE_URL": url}
        with genai_serve(tmp_path, "--service", "prompt", "--prompts", str(samples), env=env) as s:
            listed = subprocess.run(
                [
                    *(sys.executable, "-m", "services.cli", "prompts", "list"),
                    *("--target", s.address, "--api-key", s.api_key),
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            s.process.send_signal(signal.SIGTERM)
            output, _ = s.process.communicate(timeout=30)
        return output, listed.stdout

    served, listed = await asyncio.to_thread(serve_and_list)
    assert f"prompts from {samples}:" in served
    assert "  summarize: created v2; production stays at v1" in served
    assert "  support-answer: unchanged (v1); production stays at v1" in served
    rows = {line.split()[0]: line.split()[1:3] for line in listed.splitlines()[1:]}
    assert rows == {
        "chat": ["v1", "production=v1"],
        "complete": ["v1", "production=v1"],
        "extract-invoice": ["v1", "production=v1"],
        "summarize": ["v2", "production=v1"],
        "support-answer": ["v1", "production=v1"],
    }


def test_serve_refuses_a_prompts_folder_that_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = genai_cli.main(["serve", "--prompts", str(tmp_path / "nowhere"), "--port", "0"])
    assert status == 2
    assert "--prompts: " in capsys.readouterr().err
