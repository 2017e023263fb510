"""`genai eval` as CI runs it: create a dataset from a JSONL file, run an evaluation with a
progress bar and an HTML report, and `--gate` failing (exit 3) on a missed threshold of the
prompt's evaluation gate, against the whole platform (the model backend is the local
OpenAI-compatible test server, scripted)."""

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from genai.prompt.v1 import prompt_pb2, prompt_service_pb2, prompt_service_pb2_grpc

from services.common.clients import create_channel
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from services.prompt import cli as prompts_cli
from tests.support.openai_server import MODEL, Behaviour, OpenAICompatibleServer
from tests.support.serve import ROOT

KEY_ENV = "GENAI_TEST_PROVIDER_KEY"
PROMPT = """
name: capital
messages:
  - role: user
    content: "What is the capital of {{ country }}?"
variables:
  - {name: country, type: string, required: true}
"""
CATALOG = """
currency: USD
models:
  - name: hosted
    capabilities: [chat, streaming]
    max_context_tokens: 100000
    max_output_tokens: 1000
    price_per_million_tokens: {{input: 1, output: 2}}
    quality_tier: 5
    backends:
      - {{id: hosted-0, kind: openai_compatible, endpoint: "{url}", backend_model: {model}}}
"""
EXAMPLES = """{"inputs": {"country": "France"}, "reference": "Paris"}
{"inputs": {"country": "Italy"}, "reference": "Rome"}
{"inputs": {"country": "Spain"}, "reference": "Madrid"}
{"inputs": {"country": "Japan"}, "reference": "Tokyo"}
"""
SPEC = """
prompt: capital
dataset: capitals
scorers:
  - {name: answer, contains: {}}
"""


@pytest.fixture
async def platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    async with OpenAICompatibleServer(Behaviour(), api_key="sk-test") as server:
        (tmp_path / "catalog.yaml").write_text(CATALOG.format(url=server.base_url, model=MODEL))
        backend = {
            "id": "hosted-0",
            "kind": "openai_compatible",
            "endpoint": server.base_url,
            "provider_model": MODEL,
            "api_key_env": KEY_ENV,
        }
        settings = PlatformSettings.model_validate(
            {
                "auth": {"mode": "none"},
                "server": {"port": 0},
                "prompt": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"},
                "gateway": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"},
                "experiment": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"},
                "evaluation": {
                    "database_url": f"sqlite+aiosqlite:///{tmp_path / 'e.db'}",
                    "max_concurrency": 1,
                },
                "router": {"catalog_file": str(tmp_path / "catalog.yaml")},
                "inference": {
                    "triton": {"launch": False},
                    "models": [{"name": "hosted", "backends": [backend]}],
                },
            }
        )
        running = await start_platform(settings)
        try:
            yield running, server
        finally:
            await running.stop(grace=1)


async def test_genai_eval_runs_writes_html_and_gates(
    platform: tuple[Platform, OpenAICompatibleServer], tmp_path: Path
) -> None:
    running, server = platform
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "capital.yaml").write_text(PROMPT)
    (tmp_path / "capitals.jsonl").write_text(EXAMPLES)
    (tmp_path / "run.yaml").write_text(SPEC)
    async with create_channel(running.address) as channel:
        assert (await prompts_cli.seed_prompts(channel, tmp_path / "prompts")).failures == 0
        await prompt_service_pb2_grpc.PromptServiceStub(channel).UpdatePrompt(
            prompt_service_pb2.UpdatePromptRequest(
                prompt=prompt_pb2.Prompt(
                    name="capital",
                    evaluation_gate=prompt_pb2.EvaluationGate(
                        dataset="capitals",
                        thresholds=[prompt_pb2.GateThreshold(scorer="answer", min_mean=0.75)],
                    ),
                ),
                update_mask={"paths": ["evaluation_gate"]},
            )
        )

    def genai(*args: str) -> "subprocess.CompletedProcess[str]":
        return subprocess.run(
            [sys.executable, "-m", "services.cli", "eval", *args, "--target", running.address],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    created = await asyncio.to_thread(
        genai, "datasets", "create", "capitals", "--prompt", "capital",
        "--file", str(tmp_path / "capitals.jsonl"),
    )  # fmt: skip
    server.behaviour = Behaviour(replies=[["Paris"], ["Rome"], ["Madrid"], ["Kyoto"]])
    html = tmp_path / "report.html"
    passing = await asyncio.to_thread(
        genai, "run", str(tmp_path / "run.yaml"), "--html", str(html), "--gate"
    )
    server.behaviour = Behaviour(replies=[["Paris"], ["Milan"], ["Barcelona"], ["Osaka"]])
    failing = await asyncio.to_thread(
        genai, "run", str(tmp_path / "run.yaml"), "--html", str(tmp_path / "2.html"), "--gate"
    )

    assert created.returncode == 0, created.stderr
    assert "capitals: 4 examples" in created.stdout
    assert passing.returncode == 0, passing.stderr
    assert "answer" in passing.stdout
    assert "0.750" in passing.stdout
    assert "4/4" in passing.stderr  # the progress bar's last state
    assert "gate passed" in passing.stderr
    page = html.read_text()
    assert page.startswith("<!doctype html>")
    assert "data:image/png;base64," in page
    (kyoto,) = [row for row in page.split("<tr>") if "<pre>Kyoto</pre>" in row]
    assert "country: Japan" in kyoto
    assert "<pre>Tokyo</pre>" in kyoto  # inputs, reference
    assert "goes without" not in passing.stderr  # the examples and the run were read
    assert failing.returncode == 3, failing.stderr
    assert "GATE FAILED: answer mean 0.250 < 0.750" in failing.stderr
