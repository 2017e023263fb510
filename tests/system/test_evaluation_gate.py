"""Evaluation end to end on the real SmolLM2 through Triton: a dataset of the sample `chat`
prompt, runs through the gateway with streamed progress, reports, and the gate of a protected
label refusing a promotion without a passing report, refusing one with a failing report, and
allowing one with a passing report."""

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
import yaml
from genai.evaluation.v1 import evaluation_pb2, evaluation_service_pb2, evaluation_service_pb2_grpc
from genai.prompt.v1 import prompt_pb2, prompt_service_pb2, prompt_service_pb2_grpc
from google.protobuf import json_format

from services.common import reasons
from services.common.status import error_details
from services.inference.adapters.tritonserver import TritonServer
from services.platform.runner import REPOSITORY_ROOT, Platform, start_platform
from services.platform.settings import PlatformSettings
from services.prompt import cli as prompts_cli
from tests.support.smollm2 import smollm2_dir
from tests.support.triton import CPU_REPOSITORY, triton_server

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("tritonserver_installed")]

if TYPE_CHECKING:
    Evaluation = evaluation_service_pb2_grpc.EvaluationServiceAsyncStub
    Prompts = prompt_service_pb2_grpc.PromptServiceAsyncStub
else:
    Evaluation = evaluation_service_pb2_grpc.EvaluationServiceStub
    Prompts = prompt_service_pb2_grpc.PromptServiceStub

esb = evaluation_service_pb2
psb = prompt_service_pb2
EVALS = REPOSITORY_ROOT / "prompts" / "evals"
SMOLLM2 = "smollm2-135m-instruct"
CATALOG = """
currency: USD
models:
  - name: smollm2-135m-instruct
    capabilities: [chat, streaming]
    max_context_tokens: 2048
    max_output_tokens: 1024
    price_per_million_tokens: {{input: 0.02, output: 0.04}}
    quality_tier: 2
    backends:
      - {{id: triton-0, kind: triton, endpoint: "{endpoint}", backend_model: ensemble}}
  - name: all-minilm-l6-v2
    capabilities: [embeddings]
    max_context_tokens: 256
    max_output_tokens: 1
    quality_tier: 1
    pinned_only: true
    backends:
      - {{id: triton-0, kind: triton, endpoint: "{endpoint}", backend_model: minilm}}
"""


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    smollm2_dir()
    root = tmp_path_factory.mktemp("repository")
    for model in ("ensemble", "preprocessing", "tensorrt_llm", "postprocessing", "minilm"):
        shutil.copytree(CPU_REPOSITORY / model, root / model, symlinks=True)
    with triton_server(tmp_path_factory.mktemp("triton-log"), None, repository=root) as server:
        yield server


@pytest.fixture
async def platform(triton: TritonServer, tmp_path: Path) -> AsyncIterator[Platform]:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG.format(endpoint=triton.grpc_address))

    def served(name: str, triton_model: str, **fields: Any) -> dict[str, Any]:
        backend = {"id": "triton-0", "endpoint": triton.grpc_address, "triton_model": triton_model}
        return {"name": name, "backends": [backend], **fields}

    settings = PlatformSettings.model_validate(
        {
            "auth": {"mode": "none"},
            "server": {"port": 0, "grace_seconds": 5},
            "prompt": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'prompts.db'}"},
            "gateway": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"},
            "experiment": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'exp.db'}"},
            "evaluation": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'eval.db'}"},
            "router": {"catalog_file": str(catalog)},
            "inference": {
                "triton": {"launch": False},
                "models": [
                    served(
                        SMOLLM2,
                        "ensemble",
                        chat_template="prepared:smollm2",
                        max_context_tokens=2048,
                        max_output_tokens=1024,
                    ),
                    served("all-minilm-l6-v2", "minilm", task="embedding", max_context_tokens=256),
                ],
            },
        }
    )
    running = await start_platform(settings)
    yield running
    await running.stop(grace=1)


def _run_spec(version: int) -> evaluation_pb2.EvaluationRun:
    spec = yaml.safe_load((EVALS / "chat-basics.run.yaml").read_text())
    run = json_format.ParseDict(spec, evaluation_pb2.EvaluationRun())
    run.prompt_version = version
    run.scorers.add(name="similarity", embedding_similarity={})
    return run


async def _evaluate(stub: Evaluation, version: int) -> tuple[list[str], Any]:
    events: list[str] = []
    report = None
    async for event in stub.StartEvaluationRun(
        esb.StartEvaluationRunRequest(run=_run_spec(version))
    ):
        events.append(event.WhichOneof("event"))
        if event.HasField("report"):
            report = event.report
    assert report is not None, events
    return events, report


async def _promote(prompts: Prompts, version: int) -> Any:
    try:
        await prompts.SetLabel(
            psb.SetLabelRequest(prompt="chat", label="production", version=version)
        )
    except grpc.aio.AioRpcError as error:
        return error_details(error)
    return None


async def test_an_evaluation_gates_the_promotion_of_a_protected_label(platform: Platform) -> None:
    async with grpc.aio.insecure_channel(platform.address) as channel:
        prompts: Prompts = prompt_service_pb2_grpc.PromptServiceStub(channel)
        evaluation: Evaluation = evaluation_service_pb2_grpc.EvaluationServiceStub(channel)
        report_lines = await prompts_cli.seed_prompts(channel, REPOSITORY_ROOT / "prompts")
        assert report_lines.failures == 0, report_lines.lines
        await evaluation.CreateDataset(
            esb.CreateDatasetRequest(
                dataset=evaluation_pb2.Dataset(name="chat-basics", prompt="chat")
            )
        )
        examples = [
            json_format.Parse(line, evaluation_pb2.Example())
            for line in (EVALS / "chat-basics.jsonl").read_text().splitlines()
            if line.strip()
        ]
        added = await evaluation.AddExamples(
            esb.AddExamplesRequest(dataset="chat-basics", examples=examples)
        )
        assert len(added.examples) == 8
        gate = prompt_pb2.EvaluationGate(
            dataset="chat-basics",
            thresholds=[prompt_pb2.GateThreshold(scorer="answer", min_mean=0.5)],
        )
        await prompts.UpdatePrompt(
            psb.UpdatePromptRequest(
                prompt=prompt_pb2.Prompt(
                    name="chat", protected_labels=["production"], evaluation_gate=gate
                ),
                update_mask={"paths": ["protected_labels", "evaluation_gate"]},
            )
        )
        v1 = (
            await prompts.GetPromptVersion(psb.GetPromptVersionRequest(prompt="chat", version=1))
        ).version
        good = prompt_pb2.PromptVersion()
        good.CopyFrom(v1)
        good.parameters.temperature = 0  # greedy: the same answers every run
        bad = prompt_pb2.PromptVersion()
        bad.CopyFrom(good)
        bad.parameters.max_tokens = 1  # cut after one token: no answer survives
        v2 = (
            await prompts.CreatePromptVersion(
                psb.CreatePromptVersionRequest(prompt="chat", version=good)
            )
        ).version.version
        v3 = (
            await prompts.CreatePromptVersion(
                psb.CreatePromptVersionRequest(prompt="chat", version=bad)
            )
        ).version.version

        unevaluated = await _promote(prompts, v2)
        events, good_report = await _evaluate(evaluation, v2)
        _, bad_report = await _evaluate(evaluation, v3)
        failing = await _promote(prompts, v3)
        passing = await _promote(prompts, v2)
        label = (await prompts.GetPrompt(psb.GetPromptRequest(name="chat"))).prompt.labels

    assert unevaluated is not None
    assert (unevaluated.code, unevaluated.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        reasons.EVALUATION_GATE_FAILED,
    )
    assert "no finished evaluation run on dataset 'chat-basics'" in unevaluated.message
    assert events[0] == "run"
    assert events[-1] == "report"
    assert events.count("result") == 8
    means = {s.scorer: s.mean for s in good_report.summaries}
    assert means["answer"] >= 0.5, means
    assert 0 < means["similarity"] <= 1
    assert good_report.usage.output_tokens > 0
    assert {s.scorer: s.mean for s in bad_report.summaries}["answer"] < 0.5
    assert failing is not None
    assert failing.reason == reasons.EVALUATION_GATE_FAILED
    assert failing.metadata["report_id"] == bad_report.id
    assert "answer mean" in failing.message
    assert passing is None
    assert label["production"] == v2
