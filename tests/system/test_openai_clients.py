"""The gateway's OpenAI-compatible HTTP API as real clients use it: the official `openai` SDKs
for Python (sync and async) and Node, curl over SSE, and the README's examples as written,
against one real `genai serve` (Triton with the CPU repository: SmolLM2, Gemma 3, MiniLM; the
sample prompts seeded; API keys on). Also the errors the SDKs raise, and a stream the client
closes cancelling the Triton request."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from services.inference.adapters.tritonserver import pick_free_ports
from tests.support.serve import ROOT, ServeProcess, genai_serve

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("tritonserver_installed")]

SMOLLM2 = "smollm2-135m-instruct"
QUESTION = "What is the capital of France?"
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
NODE_BIN = ROOT / "node_modules" / ".bin"
NODE_CLIENT = ROOT / "tests" / "polyglot" / "node" / "openai_chat.ts"
README = ROOT / "README.md"
README_SECTION = "## OpenAI-compatible HTTP API"


class Served:
    """The module's `genai serve`, its OpenAI base URL and the port of its Triton's metrics."""

    def __init__(self, serve: ServeProcess, triton_metrics_port: int) -> None:
        self.serve = serve
        assert serve.http_port, "genai serve did not say its HTTP port"
        self.base_url = f"http://127.0.0.1:{serve.http_port}/v1"
        self.api_key = serve.api_key
        self.triton_metrics = f"http://127.0.0.1:{triton_metrics_port}/metrics"
        self.platform_metrics = f"http://127.0.0.1:{serve.metrics_port}/metrics"

    def sdk(self, api_key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.base_url,
            api_key=self.api_key if api_key is None else api_key,
            max_retries=0,
            timeout=120,
        )

    def async_sdk(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=120
        )

    def env(self) -> dict[str, str]:
        """The environment both SDKs (and the README's curl lines) read."""
        return {**os.environ, "OPENAI_BASE_URL": self.base_url, "OPENAI_API_KEY": self.api_key}


@pytest.fixture(scope="module")
def served_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    (triton_metrics_port,) = pick_free_ports(1)
    env = {
        "GENAI_INFERENCE__TRITON__GRPC_PORT": "0",
        "GENAI_INFERENCE__TRITON__HTTP_PORT": "0",
        "GENAI_INFERENCE__TRITON__METRICS_PORT": str(triton_metrics_port),
    }
    with genai_serve(tmp_path_factory.mktemp("openai-serve"), env=env, timeout=300) as serve:
        yield Served(serve, triton_metrics_port)
        # SIGTERM, so that genai serve stops the Triton it launched (in a session of its own).
        serve.process.send_signal(signal.SIGTERM)
        output, _ = serve.process.communicate(timeout=60)
        assert serve.process.returncode == 0, output


@pytest.fixture
def served(served_module: Served) -> Served:
    """The module's server, checked to be still running before each test that uses it."""
    process = served_module.serve.process
    if process.poll() is not None:
        output = process.stdout.read() if process.stdout else ""
        pytest.fail(f"the module's genai serve exited with {process.returncode}:\n{output}")
    return served_module


def _assert_usage(usage: Any) -> None:
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def _assert_served_headers(headers: Any, model: str = SMOLLM2) -> None:
    assert headers["x-genai-model"] == model
    assert headers["x-genai-backend"] == "triton-0"
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-genai-trace-id"])


# --------------------------------------------------------------------------- the Python SDK


def test_python_sdk_streams_a_chat_completion_with_usage_and_headers(served: Served) -> None:
    raw = served.sdk().chat.completions.with_raw_response.create(
        model=SMOLLM2,
        messages=ASK,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert {c.model for c in chunks} == {SMOLLM2}
    assert {c.id for c in chunks} == {"chatcmpl-" + raw.headers["x-request-id"]}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == []  # include_usage: the last chunk has only the usage
    _assert_usage(chunks[-1].usage)
    assert all(c.usage is None for c in chunks[:-1])
    _assert_served_headers(raw.headers)
    assert raw.headers["content-type"].startswith("text/event-stream")


def test_python_sdk_answers_a_whole_chat_completion(served: Served) -> None:
    raw = served.sdk().chat.completions.with_raw_response.create(
        model=SMOLLM2, messages=ASK, max_tokens=16, temperature=0
    )
    completion = raw.parse()

    assert completion.object == "chat.completion"
    assert completion.model == SMOLLM2
    assert completion.id == "chatcmpl-" + raw.headers["x-request-id"]
    choice = completion.choices[0]
    assert "Paris" in (choice.message.content or "")
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    _assert_usage(completion.usage)
    _assert_served_headers(raw.headers)
    genai = (completion.model_extra or {})["genai"]
    assert genai["model"] == SMOLLM2
    assert genai["backendId"] == "triton-0"
    assert genai["requestId"] == raw.headers["x-request-id"]


async def test_async_python_sdk_streams_and_answers_whole(served: Served) -> None:
    client = served.async_sdk()
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model=SMOLLM2,
            messages=ASK,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in raw.parse()]
        whole = await client.chat.completions.create(
            model=SMOLLM2, messages=ASK, max_tokens=16, temperature=0
        )
    finally:
        await client.close()

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert {c.model for c in chunks} == {SMOLLM2}
    _assert_usage(chunks[-1].usage)
    _assert_served_headers(raw.headers)
    assert "Paris" in (whole.choices[0].message.content or "")
    assert whole.model == SMOLLM2
    _assert_usage(whole.usage)


def test_a_registry_prompt_by_label_and_by_version_with_its_variables(served: Served) -> None:
    """`prompt:chat` (the seeded sample, label production) with `genai.variables`; then
    `prompt:chat@1` with the last user message bound to its variable `message`."""
    client = served.sdk()
    by_label = client.chat.completions.with_raw_response.create(
        model="prompt:chat",
        messages=[],
        max_tokens=16,
        extra_body={"genai": {"variables": {"message": QUESTION}}},
    )
    by_version = client.chat.completions.with_raw_response.create(
        model="prompt:chat@1",
        messages=ASK,
        max_tokens=16,
        extra_body={"genai": {"input_variable": "message"}},
    )

    for raw in (by_label, by_version):
        completion = raw.parse()
        assert "Paris" in (completion.choices[0].message.content or "")
        assert completion.model == SMOLLM2  # the catalog model that served, not `prompt:chat`
        assert raw.headers["x-genai-prompt"] == "chat@1"
        _assert_served_headers(raw.headers)
        genai = (completion.model_extra or {})["genai"]
        assert (genai["prompt"], genai["promptVersion"]) == ("chat", 1)
    assert (by_label.parse().model_extra or {})["genai"]["label"] == "production"


def test_text_completions_on_gemma_and_on_the_text_prompt(served: Served) -> None:
    client = served.sdk()
    direct = client.completions.with_raw_response.create(
        model="gemma3-270m", prompt="The capital of France is", max_tokens=6, temperature=0
    )
    prompted = client.completions.with_raw_response.create(
        model="prompt:complete", prompt="The capital of France is", max_tokens=6
    )

    completion = direct.parse()
    assert completion.object == "text_completion"
    assert completion.model == "gemma3-270m"
    assert completion.choices[0].text.strip()
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 6
    _assert_usage(completion.usage)
    _assert_served_headers(direct.headers, model="gemma3-270m")
    # The sample `complete` (a text prompt, binding the prompt to `text`) routes by latency
    # to either model that continues raw text.
    assert prompted.headers["x-genai-prompt"] == "complete@1"
    continued = prompted.parse()
    assert continued.model in ("gemma3-270m", SMOLLM2)
    assert prompted.headers["x-genai-model"] == continued.model
    assert continued.choices[0].text.strip()


def test_embeddings_have_minilm_dimensions_and_meaning(served: Served) -> None:
    texts = ["The capital of France is Paris.", "Paris is France's capital.", "I like bananas."]
    client = served.sdk()
    result = client.embeddings.create(model="all-minilm-l6-v2", input=texts)  # base64 on the wire
    as_floats = client.embeddings.create(
        model="all-minilm-l6-v2", input=texts[0], encoding_format="float"
    )

    assert result.model == "all-minilm-l6-v2"
    assert [e.index for e in result.data] == [0, 1, 2]
    vectors = [e.embedding for e in result.data]
    assert {len(v) for v in vectors} == {384}
    assert result.usage.prompt_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens

    def cosine(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2
    assert as_floats.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)


def test_models_lists_the_catalog(served: Served) -> None:
    client = served.sdk()
    listed = {m.id: m for m in client.models.list()}
    one = client.models.retrieve(SMOLLM2)

    assert set(listed) == {SMOLLM2, "gemma3-270m", "zero", "all-minilm-l6-v2"}
    assert one.id == SMOLLM2
    assert one.object == "model"
    assert (one.model_extra or {})["genai"]["max_context_tokens"] == 2048
    assert "embeddings" in (listed["all-minilm-l6-v2"].model_extra or {})["genai"]["capabilities"]


# --------------------------------------------------------------------------- errors


def test_errors_over_the_real_server_are_the_sdks_exceptions(served: Served) -> None:
    client = served.sdk()

    with pytest.raises(openai.AuthenticationError) as bad_key:
        served.sdk(api_key="gk_not_a_key").chat.completions.create(
            model=SMOLLM2, messages=ASK, max_tokens=4
        )
    with pytest.raises(openai.BadRequestError) as two_choices:
        client.chat.completions.create(model=SMOLLM2, messages=ASK, max_tokens=4, n=2)
    with pytest.raises(openai.BadRequestError) as tools:
        client.chat.completions.create(
            model=SMOLLM2,
            messages=ASK,
            max_tokens=4,
            tools=[{"type": "function", "function": {"name": "weather", "parameters": {}}}],
        )
    with pytest.raises(openai.BadRequestError) as unknown_parameter:
        client.chat.completions.create(
            model=SMOLLM2, messages=ASK, max_tokens=4, extra_body={"frobnicate": 1}
        )
    with pytest.raises(openai.NotFoundError) as unknown_model:
        client.chat.completions.create(model="no-such-model", messages=ASK, max_tokens=4)
    with pytest.raises(openai.NotFoundError) as unknown_prompt:
        client.chat.completions.create(model="prompt:no-such-prompt", messages=ASK, max_tokens=4)

    assert bad_key.value.status_code == 401
    assert bad_key.value.response.headers["www-authenticate"] == "Bearer"
    assert _error(bad_key.value)["code"] == "invalid_api_key"
    assert _error(bad_key.value)["type"] == "authentication_error"
    for refused, param in ((two_choices, "n"), (tools, "tools"), (unknown_parameter, "frobnicate")):
        assert refused.value.status_code == 400
        assert _error(refused.value)["param"] == param
        assert _error(refused.value)["type"] == "invalid_request_error"
    assert _error(unknown_parameter.value)["message"] == (
        "Unrecognized request argument supplied: frobnicate"
    )
    assert unknown_model.value.status_code == 404
    assert _error(unknown_model.value)["param"] == "model"
    assert _error(unknown_model.value)["code"] == "model_not_found"
    assert _error(unknown_prompt.value)["code"] == "prompt_not_found"


def _error(error: openai.APIStatusError) -> dict[str, Any]:
    """The OpenAI error object of a response (the SDK puts `error`'s content in `body`)."""
    body = error.body
    assert isinstance(body, dict), body
    assert error.response.json()["error"] == body
    return body


# --------------------------------------------------------------------------- cancellation


def _metric(url: str, name: str, labels: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf"^{name}\{{{labels}\}} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name}{{{labels}}} not in\n{text}"
    return float(match.group(1))


def test_closing_a_stream_cancels_the_triton_request(served: Served) -> None:
    """The client closes the stream after three chunks: the gateway sees the disconnect and
    cancels the generation, and within a second SmolLM2's Triton model has nothing in flight
    and has counted one cancelled request."""

    def triton(name: str) -> float:
        return _metric(served.triton_metrics, name, 'model="smollm2",version="1"')

    cancelled_before = triton("genai_llm_requests_cancelled_total")
    stream = served.sdk().chat.completions.create(
        model=SMOLLM2,
        messages=[{"role": "user", "content": "Count from 1 to 300, separated by commas."}],
        max_tokens=1000,
        temperature=0,
        stream=True,
    )
    for chunks, _ in enumerate(stream, start=1):
        if chunks == 3:
            break
    assert triton("genai_llm_requests_in_flight") == 1
    stream.close()
    closed = time.monotonic()
    while triton("genai_llm_requests_in_flight") != 0:
        assert time.monotonic() - closed < 1.0, "Triton still generates 1 s after the close"
        time.sleep(0.01)

    assert triton("genai_llm_requests_cancelled_total") == cancelled_before + 1
    in_flight = 'method="/openai/v1/chat/completions"'
    assert _metric(served.platform_metrics, "genai_gateway_in_flight", in_flight) == 0
    aborts = _metric(
        served.platform_metrics, "genai_http_stream_aborts_total", 'reason="client_disconnect"'
    )
    assert aborts >= 1


# --------------------------------------------------------------------------- Node and curl


def _node_tool(name: str) -> Path:
    tool = NODE_BIN / name
    if not tool.exists():
        pytest.fail(f"{tool} not found: run scripts/setup node")
    return tool


def test_the_node_sdk_streams_and_answers(served: Served) -> None:
    """tests/polyglot/node/openai_chat.ts (type-checked by tsc with the other Node clients)
    with the official `openai` npm package."""
    result = subprocess.run(
        [str(_node_tool("tsx")), str(NODE_CLIENT), served.base_url, served.api_key],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    streamed, whole, models, refused = [json.loads(line) for line in result.stdout.splitlines()]

    for answer in (streamed, whole):
        assert "Paris" in answer["text"]
        assert answer["model"] == SMOLLM2
        assert answer["finishReason"] in ("stop", "length")
        usage = answer["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
        assert answer["headers"]["x-genai-model"] == SMOLLM2
        assert answer["headers"]["x-genai-backend"] == "triton-0"
    assert streamed["stream"] is True
    assert streamed["chunks"] >= 3
    assert whole["stream"] is False
    assert SMOLLM2 in models["ids"]
    assert refused["ok"] is False
    assert refused["status"] == 404
    assert refused["error"]["code"] == "model_not_found"


def test_curl_streams_server_sent_events(served: Served) -> None:
    body = {
        "model": SMOLLM2,
        "messages": ASK,
        "max_tokens": 16,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    result = subprocess.run(
        [
            "curl",
            "-sN",
            "--fail-with-body",
            "-D",
            "-",
            f"{served.base_url}/chat/completions",
            "-H",
            f"Authorization: Bearer {served.api_key}",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(body),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    head, _, events = result.stdout.replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/1.1 200")
    assert "content-type: text/event-stream" in head.lower()
    assert f"x-genai-model: {SMOLLM2}" in head.lower()
    assert events.endswith("\n\n")
    blocks = events.strip("\n").split("\n\n")
    assert all(b.startswith("data: ") and "\n" not in b for b in blocks), events
    assert blocks[-1] == "data: [DONE]"
    assert events.count("[DONE]") == 1
    chunks = [json.loads(b.removeprefix("data: ")) for b in blocks[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert "Paris" in text
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] > 0


# --------------------------------------------------------------------------- the README


def readme_blocks() -> list[tuple[str, str]]:
    """The fenced code blocks of the README's OpenAI-compatible HTTP API section: (language,
    code)."""
    text = README.read_text()
    start = text.index(f"\n{README_SECTION}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    return re.findall(r"^```(\w+)\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)


SETUP_BLOCK = re.compile(r"^export OPENAI_BASE_URL=http://127\.0\.0\.1:8080/v1\b", re.MULTILINE)


def test_the_readme_examples_run_as_written(served: Served) -> None:
    """Every python, js and bash block of the README's section, verbatim, against this server:
    the SDKs and curl read OPENAI_BASE_URL and OPENAI_API_KEY, which the section's first block
    exports for `scripts/serve` (port 8080, the development key) and this test sets to the
    module's server instead."""
    blocks = readme_blocks()
    setup = [code for language, code in blocks if SETUP_BLOCK.search(code)]
    assert len(setup) == 1, "the section exports OPENAI_BASE_URL for scripts/serve once"
    assert "export OPENAI_API_KEY=$(cat ~/.local/share/genai-platform/dev-api-key)" in setup[0]
    runs = {
        "python": [sys.executable, "-"],
        # ESM from stdin resolves `openai` from the working directory: the checkout.
        "js": ["node", "--input-type=module", "-"],
        "bash": ["bash", "-euo", "pipefail", "-s"],
    }
    ran: dict[str, str] = {}
    for language, code in blocks:
        if code is setup[0] or language not in runs:
            continue
        result = subprocess.run(
            runs[language],
            input=code,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
            env=served.env(),
        )
        assert result.returncode == 0, f"{language} block:\n{code}\n{result.stdout}{result.stderr}"
        ran[language] = ran.get(language, "") + result.stdout
    assert set(ran) == {"python", "js", "bash"}, f"ran only {sorted(ran)}"
    assert "Paris" in ran["python"]
    assert "Paris" in ran["js"]
    assert "data: [DONE]" in ran["bash"]
