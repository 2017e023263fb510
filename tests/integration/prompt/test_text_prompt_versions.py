"""Text (completion) prompt versions in PromptService over real gRPC, on real SQLite and
PostgreSQL: stored and read back with their `text_template` (content documents: no migration),
rendered into `RenderPromptResponse.text` by the server and by the client library, diffed, and
refused with precise field violations when they set messages too or ask for a repair. `genai
prompts push` and `pull` carry the file format's `text` key."""

from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from genai.common.v1 import chat_pb2
from genai.prompt.v1 import prompt_pb2, prompt_service_pb2, prompt_service_pb2_grpc
from google.protobuf import json_format, struct_pb2

from services.common import reasons
from services.common.auth import AnonymousAuthenticator
from services.common.status import ParsedError, error_details
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from services.prompt import cli as prompts_cli
from services.prompt.client import PromptClient
from services.prompt.files import load_prompt_file
from tests.support.databases import BACKENDS, Database, database

if TYPE_CHECKING:
    Stub = prompt_service_pb2_grpc.PromptServiceAsyncStub
else:
    Stub = prompt_service_pb2_grpc.PromptServiceStub

pb = prompt_service_pb2
TEMPLATE = "The capital of {{ country }} is"


def _settings(db: Database) -> PlatformSettings:
    return PlatformSettings.model_validate(
        {
            "auth": {"mode": "none"},
            "services": ["prompt"],
            "server": {"port": 0, "grace_seconds": 0},
            "prompt": {"database_url": db.url, "database_schema": db.schema or ""},
        }
    )


@pytest.fixture(params=BACKENDS)
async def platform(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Platform]:
    async with database(request.param, tmp_path) as db:
        running = await start_platform(
            _settings(db), authenticator=AnonymousAuthenticator("acme", "ann")
        )
        try:
            yield running
        finally:
            await running.stop(grace=0)


@pytest.fixture
async def channel(platform: Platform) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(platform.address) as opened:
        yield opened


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> Stub:
    return prompt_service_pb2_grpc.PromptServiceStub(channel)


def _text_version(template: str = TEMPLATE, **fields: Any) -> prompt_pb2.PromptVersion:
    version = prompt_pb2.PromptVersion(text_template=template, author="ann", **fields)
    version.variables.add(name="country", type=prompt_pb2.VARIABLE_TYPE_STRING, required=True)
    return version


async def _create(stub: Stub, version: prompt_pb2.PromptVersion) -> prompt_pb2.PromptVersion:
    response = await stub.CreatePromptVersion(
        pb.CreatePromptVersionRequest(prompt="capital", version=version)
    )
    return response.version


async def _fails(call: Awaitable[Any]) -> ParsedError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return error_details(raised.value)


def _variables(**values: Any) -> struct_pb2.Struct:
    variables = struct_pb2.Struct()
    variables.update(values)
    return variables


@pytest.fixture
async def capital(stub: Stub) -> prompt_pb2.PromptVersion:
    await stub.CreatePrompt(pb.CreatePromptRequest(prompt=prompt_pb2.Prompt(name="capital")))
    created = await _create(stub, _text_version())
    await stub.SetLabel(pb.SetLabelRequest(prompt="capital", label="production", version=1))
    return created


async def test_a_text_version_is_stored_and_read_back_with_its_template(
    stub: Stub, capital: prompt_pb2.PromptVersion
) -> None:
    assert (capital.version, capital.text_template) == (1, TEMPLATE)
    assert not capital.messages
    assert len(capital.content_hash) == 64

    read = (await stub.GetPromptVersion(pb.GetPromptVersionRequest(prompt="capital"))).version
    assert read == capital
    again = await stub.CreatePromptVersion(
        pb.CreatePromptVersionRequest(prompt="capital", version=_text_version())
    )
    assert (again.version.version, again.created) == (1, False)  # same content, same hash
    changed = await _create(stub, _text_version("The capital city of {{ country }} is"))
    assert changed.version == 2
    assert changed.content_hash != capital.content_hash


async def test_render_prompt_returns_the_text_and_no_messages(
    stub: Stub, capital: prompt_pb2.PromptVersion
) -> None:
    rendered = await stub.RenderPrompt(
        pb.RenderPromptRequest(prompt="capital", variables=_variables(country="France"))
    )

    assert (rendered.version, rendered.text) == (1, "The capital of France is")
    assert list(rendered.messages) == []
    assert rendered.content_hash == capital.content_hash
    missing = await _fails(stub.RenderPrompt(pb.RenderPromptRequest(prompt="capital")))
    assert (missing.code, missing.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.VARIABLE_INVALID,
    )
    assert [v.field for v in missing.field_violations] == ["variables.country"]


async def test_the_client_library_renders_text_locally(
    channel: grpc.aio.Channel, capital: prompt_pb2.PromptVersion
) -> None:
    async with PromptClient(channel, prompts=["capital"]) as client:
        rendered = await client.render("capital", {"country": "Japan"})

    assert rendered.is_text
    assert (rendered.text, rendered.messages) == ("The capital of Japan is", ())
    assert rendered.to_proto().text == "The capital of Japan is"
    assert list(rendered.to_proto().messages) == []


async def test_a_diff_from_chat_to_text_shows_both(
    stub: Stub, capital: prompt_pb2.PromptVersion
) -> None:
    chat = prompt_pb2.PromptVersion()
    chat.variables.add(name="country", type=prompt_pb2.VARIABLE_TYPE_STRING, required=True)
    chat.messages.add(role=chat_pb2.CHAT_ROLE_USER, content="Capital of {{ country }}?")
    await _create(stub, chat)

    diff = await stub.DiffPromptVersions(
        pb.DiffPromptVersionsRequest(prompt="capital", from_version=1, to_version=2)
    )

    assert [(c.path, c.kind) for c in diff.changes] == [
        ("messages[0].content", prompt_pb2.CHANGE_KIND_ADDED),
        ("messages[0].role", prompt_pb2.CHANGE_KIND_ADDED),
        ("text_template", prompt_pb2.CHANGE_KIND_REMOVED),
    ]
    assert diff.changes[2].old_value.string_value == TEMPLATE
    assert f'-  "text_template": "{TEMPLATE}"' in diff.unified_diff


async def test_invalid_text_versions_get_no_number(stub: Stub) -> None:
    await stub.CreatePrompt(pb.CreatePromptRequest(prompt=prompt_pb2.Prompt(name="capital")))
    both = _text_version()
    both.messages.add(role=chat_pb2.CHAT_ROLE_USER, content="{{ country }}")
    undeclared = _text_version("{{ country }} and {{ city }}")
    repaired = _text_version(processing=prompt_pb2.ResponseProcessing(repair_invalid_json=True))

    errors = [await _fails(_create(stub, version)) for version in (both, undeclared, repaired)]

    assert [(e.code, e.reason) for e in errors] == [
        (grpc.StatusCode.INVALID_ARGUMENT, reasons.TEMPLATE_INVALID),
        (grpc.StatusCode.INVALID_ARGUMENT, reasons.TEMPLATE_INVALID),
        (grpc.StatusCode.INVALID_ARGUMENT, reasons.FIELD_VIOLATION),
    ]
    assert [[v.field for v in e.field_violations] for e in errors] == [
        ["version.text_template"],
        ["version.text_template"],
        ["version.processing.repair_invalid_json"],
    ]
    assert "variable 'city' is not declared" in errors[1].field_violations[0].description
    found = await stub.GetPrompt(pb.GetPromptRequest(name="capital"))
    assert found.prompt.latest_version == 0


async def test_push_and_pull_carry_the_text_key(
    platform: Platform, stub: Stub, tmp_path: Path
) -> None:
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "capital.yaml").write_text(
        "description: A text prompt.\n"
        'text: "The capital of {{ country }} is"\n'
        "variables: [{name: country, type: string, required: true}]\n"
    )
    target = ["--target", platform.address]

    assert await prompts_cli.main_async(["push", str(folder), *target]) == 0
    stored = (await stub.GetPromptVersion(pb.GetPromptVersionRequest(prompt="capital"))).version
    assert stored.text_template == TEMPLATE

    out = tmp_path / "pulled"
    assert await prompts_cli.main_async(["pull", "capital", "--out", str(out), *target]) == 0
    pulled = (out / "capital.yaml").read_text()
    assert "\ntext: The capital of {{ country }} is\n" in pulled
    assert load_prompt_file(out / "capital.yaml").content_hash == stored.content_hash
    assert json_format.MessageToDict(stored)["textTemplate"] == TEMPLATE
