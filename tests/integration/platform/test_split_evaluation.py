"""EvaluationService in a process of its own: configured with the gateway's, InferenceService's
and PromptService's addresses, it checks examples and runs evaluations over gRPC with the
deployment's shared internal token, on behalf of the caller's tenant. Misconfigured splits
refuse to start, naming the setting."""

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from genai.evaluation.v1 import evaluation_pb2, evaluation_service_pb2, evaluation_service_pb2_grpc

from services.common.clients import api_key_metadata, create_channel
from services.common.config import ConfigError
from services.platform.bootstrap import ensure_dev_credentials
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from services.prompt import cli as prompts_cli
from tests.integration.evaluation.test_evaluation_service import (
    CAPITALS,
    PROMPTS,
    _answer,
    _dataset,
    _events,
    _platform_settings,
    _run,
)
from tests.support.openai_server import Behaviour, OpenAICompatibleServer

pb = evaluation_pb2
TOKEN = "a-secret-every-process-of-the-deployment-shares"


def _split(settings: PlatformSettings, **changes: object) -> PlatformSettings:
    document = json.loads(settings.model_dump_json())
    document["auth"] = {"mode": "api_key", "internal_token": TOKEN, "api_key_cache_seconds": 0}
    document.update(changes)
    return PlatformSettings.model_validate(document)


@pytest.fixture
async def backend() -> AsyncIterator[OpenAICompatibleServer]:
    async with OpenAICompatibleServer(Behaviour()) as server:
        yield server


async def test_evaluation_runs_in_its_own_process_through_the_others(
    backend: OpenAICompatibleServer, tmp_path: Path
) -> None:
    base = _platform_settings(backend, tmp_path)
    rest = await start_platform(_split(base))
    evaluation: Platform | None = None
    try:
        assert rest.tenants is not None
        key = (await ensure_dev_credentials(rest.tenants, tmp_path / "dev-key")).secret
        folder = tmp_path / "prompts"
        folder.mkdir()
        for name, text in PROMPTS.items():
            (folder / name).write_text(text)
        async with create_channel(rest.address, metadata=api_key_metadata(key)) as channel:
            assert (await prompts_cli.seed_prompts(channel, folder)).failures == 0
        evaluation = await start_platform(
            _split(
                base,
                services=["evaluation"],
                evaluation={
                    "database_url": f"sqlite+aiosqlite:///{tmp_path / 'evaluation.db'}",
                    "max_concurrency": 1,
                    "targets": {
                        "gateway": rest.address,
                        "inference": rest.address,
                        "prompt": rest.address,
                    },
                },
            )
        )
        assert evaluation.hosted_services == ("genai.evaluation.v1.EvaluationService",)
        backend.behaviour = Behaviour(replies=[_answer(city) for _, city in CAPITALS[:3]])
        async with create_channel(evaluation.address, metadata=api_key_metadata(key)) as channel:
            stub = evaluation_service_pb2_grpc.EvaluationServiceStub(channel)
            examples = await _dataset(stub, "geo", CAPITALS[:3])  # checked against the prompt
            assert len(examples) == 3
            events = await _events(stub, _run("geo"))
            report = events[-1].report
            run = (
                await stub.GetEvaluationRun(
                    evaluation_service_pb2.GetEvaluationRunRequest(id=report.run_id)
                )
            ).run
        assert run.state == pb.RUN_STATE_SUCCEEDED
        assert {s.scorer: s.mean for s in report.summaries}["exact"] == 1.0
        chats = [r for r in backend.requests if r.path.endswith("/chat/completions")]
        assert len(chats) == 3  # the generations went through the other process
    finally:
        if evaluation is not None:
            await evaluation.stop(grace=1)
        await rest.stop(grace=1)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        (
            {"services": ["evaluation"]},
            "GENAI_EVALUATION__TARGETS__GATEWAY",
        ),
        (
            {
                "services": ["evaluation"],
                "auth": {"mode": "api_key"},
                "evaluation": {"targets": {"gateway": "127.0.0.1:9", "inference": "127.0.0.1:9"}},
            },
            "GENAI_AUTH__INTERNAL_TOKEN",
        ),
        (
            {"services": ["gateway"], "gateway": {"targets": {"prompt": "127.0.0.1:9"}}},
            "GENAI_AUTH__INTERNAL_TOKEN",
        ),
        (  # host names in a list cannot be balanced: the start fails, not the first call
            {
                "services": ["gateway"],
                "gateway": {"targets": {"prompt": "prompt-a:50051,prompt-b:50051"}},
            },
            "gateway.targets.prompt",
        ),
    ],
)
async def test_a_split_that_cannot_work_refuses_to_start_naming_the_setting(
    backend: OpenAICompatibleServer, tmp_path: Path, changes: dict[str, object], problem: str
) -> None:
    settings = _platform_settings(backend, tmp_path)
    document = json.loads(settings.model_dump_json())
    document["auth"] = {"mode": "api_key"}
    document.update(changes)
    with pytest.raises(ConfigError) as raised:
        await start_platform(PlatformSettings.model_validate(document))
    assert problem in str(raised.value)
